"""``pytrain sweep``: hyper-parameter sweeps whose trials are tasks on the queue (:mod:`pytrain.sweeps`).

Every check runs before anything is created: the parameter specs against the task columns'
bounds and the options' types, the trial budget, the grid's size (docs/user-guide/sweeps.md).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import typer

from pytrain.errors import ConfigurationError
from pytrain.sweeps.vocabulary import METRICS, PRUNERS, PUBLISH_MODES, SAMPLERS
from pytrain.task_columns import MODEL_NAME_PATTERN

sweep_app = typer.Typer(help="Hyper-parameter sweeps: trials are ordinary tasks (docs/user-guide/sweeps.md).", no_args_is_help=True)


def _store():
    from pytrain.cli.tasks import _queue, _settings
    from pytrain.sweeps.store import SweepStore

    settings = _settings()
    return SweepStore(_queue(settings).engine, settings)


def _choice(value: str, allowed, option: str) -> str:
    if value not in allowed:
        raise ConfigurationError(f"{option} {value!r} is not known", hint=f"{option} one of {', '.join(allowed)}")
    return value


def _base_task(base_task: Optional[int], task_json: Optional[Path]) -> dict[str, Any]:
    """The columns every trial shares: a task row's user-settable columns, or a JSON file's (checked
    like ``pytrain submit``'s).

    Raises:
        ConfigurationError: neither or both given, a file that is not a JSON object of task columns.
    """
    from pytrain.db import TaskRequest
    from pytrain.task_columns import TASK_COLUMNS

    if (base_task is None) == (task_json is None):
        raise ConfigurationError("give the task every trial starts from: --base-task ID or --task-json FILE (one of them)",
                                 hint="e.g. --base-task 12, or --task-json kitchen.json")
    if base_task is not None:
        from pytrain.cli.tasks import _queue

        row = _queue().get(base_task)
        base = {c.name: row[c.name] for c in TASK_COLUMNS}
        options = dict(base["options"])
        if "sweep" in options:  # the base task is another sweep's trial: its sweep, number and experiment are not ours
            if options.get("experiment") == options["sweep"]:
                options.pop("experiment")
            options.pop("sweep")
            options.pop("trial", None)
        return {**base, "options": options}
    try:
        data = json.loads(Path(task_json).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"--task-json {task_json}: cannot read a JSON object ({exc})",
                                 hint='e.g. {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}') from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"--task-json {task_json} holds a {type(data).__name__}, not a JSON object of task columns")
    return TaskRequest.parse(data).columns()


def _budget(trials: Optional[int], parallel: int, sampler: str, params) -> int:
    """The number of trials: ``--trials``, or the grid's size with ``--sampler grid``.

    Raises:
        ConfigurationError: ``--trials`` below 1 or missing, ``--parallel`` below 1, more trials
            than the grid has combinations.
    """
    if parallel < 1:
        raise ConfigurationError(f"--parallel {parallel} must be at least 1", hint="e.g. --parallel 2")
    grid = math.prod(len(p.grid_values()) for p in params) if sampler == "grid" else None
    if trials is None:
        if grid is None:
            raise ConfigurationError("--trials N is missing", hint="e.g. --trials 12 (with --sampler grid it defaults to the grid's size)")
        return grid
    if trials < 1:
        raise ConfigurationError(f"--trials {trials} must be at least 1", hint="e.g. --trials 12")
    if grid is not None and trials > grid:
        raise ConfigurationError(f"--trials {trials} is more than the grid's {grid} combinations", hint=f"--trials {grid} or fewer")
    return trials


def create(
    name: str = typer.Argument(..., help="Sweep name ([A-Za-z0-9_-]{1,64}; also its Optuna study's and MLflow experiment's)."),
    base_task: Optional[int] = typer.Option(None, "--base-task", help="Task id whose columns every trial starts from."),
    task_json: Optional[Path] = typer.Option(None, "--task-json", help="JSON object of task columns every trial starts from."),
    param: list[str] = typer.Option([], "--param", "-p", metavar="SPEC",
                                    help="NAME=KIND:ARGS, e.g. learning_rate=loguniform:1e-4:3e-3, architecture=choice:tiny,r3d_18, "
                                         "options.label_smoothing=uniform:0:0.2, num_frames=int:8:32:8; repeat for several."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials in all (default with --sampler grid: every combination)."),
    parallel: int = typer.Option(1, "--parallel", help="Trials queued or running at once (new ones are created as others end)."),
    sampler: str = typer.Option("tpe", "--sampler", help=f"One of {', '.join(SAMPLERS)}."),
    pruner: str = typer.Option("asha", "--pruner", help=f"One of {', '.join(PRUNERS)}."),
    metric: str = typer.Option("val_accuracy", "--metric", help=f"One of {', '.join(METRICS)} (what the pruner and the best trial go by)."),
    publish: str = typer.Option("best", "--publish", help=f"One of {', '.join(PUBLISH_MODES)}: the best trial at the end, every trial, or none."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampler (reproducible draws)."),
) -> None:
    """Create a sweep and queue its first trials (every value is checked before anything is created)."""
    from pytrain.cli.tasks import _queue, _settings
    from pytrain.db import TASK_DEFAULTS, SourceRegistry
    from pytrain.sweeps.params import check_params, parse_param
    from pytrain.task_check import check_submission

    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        raise ConfigurationError(f"sweep name {name!r} does not match {MODEL_NAME_PATTERN}", hint="e.g. kitchen-lr")
    for value, allowed, option in ((sampler, SAMPLERS, "--sampler"), (pruner, PRUNERS, "--pruner"),
                                   (metric, METRICS, "--metric"), (publish, PUBLISH_MODES, "--publish")):
        _choice(value, allowed, option)
    specs = [parse_param(text) for text in param]
    budget = _budget(trials, parallel, sampler, specs)
    base = _base_task(base_task, task_json)
    registered = SourceRegistry(_queue().engine).names()
    check_submission(base, sources_dir=_settings().sources_dir, registered=registered)  # as `pytrain submit` checks a task
    check_params({**TASK_DEFAULTS, **base}, specs, registered=registered)
    row = _store().create({"name": name, "base": base, "params": specs, "trials": budget, "parallel": parallel, "sampler": sampler,
                           "pruner": pruner, "metric": metric, "publish": publish, "seed": seed})
    typer.echo(f"sweep {row['name']} created: {budget} trial(s), {parallel} at a time")


def show(name: str = typer.Argument(..., help="Sweep name."),
         as_json: bool = typer.Option(False, "--json", help="Print the sweep as JSON.")) -> None:
    """The sweep's trials (number, task, state, params, best metric and its epoch, epochs, wall time),
    the best marked, and the parameter importances once enough trials completed."""
    summary = _store().summary(name)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from rich.table import Table

    from pytrain.cli.output import stdout_console
    from pytrain.sweeps.params import format_value

    table = Table(title=f"sweep {summary['name']} ({summary['status']}; {summary['metric']}, {summary['direction']})")
    for column in ("trial", "task", "status", "params", summary["metric"], "epoch", "epochs", "wall s", "version"):
        table.add_column(column)
    for t in summary["trials"]:
        metric = "" if t["best_metric"] is None else f"{t['best_metric']:.4g}"
        table.add_row(f"{t['number']}{' *' if t['best'] else ''}", str(t["task_id"]), t["status"],
                      ", ".join(f"{k}={format_value(v)}" for k, v in t["params"].items()), metric, _text(t["best_epoch"]),
                      _text(t["epochs_run"]), _text(t["wall_seconds"]), _text(t["version"]))
    console = stdout_console()
    console.print(table)
    if summary["importances"]:
        console.print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def list_sweeps() -> None:
    """Every sweep, newest first: status, trials created of the budget, live trials, the best trial's
    metric, published version."""
    from rich.table import Table

    from pytrain.cli.output import stdout_console

    table = Table(title="sweeps")
    for column in ("name", "status", "trials", "live", "sampler", "pruner", "metric", "best", "published"):
        table.add_column(column)
    for s in _store().list():
        best = "" if s["best_trial"] is None else f"{s['best_value']:.4g} (trial {s['best_trial']})"
        published = "" if s["published_version"] is None else f"task {s['published_task_id']} v{s['published_version']}"
        table.add_row(s["name"], s["status"], f"{s['created']}/{s['trials']}", str(s["live"]), s["sampler"], s["pruner"],
                      s["metric"], best, published)
    stdout_console().print(table)


def cancel(name: str = typer.Argument(..., help="Sweep name.")) -> None:
    """Create no more trials and cancel the queued and running ones (running ones stop within seconds)."""
    cancelled = _store().cancel(name)
    typer.echo(f"sweep {name} cancelled ({len(cancelled)} trial task(s) cancelled)")


def publish(name: str = typer.Argument(..., help="Sweep name."),
            trial: Optional[int] = typer.Option(None, "--trial", help="Trial number (default: the best completed trial).")) -> None:
    """Publish one trial's model as the next version of its Triton model."""
    number, version = _store().publish(name, trial)
    typer.echo(f"sweep {name}: trial {number} published as version {version}")


def clean(name: str = typer.Argument(..., help="Sweep name.")) -> None:
    """Remove the models, checkpoints and clip caches of the sweep's ended, unpublished trials."""
    removed = _store().clean(name)
    typer.echo(f"sweep {name}: {len(removed)} file(s) or folder(s) removed")


def register(app: typer.Typer) -> None:
    """Add ``pytrain sweep ...`` to ``app``."""
    sweep_app.command("create")(create)
    sweep_app.command("show")(show)
    sweep_app.command("list")(list_sweeps)
    sweep_app.command("cancel")(cancel)
    sweep_app.command("publish")(publish)
    sweep_app.command("clean")(clean)
    app.add_typer(sweep_app, name="sweep")
