"""What each console page shows, read from PyTrain's own records (no second source of truth).

Tasks and runs come from the queue (:class:`pytrain.db.TaskQueue`), the progress bar from the
row's ``progress`` (:class:`pytrain.spec.ProgressRecord`), the curves from the task folder's
``progress.jsonl``, per-class figures from the row's ``metrics`` (:class:`pytrain.spec.MetricsRecord`),
versions from :func:`pytrain.publish.versions.list_versions_live`, sweeps from
:class:`pytrain.sweeps.store.SweepStore` (``list``, ``summary``: ``pytrain sweep list`` and ``show``), workers'
runners and GPUs from the ``workers`` table (:meth:`TaskQueue.workers`), the catalog from
:func:`pytrain.sources.inspect.inspect_dataset`. Files are read only inside the task folders
(:func:`task_folder`), and a log only as a bounded tail (:func:`log_tail`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytrain.db import FINAL_STATUSES, STATUSES, SourceRegistry, TaskQueue, VideoCatalog
from pytrain.errors import ConfigurationError
from pytrain.settings import Settings
from pytrain.spec import TRAIN_LOG, MetricsRecord, ProgressRecord, format_progress, read_progress_records

#: Tasks per page of the Tasks page.
PAGE_SIZE = 50
#: The most of ``train.log`` a page shows: its last bytes, then its last lines.
LOG_TAIL_BYTES = 64 * 1024
LOG_TAIL_LINES = 200
#: The most tasks one live stream follows.
MAX_LIVE_TASKS = 200


def task_state(row: Mapping[str, Any]) -> dict[str, Any]:
    """The live part of a task (what the pages update without a reload): ``id``, ``status``,
    ``percent`` (0..100, epochs done of ``epochs``; 100 once succeeded), ``progress`` (the brief
    :func:`pytrain.spec.format_progress` line), ``version``, ``error`` (its first line), ``final``."""
    try:
        record = ProgressRecord.from_dict(row.get("progress") or {})
    except ConfigurationError:  # a row edited by hand: show the rest
        record = ProgressRecord()
    epochs = record.epochs or row.get("epochs") or 0
    percent = 100.0 if row["status"] == "succeeded" else (100.0 * (record.epoch or 0) / epochs if epochs else 0.0)
    error = (row.get("error") or "").strip().splitlines()
    return {
        "id": int(row["id"]), "status": row["status"], "percent": round(min(percent, 100.0), 1),
        "progress": format_progress(record, brief=True), "version": row.get("version"),
        "error": error[0][:200] if error else "", "final": row["status"] in FINAL_STATUSES,
    }


def parse_ids(text: str) -> list[int]:
    """``"3,2,1"`` -> ``[3, 2, 1]`` (at most :data:`MAX_LIVE_TASKS`).

    Raises:
        ConfigurationError: an entry that is not a task id.
    """
    ids = [part for part in text.split(",") if part.strip()]
    if not all(part.strip().isdigit() for part in ids) or len(ids) > MAX_LIVE_TASKS:
        raise ConfigurationError(f"ids={text[:40]!r} is not a list of at most {MAX_LIVE_TASKS} task ids", hint="e.g. ids=3,2,1")
    return [int(part) for part in ids]


def tasks_page(queue: TaskQueue, *, status: str | None, model: str | None, before: int | None, sweep: str | None = None) -> dict[str, Any]:
    """The Tasks page: one page of rows (newest first), the next page's ``before``, the counts per status.

    Raises:
        ConfigurationError: an unknown status.
    """
    if status is not None and status not in STATUSES:
        raise ConfigurationError(f"status {status!r} is not one of {', '.join(STATUSES)}", hint="pick one from the filter")
    from pytrain.cli.tasks import _weak_recall_text

    rows = queue.list(status=status, model=model, sweep=sweep, before=before, limit=PAGE_SIZE + 1)
    page = rows[:PAGE_SIZE]
    tasks = [{"row": row, "state": task_state(row), "weak": _weak_recall_text(row.metrics)} for row in page]
    return {"tasks": tasks, "next_before": page[-1].id if len(rows) > PAGE_SIZE else None, "counts": queue.counts()}


def task_folder(settings: Settings, row: Mapping[str, Any]) -> Path | None:
    """The task's folder, or ``None`` when it has none yet or its ``task_dir`` lies outside
    ``PYTRAIN_MODEL_TASKS_DIR`` (a row edited by hand must not make a page read other files)."""
    if not row.get("task_dir"):
        return None
    root = settings.model_tasks_dir.resolve()
    folder = (root / str(row["task_dir"])).resolve()
    return folder if folder.is_relative_to(root) and folder != root and folder.is_dir() else None


def log_tail(folder: Path | None) -> list[str]:
    """The last :data:`LOG_TAIL_LINES` lines of the folder's ``train.log`` within its last
    :data:`LOG_TAIL_BYTES` (undecodable bytes replaced); ``[]`` without one."""
    if folder is None:
        return []
    path = folder / TRAIN_LOG
    if path.is_symlink() or not path.is_file():
        return []
    with open(path, "rb") as log:
        log.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        data = log.read(LOG_TAIL_BYTES)
    return data.decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]


@dataclass(frozen=True)
class Curve:
    """One training curve as an SVG polyline: ``points`` (``"x,y x,y"`` in a 0..:data:`WIDTH` x
    0..:data:`HEIGHT` box, y down), its ``name``, its last value and range."""

    name: str
    points: str
    last: float
    low: float
    high: float


WIDTH, HEIGHT = 400, 120


def curves(records: list[ProgressRecord]) -> list[Curve]:
    """The loss and accuracy curves of a task's ``epoch`` records (a resumed run's later epochs
    replace the earlier ones of the same number), each scaled to its own range."""
    by_epoch = {r.epoch: r for r in records if r.event == "epoch" and r.epoch is not None}
    epochs = sorted(by_epoch)
    made = []
    for name in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        values = [(e, getattr(by_epoch[e], name)) for e in epochs if getattr(by_epoch[e], name) is not None]
        if not values:
            continue
        low, high = min(v for _, v in values), max(v for _, v in values)
        span_x, span_y = max(epochs[-1] - epochs[0], 1), (high - low) or 1.0
        points = " ".join(f"{(e - epochs[0]) / span_x * WIDTH:.1f},{HEIGHT - (v - low) / span_y * HEIGHT:.1f}" for e, v in values)
        made.append(Curve(name, points, values[-1][1], low, high))
    return made


def class_report(metrics: Mapping[str, Any] | None, split: str = "test") -> dict[str, Any] | None:
    """Per-class precision/recall/F1/support and the confusion matrix (rows: true class) of ``split``
    from a task's ``metrics``; ``None`` when it has none."""
    try:
        record = MetricsRecord.from_dict(dict(metrics or {}))
    except ConfigurationError:
        return None
    report = (record.splits or {}).get(split) or {}
    per_class = report.get("per_class") or {}
    matrix = report.get("confusion_matrix") or (record.confusion_matrices or {}).get(split)
    if not per_class and not matrix:
        return None
    classes = list(record.class_list or per_class)
    return {"split": split, "per_class": per_class, "classes": classes, "matrix": matrix or [],
            "accuracy": record.test_accuracy, "macro_f1": report.get("macro_f1")}


