"""The one-command demo: a task row in, a served model out, on a CPU-only machine.

``pytrain demo`` (wrapped by ``scripts/demo.sh``) runs the whole main job with embedded parts:

1. makes a small synthetic mp4 dataset (or uses ``--sources DIR``),
2. starts the embedded PostgreSQL server and migrates it,
3. registers the dataset (``pytrain sources sync``),
4. inserts one ``training_tasks`` row (validated like ``pytrain submit``; the same row as
   ``examples/insert_task.sql``),
5. runs the orchestrator (local runner) until the queue is empty, showing the epochs,
6. starts the embedded Triton server over ``model_repo/`` and predicts the task's held-out
   (test split) clips over gRPC, printing each prediction and the accuracy; below
   ``DemoOptions.min_accuracy`` the demo fails (exit code 1).

:func:`run_demo` reports through a ``console`` (rich) passed in by the command, so tests and
scripts can call it with their own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from pytrain.errors import ConfigurationError, PyTrainError, SourceError, TrainingError
from pytrain.settings import Settings, with_overrides
from pytrain.sources.resolve import class_of
from pytrain.task_columns import MIN_CLASSES
from pytrain.spec import ManifestRow, MetricsRecord, ProgressRecord, format_progress, read_manifest, task_dir_name

DEMO_DATASET = "demo"
DEMO_CLASSES = ("cooking", "drinking", "eating")

@dataclass(frozen=True)
class DemoOptions:
    """What the demo trains.

    Attributes:
        sources: a dataset folder (``<dataset>/<class_subclass>/*.mp4``) to use instead of the
            synthetic one; its parent becomes the sources root.
        model_name: Triton model name.
        epochs: training epochs (early stopping may end sooner).
        num_frames: frames per clip.
        size: clip height and width in pixels.
        clips_per_folder: synthetic clips per ``class_subclass`` folder.
        min_accuracy: the held-out accuracy over gRPC below which the demo fails (0..1).
    """

    sources: Path | None = None
    model_name: str = "demo"
    epochs: int = 8
    num_frames: int = 8
    size: int = 64
    clips_per_folder: int = 10
    min_accuracy: float = 0.5


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured: the task, its published version, and held-out accuracy over gRPC."""

    task_id: int
    version: int | None
    predictions: list[dict[str, Any]]
    accuracy: float
    test_accuracy_in_training: float | None


def _dataset(options: DemoOptions, settings: Settings, console: Any) -> tuple[Settings, str, list[str], bool]:
    """Returns (settings with the right sources root, dataset name, classes, include_other)."""
    if options.sources is not None:
        folder = options.sources.expanduser().resolve()
        if not folder.is_dir():
            raise SourceError(f"--sources {folder} is not a folder", hint="give a dataset folder holding <class_subclass>/*.mp4 folders")
        folders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        classes = sorted({class_of(p.name) for p in folders if any(p.glob("*.mp4"))})
        if not classes and any(p.glob("*/*.mp4") for p in folders):
            raise SourceError(
                f"--sources {folder} looks like a sources root, not a dataset folder",
                hint=f"pass one of its datasets, e.g. --sources {folders[0]}",
            )
        if len(classes) < MIN_CLASSES:
            raise SourceError(
                f"--sources {folder} has {len(classes)} class folder(s) with mp4 files",
                hint=f"a classifier needs at least {MIN_CLASSES} classes: <dataset>/<class_subclass>/*.mp4",
            )
        console.print(f"using dataset [bold]{folder.name}[/] in {folder.parent}: classes {classes}")
        return with_overrides(settings, sources_dir=folder.parent), folder.name, classes, False
    from pytrain.sources.synthetic import DEMO_FOLDERS, make_dataset

    root = settings.sources_dir / DEMO_DATASET
    make_dataset(root, folders=DEMO_FOLDERS, clips_per_folder=options.clips_per_folder, height=64, width=64)
    count = sum(1 for _ in root.glob("*/*.mp4"))
    console.print(f"synthetic dataset [bold]{DEMO_DATASET}[/]: {count} mp4 clips in {root} ({', '.join(DEMO_FOLDERS)})")
    return settings, DEMO_DATASET, list(DEMO_CLASSES), True


def run_demo(options: DemoOptions, settings: Settings, console: Any) -> DemoResult:
    """Run the main job end to end on embedded parts; see the module docstring.

    Raises:
        PyTrainError: any step failed; the message names the step's data (task id, error row).
    """
    from pytrain.db import TaskQueue, get_engine, upgrade
    from pytrain.sources.registry import sync_sources

    if options.epochs < 1 or options.num_frames < 1 or options.size < 16:
        raise ConfigurationError("--epochs and --num-frames must be >= 1 and --size >= 16")
    started = time.monotonic()

    def step(n: int, title: str) -> None:
        console.rule(f"[bold]{n}/6 {title}[/]  ({time.monotonic() - started:.0f} s)")

    step(1, "dataset")
    settings, dataset, classes, include_other = _dataset(options, settings, console)

    step(2, "PostgreSQL")
    engine = get_engine(settings)
    upgrade(engine)
    console.print(f"database ready: {engine.url.render_as_string(hide_password=True)}", soft_wrap=True)

    step(3, "register the dataset")
    synced = sync_sources(settings, engine=engine)
    console.print(f"registered datasets: {', '.join(synced.registered)} (new: {', '.join(synced.added) or 'none'})")

    step(4, "insert a training task")
    queue = TaskQueue(engine)
    task_id = _insert_task(queue, options, dataset, classes, include_other, console)

    step(5, "orchestrator: claim, split, train, export, publish")
    record, mlflow_run = _train(settings, queue, task_id, options, console)
    console.print(f"task {task_id} succeeded: published [bold]{options.model_name}[/] version {record.version} into {settings.model_repo_dir}")

    step(6, "Triton: serve and predict the held-out clips over gRPC")
    result = _predict_held_out(settings, record, options, console, started)
    if mlflow_run is not None:
        console.print(f"experiment tracking: run [bold]pytrain tracking ui[/], then open "
                      f"http://127.0.0.1:5000/#/runs/{mlflow_run} (this run in MLflow)", soft_wrap=True)
    check_accuracy(result, options.min_accuracy)
    return result


def _insert_task(queue: Any, options: DemoOptions, dataset: str, classes: list[str], include_other: bool, console: Any) -> int:
    """Insert the demo's task row, validated like ``pytrain submit``; returns its id."""
    from pytrain.db import TaskRequest

    row = {
        "model_name": options.model_name,
        "sources": [dataset],
        "classes": classes,
        "include_other": include_other,
        "architecture": "tiny",
        "num_frames": options.num_frames,
        "height": options.size,
        "width": options.size,
        "epochs": options.epochs,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "seed": 0,
    }
    task_id = queue.submit(TaskRequest.parse(row).columns())
    console.print(
        f"INSERT INTO training_tasks ({', '.join(row)}) VALUES (...) -> task [bold]{task_id}[/]  "
        f"(the same row as SQL: examples/insert_task.sql)"
    )
    return task_id


def _train(settings: Settings, queue: Any, task_id: int, options: DemoOptions, console: Any) -> Any:
    """Run an orchestrator until the queue is empty, showing the task's epochs as a bar.

    Returns:
        ``(the task's row, its MLflow run id)``: the row (:class:`pytrain.db.TaskRow`) once it
        succeeded; the run id ``None`` when tracking is off or failed (a warning said why).

    Raises:
        TrainingError: the task ended otherwise (its error and ``train.log`` named); the
            orchestrator's own exception as it is.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pytrain.orchestrator import Orchestrator

    orchestrator = Orchestrator(settings, engine=queue.engine)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            orchestrator.run(exit_when_idle=True)
        except BaseException as exc:  # reported below, in the main thread
            failure.append(exc)

    # The bar below shows the epochs; the orchestrator's own per-epoch log lines would tear it.
    logging.getLogger("pytrain.orchestrator.progress").setLevel(logging.WARNING)
    thread = threading.Thread(target=work, name="pytrain-demo-orchestrator", daemon=True)
    thread.start()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        bar = progress.add_task(f"task {task_id}: queued", total=options.epochs, info="")
        while thread.is_alive():
            thread.join(timeout=0.5)
            record = queue.get(task_id)
            latest = ProgressRecord.from_dict(record.progress or {})
            progress.update(bar, description=f"task {task_id}: {record.status}", completed=latest.epoch or 0,
                            total=latest.epochs or options.epochs, info=format_progress(latest))
    if failure:
        raise failure[0]
    record = queue.get(task_id)
    if record.status != "succeeded":
        raise TrainingError(f"task {task_id} ended {record.status}: {record.error or 'no error recorded'}",
                            hint=f"see {settings.model_tasks_dir / task_dir_name(task_id, options.model_name, record.uid)}/train.log")
    return record, orchestrator.tracker.mlflow_runs.get(record.run_id)


def _predict_held_out(settings: Settings, record: Any, options: DemoOptions, console: Any, started: float) -> DemoResult:
    """Predict the task's test-split clips with the served model over gRPC and report the accuracy
    (and the demo's time since ``started``, a ``time.monotonic()``)."""
    trained_accuracy = MetricsRecord.from_dict(record.metrics or {}).test_accuracy
    task_dir = Path(record.task_dir or settings.model_tasks_dir / task_dir_name(record.id, options.model_name, record.uid))
    held_out = [r for r in read_manifest(task_dir) if r.split == "test"]
    predictions = _predict(settings, options.model_name, record.version, held_out, console)
    correct = sum(p["label"] == p["true_label"] for p in predictions)
    accuracy = correct / len(predictions) if predictions else 0.0
    console.print(
        f"\n[bold]held-out accuracy over gRPC: {accuracy:.3f}[/] ({correct}/{len(predictions)} clips); "
        f"test accuracy in training: {float('nan') if trained_accuracy is None else trained_accuracy:.3f}; "
        f"total {time.monotonic() - started:.0f} s"
    )
    return DemoResult(record.id, record.version, predictions, accuracy, trained_accuracy)


def check_accuracy(result: DemoResult, min_accuracy: float) -> None:
    """Fail the demo when the served model is worse than ``min_accuracy`` on the held-out clips.

    Raises:
        TrainingError: ``result.accuracy < min_accuracy``; the message gives both and the task.
    """
    if result.accuracy < min_accuracy:
        raise TrainingError(
            f"task {result.task_id}: held-out accuracy over gRPC {result.accuracy:.3f} is below the demo's "
            f"threshold {min_accuracy:.3f} ({len(result.predictions)} clips)",
            hint="train longer (--epochs) or check the dataset; --min-accuracy 0 accepts any accuracy",
        )


def _predict(settings: Settings, model: str, version: int | None, rows: list[ManifestRow], console: Any) -> list[dict[str, Any]]:
    import json

    from pytrain.client import TritonClient
    from pytrain.serving import TritonServer, free_port

    if not rows:
        raise PyTrainError("the task's test split is empty: nothing to predict")
    server = TritonServer.from_settings(
        settings, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    )
    results = []
    with server:
        console.print(f"tritonserver ready: gRPC {server.grpc_url} (log {server.log_path})")
        with TritonClient(server.grpc_url) as client:
            paths = [settings.sources_dir / r.path for r in rows]
            outputs = client.predict(model, paths, top_k=1, version=str(version) if version else "")
            for row, path, top in zip(rows, paths, outputs):
                best = top[0]
                result = {"video": str(path.relative_to(settings.sources_dir)), "label": best.label,
                          "probability": round(float(best.probability), 4), "true_label": row.label}
                mark = "[green]ok[/]" if best.label == row.label else "[red]wrong[/]"
                console.print(f"{json.dumps(result)}  {mark}", soft_wrap=True)
                results.append(result)
    return results


_DEFAULTS = DemoOptions()


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command()
    def demo(
        sources: Optional[Path] = typer.Option(None, "--sources", help="A dataset folder <dataset>/<class_subclass>/*.mp4; default: a synthetic one."),
        model_name: str = typer.Option(_DEFAULTS.model_name, "--model-name", help="Triton model name to publish."),
        epochs: int = typer.Option(_DEFAULTS.epochs, "--epochs", min=1, help="Training epochs."),
        num_frames: int = typer.Option(_DEFAULTS.num_frames, "--num-frames", min=1, help="Frames per clip."),
        size: int = typer.Option(_DEFAULTS.size, "--size", min=16, help="Clip height and width, pixels."),
        min_accuracy: float = typer.Option(_DEFAULTS.min_accuracy, "--min-accuracy", min=0.0, max=1.0,
                                           help="Fail (exit 1) when the held-out accuracy over gRPC is lower."),
    ) -> None:
        """Make a dataset, insert a task row, train on the CPU, publish, serve with Triton, predict over gRPC."""
        from rich.console import Console

        from pytrain.settings import get_settings

        options = DemoOptions(sources=sources, model_name=model_name, epochs=epochs, num_frames=num_frames, size=size,
                              min_accuracy=min_accuracy)
        run_demo(options, get_settings(), Console(stderr=False))  # a PyTrainError: `error: ...`, exit 1
