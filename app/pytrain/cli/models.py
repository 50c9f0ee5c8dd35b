"""``pytrain models``, ``pytrain rollback``, ``pytrain unpublish`` and ``pytrain evaluate``.

Examples::

    pytrain models                                  # every version: classes, clip, accuracy, served
    pytrain models --url 127.0.0.1:8001 --json      # with Triton's live state, as JSON
    pytrain rollback kitchen                        # serve the version before the served one
    pytrain rollback kitchen 3 --url 127.0.0.1:8001 # serve version 3 and have that Triton reload
    pytrain unpublish kitchen 1
    pytrain evaluate --model kitchen sources/holdout/      # folders named <class>_<subclass>
    pytrain evaluate --model kitchen --task 7              # task 7's test split

See :mod:`pytrain.publish.versions` (what is served, the history) and :mod:`pytrain.client.evaluate`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from pytrain.cli.serving import CLIPS_HELP, MAX_CLIPS

_URL_HELP = "Triton gRPC host:port (env PYTRAIN_TRITON_GRPC_URL)."


def register(app: typer.Typer) -> None:
    """Add ``models``, ``rollback``, ``unpublish`` and ``evaluate`` to ``app``."""
    app.command("models")(models)
    app.command("rollback")(rollback)
    app.command("unpublish")(unpublish)
    app.command("evaluate")(evaluate)


def models(
    model: Optional[str] = typer.Argument(None, help="Only this model."),
    url: Optional[str] = typer.Option(None, "--url", envvar="PYTRAIN_TRITON_GRPC_URL",
                                      help=_URL_HELP + " Adds Triton's live state; without it, a `pytrain serve` on PYTRAIN_TRITON_GRPC_PORT is asked if one answers."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array instead of the table."),
) -> None:
    """List models and versions: created, task, classes, clip (TxHxW), test accuracy, served, and Triton's state."""
    from pytrain.publish.versions import list_versions_live
    from pytrain.settings import get_settings

    rows, live = list_versions_live(get_settings(), model, url)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    from rich.table import Table

    from pytrain.cli.output import stdout_console

    table = Table("model", "version", "created", "task", "classes", "clip", "test acc", "served", *(["Triton"] if live else []))
    for r in rows:
        acc = "" if r.test_accuracy is None else f"{r.test_accuracy:.3f}"
        cells = [r.model, str(r.version), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)), str(r.task_id or ""),
                 ",".join(r.classes), r.clip, acc, "yes" if r.served else "no"]
        table.add_row(*cells, *([r.state or ""] if live else []))
    stdout_console().print(table)


def rollback(
    model: str = typer.Argument(..., help="The model."),
    version: Optional[int] = typer.Argument(None, min=1, help="The version to serve (default: the newest older one, preferring one with the same classes and clip size)."),
    url: Optional[str] = typer.Option(None, "--url", envvar="PYTRAIN_TRITON_GRPC_URL", help=_URL_HELP + " That Triton (explicit model control) reloads the model."),
) -> None:
    """Serve VERSION of MODEL from its own labels, tensor spec and INI; records it in the model's history.jsonl."""
    from pytrain.publish.versions import rollback as do_rollback
    from pytrain.settings import get_settings

    change = do_rollback(model, version, settings=get_settings(), url=url)
    typer.echo(json.dumps(change.to_dict()))


def unpublish(
    model: str = typer.Argument(..., help="The model."),
    version: int = typer.Argument(..., min=1, help="The version to remove (not the only served one)."),
    url: Optional[str] = typer.Option(None, "--url", envvar="PYTRAIN_TRITON_GRPC_URL", help=_URL_HELP + " That Triton reloads the model."),
) -> None:
    """Remove VERSION of MODEL from the repository (its results stay; its number is never reused)."""
    from pytrain.publish.versions import unpublish as do_unpublish
    from pytrain.settings import get_settings

    change = do_unpublish(model, version, settings=get_settings(), url=url)
    typer.echo(json.dumps(change.to_dict()))


def evaluate(
    paths: Optional[List[Path]] = typer.Argument(None, help="Videos, <class>_<subclass> folders, or dataset folders of them."),
    model: str = typer.Option(..., "--model", help="Triton model name."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="Model version (default: the one Triton serves now)."),
    task: Optional[int] = typer.Option(None, "--task", help="Evaluate task ID's test split (its manifest.csv) instead of PATHs."),
    url: Optional[str] = typer.Option(None, "--url", envvar="PYTRAIN_TRITON_GRPC_URL", help=_URL_HELP + " Default 127.0.0.1:PYTRAIN_TRITON_GRPC_PORT."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Clips per request (default the model's max_batch_size)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Exit 0 even when some clips could not be decoded."),
    timeout: float = typer.Option(60.0, "--timeout", help="Inference timeout per request, seconds."),
    ready_timeout: float = typer.Option(10.0, "--ready-timeout", help="How long to wait for the server and the model, seconds."),
    clips_per_video: Optional[int] = typer.Option(None, "--clips", min=1, max=MAX_CLIPS, help=CLIPS_HELP),
) -> None:
    """Run labelled clips through Triton as `predict` does; print accuracy, top-k, per-class P/R/F1.

    Writes report.json and confusion.png under results/<model>/<version>/evaluations/<time>/. Exits 1
    when a clip could not be decoded (unless --skip-bad).
    """
    from rich.progress import Progress

    from pytrain.client import TritonClient
    from pytrain.client.evaluate import clips_from_paths, clips_from_task
    from pytrain.client.evaluate import evaluate as run_evaluation
    from pytrain.settings import get_settings

    settings = get_settings()
    if (task is None) == (not paths):
        raise typer.BadParameter("give either PATH... or --task ID", param_hint="PATH / --task")
    clips = clips_from_task(settings, task) if task is not None else clips_from_paths(paths or [])
    with TritonClient(url, ready_timeout_s=ready_timeout, load_timeout_s=max(ready_timeout, 10.0), inference_timeout_s=timeout) as client:
        with Progress(transient=True) as bar:
            job = bar.add_task(f"evaluating {model}", total=len(clips))
            report = run_evaluation(client, model, clips, version=version, batch_size=batch_size,
                                    progress=lambda done: bar.update(job, completed=done), views=clips_per_video)
    folder = report.save(settings.results_dir)
    _print_report(report, folder)
    if report.bad and not skip_bad:
        raise typer.Exit(1)


def _print_report(report, folder: Path) -> None:  # type: ignore[no-untyped-def]
    m = report.metrics
    typer.echo(f"model {report.model} version {report.version}: {m['count']} clips in {report.seconds:.1f} s")
    typer.echo(f"accuracy {m['accuracy']:.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in m["top_k"].items()) + f"  macro F1 {m['macro_f1']:.3f}")
    for name, c in m["per_class"].items():
        typer.echo(f"  {name:<20} precision {c['precision']:.3f}  recall {c['recall']:.3f}  f1 {c['f1']:.3f}  support {c['support']}")
    for item in report.unknown:
        typer.echo(f"unknown class {item['label']!r} (not among the model's classes): {item['video']}")
    for item in report.bad:
        typer.echo(f"could not decode {item['video']}: {item['error']}", err=True)
    typer.echo(f"report: {folder / 'report.json'}  confusion matrix: {folder / 'confusion.png'}")