def task_page(queue: TaskQueue, settings: Settings, task_id: int) -> dict[str, Any]:
    """The Task page: the row (every column), its runs, curves, per-class report and log tail.

    Raises:
        TaskNotFoundError: no such task.
    """
    row = queue.get(task_id)
    folder = task_folder(settings, row)
    records = read_progress_records(folder) if folder is not None else []
    columns = {name: _shown(value) for name, value in row.to_dict().items()}
    runs = queue.runs(task_id)
    return {
        "row": row, "state": task_state(row), "columns": columns, "runs": runs, "curves": curves(records),
        "report": class_report(row.metrics), "log": log_tail(folder), "folder": folder,
        "tracking": bool(runs) and tracking_ui(settings) is not None,
    }


def tracking_ui(settings: Settings) -> str | None:
    """The MLflow UI a Task page links to: ``PYTRAIN_CONSOLE_TRACKING_URL``, else an http(s)
    ``PYTRAIN_MLFLOW_TRACKING_URI``; ``None`` with tracking off or no UI known."""
    if settings.mlflow != "on":
        return None
    uri = settings.mlflow_tracking_uri.get_secret_value() if settings.mlflow_tracking_uri else ""
    ui = settings.console_tracking_url or (uri if uri.startswith(("http://", "https://")) else None)
    return ui.rstrip("/") if ui else None


