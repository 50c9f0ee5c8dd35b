"""``pytrain compare``: runs side by side (:mod:`pytrain.compare` holds the logic).

Examples::

    pytrain compare 12 14 15                      # these tasks
    pytrain compare --model kitchen --last 4      # kitchen's newest 4 tasks
    pytrain compare --last 3 --json               # the newest 3 tasks, as JSON
    pytrain compare 12 14 --plot curves.png       # and their validation curves, overlaid
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from pytrain.compare import DEFAULT_LAST, Comparison, RunSummary, format_value
from pytrain.errors import ConfigurationError


def register(app: typer.Typer) -> None:
    """Add ``compare`` to ``app``."""
    app.command("compare")(compare)


def compare(
    task_ids: Optional[List[int]] = typer.Argument(None, metavar="[IDS]...", help="Task ids to compare (default: the newest tasks)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Only tasks of this model (the newest --last of them)."),
    last: Optional[int] = typer.Option(None, "--last", "-n", min=1, help=f"The newest N tasks (default {DEFAULT_LAST})."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as one JSON object instead of the table."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write their validation accuracy and loss curves to this PNG."),
) -> None:
    """Compare runs: the parameters that differ between them (task columns and options, defaults
    resolved), best validation accuracy (epoch), test accuracy, epochs run, wall time and published
    version. From the task folders' progress and metrics (the rows' when a folder is gone)."""
    from pytrain.cli.tasks import _queue, _settings
    from pytrain.compare import load_runs

    settings = _settings()
    comparison = load_runs(_queue(settings), settings.model_tasks_dir, task_ids or [], model=model, last=last)
    if plot is not None:
        _write_plot(comparison, plot)
    if as_json:
        typer.echo(json.dumps(comparison.to_dict(), indent=2, default=str))
        return
    from pytrain.cli.output import stdout_console

    stdout_console().print(_table(comparison))
    if plot is not None:
        typer.echo(f"curves: {plot}")


def _write_plot(comparison: Comparison, path: Path) -> None:
    try:
        from pytrain.training.plots import plot_comparison
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"--plot needs matplotlib ({exc.name} is not installed)", hint="pip install 'pytrain[train]'") from exc
    if not path.parent.is_dir():
        raise ConfigurationError(f"--plot {path}: folder {path.parent} does not exist", hint="create it, or name a file in an existing folder")
    plot_comparison(comparison.curves(), path)


def _table(comparison: Comparison):  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table("task", "model", "status", *comparison.differing, "best val acc (epoch)", "test acc", "epochs", "wall time", "version")
    for run in comparison.runs:
        table.add_row(str(run.task_id), run.model_name, run.status, *(format_value(run.params.get(name)) for name in comparison.differing),
                      *_figures(run))
    return table


def _figures(run: RunSummary) -> list[str]:
    """The table's cells after the parameters; blank where the run has no figure."""
    best = "" if run.best_val_accuracy is None else f"{run.best_val_accuracy:.3f} ({run.best_epoch})"
    test = "" if run.test_accuracy is None else f"{run.test_accuracy:.3f}"
    wall = "" if run.wall_time_s is None else f"{run.wall_time_s:.1f} s"
    return [best, test, format_value(run.epochs_run), wall, format_value(run.version)]