def tracking_link(queue: TaskQueue, settings: Settings, task_id: int) -> str:
    """The MLflow UI page of the task's latest run (found as the orchestrator's tracker logged it).

    Raises:
        TaskNotFoundError: no such task.
        ConfigurationError: tracking is off, the UI is unknown, or the run has no MLflow run yet.
    """
    from pytrain.tracking.logged import TrackedRun
    from pytrain.tracking.store import make_client
    from pytrain.tracking.tracker import find_run

    ui = tracking_ui(settings)
    row, runs = queue.get(task_id), queue.runs(task_id)
    if ui is None or not runs:
        raise ConfigurationError(f"task {task_id} has no tracking run to show" + ("" if runs else ": it has not run yet"),
                                 hint="set PYTRAIN_MLFLOW=on and PYTRAIN_CONSOLE_TRACKING_URL (MLflow's UI, `pytrain tracking ui`)")
    run = TrackedRun.from_row(row, run_id=runs[-1].id, worker_id=runs[-1].worker_id, runner="", task_dir=None)
    found = find_run(make_client(settings), run)
    if found is None:
        raise ConfigurationError(f"task {task_id}'s run {run.run_id} has no MLflow run yet in experiment {run.experiment!r}",
                                 hint="the orchestrator logs it within seconds; `pytrain tracking sync` catches up")
    return f"{ui}/#/experiments/{found[0]}/runs/{found[1]}"


def _shown(value: Any) -> str:
    """A column's value as text (JSON for lists and objects, cut at 2,000 characters)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 2000 else text[:2000] + f"... ({len(text)} characters)"


def workers_page(queue: TaskQueue) -> list[dict[str, Any]]:
    """The live orchestrators (those holding their worker-id lock in the database): worker id,
    runner and GPUs (as the orchestrator recorded them with its lock; an older orchestrator's id
    only when it ran a task before), host and pid (from the lock's session name), connected since,
    and the task it runs now with its last heartbeat and progress."""
    found = queue.workers()
    ids = {int(k["lock_key"]): k["worker_id"] for k in found["known"]}
    running: dict[str, dict[str, Any]] = {t["worker_id"]: t for t in found["running"]}
    workers = []
    for session in found["live"]:
        worker_id = session["worker_id"] or ids.get(int(session["lock_key"]))
        task = running.pop(worker_id, None) if worker_id else None
        workers.append({"worker_id": worker_id, "runner": session["runner"], "gpus": session["gpus"],
                        "session": session["application_name"].removeprefix("pytrain worker "),
                        "address": session["client_addr"] or "local socket", "since": session["backend_start"],
                        "task": task, "state": task_state({**task, "status": "running"}) if task else None})
    for worker_id, task in running.items():  # a running task whose worker holds no lock: lost, or re-queued soon
        workers.append({"worker_id": worker_id, "runner": None, "gpus": None, "session": None, "address": None,
                        "since": None, "task": task, "state": task_state({**task, "status": "running"})})
    return workers


def sources_page(settings: Settings, queue: TaskQueue) -> list[dict[str, Any]]:
    """Per registered dataset: the catalog's report (:func:`pytrain.sources.inspect.inspect_dataset`:
    files, good clips, classes, bad files with reasons, duplicates) or why there is none."""
    from pytrain.db import TASK_DEFAULTS
    from pytrain.errors import SourceError
    from pytrain.sources import min_clips
    from pytrain.sources.inspect import inspect_dataset

    catalog = VideoCatalog(queue.engine)
    minimum = min_clips(TASK_DEFAULTS["val_fraction"], TASK_DEFAULTS["test_fraction"])
    reports = []
    for name in SourceRegistry(queue.engine).names():
        try:
            reports.append({"name": name, "report": inspect_dataset(name, catalog.videos([name]), min_clips_per_class=minimum)})
        except SourceError as exc:
            reports.append({"name": name, "report": None, "problem": str(exc)})
    return reports
