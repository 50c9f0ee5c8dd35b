"""What one PyTrain run logs to MLflow, as plain data (no MLflow import here).

Sources: the task row (params, tags), ``progress.jsonl`` (one metric set per ``epoch`` record,
``step = epoch``), ``metrics.json`` (:class:`~pytrain.spec.MetricsRecord`: the final metrics) and
the task folder's files (artifacts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytrain import __version__
from pytrain.spec import (
    DATASET_FINGERPRINT, METRICS, PLOTS, PROGRESS, TENSOR_SPEC, TRAIN_LOG, DatasetFingerprint, MetricsRecord, ProgressRecord,
)
from pytrain.task_columns import TASK_COLUMNS

#: Progress-record fields logged at every epoch: ``{field: MLflow metric key}``. The metric
#: ``epoch`` (its value the epoch) is logged in the same batch: the catch-up mark
#: (:func:`pytrain.tracking.tracker.sync_run`).
EPOCH_METRICS = {
    "train_loss": "train_loss", "train_accuracy": "train_accuracy", "val_loss": "val_loss",
    "val_accuracy": "val_accuracy", "lr": "lr", "seconds": "epoch_seconds", "clips_per_second": "clips_per_second",
}
#: Epoch-record fields logged under their own name when present (the GPU ones only on a CUDA device).
OPTIONAL_EPOCH_METRICS = ("data_wait_seconds", "gpu_memory_peak_bytes", "gpu_utilization")
#: The metric whose history says which epochs a run has logged.
EPOCH_MARK = "epoch"
#: The task-folder files logged as artifacts at the end of a run (those that exist).
ARTIFACT_FILES = (*PLOTS, METRICS, TRAIN_LOG, TENSOR_SPEC, PROGRESS)
#: MLflow's longest param value (``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``, 6000 in 3.x).
MAX_PARAM_CHARS = 6000
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass(frozen=True)
class TrackedRun:
    """One ``task_runs`` row as the tracker needs it (its MLflow run is found by ``run_id``).

    Attributes:
        task_id, uid, run_id: the task, its uid, the ``task_runs`` id.
        model_name, worker_id, runner: who trains what.
        columns: the task's user columns (:data:`pytrain.task_columns.TASK_COLUMNS`), ``options`` included.
        task_dir: the task folder (``None`` before it is prepared).
    """

    task_id: int
    uid: str
    run_id: int
    model_name: str
    worker_id: str
    runner: str
    columns: dict[str, Any]
    task_dir: Path | None = None

    @classmethod
    def from_row(cls, row: Any, *, run_id: int, worker_id: str, runner: str, task_dir: Path | str | None) -> "TrackedRun":
        """From a :class:`pytrain.db.TaskRow` (or any mapping with its keys)."""
        return cls(task_id=int(row["id"]), uid=str(row["uid"]), run_id=int(run_id), model_name=str(row["model_name"]),
                   worker_id=worker_id, runner=runner, columns={c.name: row[c.name] for c in TASK_COLUMNS},
                   task_dir=None if task_dir is None else Path(task_dir))

    @property
    def experiment(self) -> str:
        """The task option ``experiment``, else the model name."""
        return str((self.columns.get("options") or {}).get("experiment") or self.model_name)

    @property
    def run_name(self) -> str:
        """``task-<id>-<model>``."""
        return f"task-{self.task_id}-{self.model_name}"

    def tags(self) -> dict[str, str]:
        """The run's tags (``pytrain.*``)."""
        options = self.columns.get("options") or {}
        tags = {"pytrain.task_id": str(self.task_id), "pytrain.uid": self.uid, "pytrain.run_id": str(self.run_id),
                "pytrain.worker": self.worker_id, "pytrain.runner": self.runner,
                "pytrain.nodes": str(self.columns.get("nodes", 1)), "pytrain.version": __version__}
        tags.update({f"pytrain.{key}": str(options[key]) for key in ("sweep", "trial") if key in options})
        return tags

    def params(self) -> dict[str, str]:
        """Every task column and option (``options.<key>``), as text (lists as JSON)."""
        values = {name: value for name, value in self.columns.items() if name != "options"}
        values.update({f"options.{key}": value for key, value in (self.columns.get("options") or {}).items()})
        return {_key(name): _text(value)[:MAX_PARAM_CHARS] for name, value in values.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _key(name: str) -> str:
    """An MLflow key: characters MLflow refuses become ``_``."""
    return _KEY_UNSAFE.sub("_", name)


def epoch_metrics(record: ProgressRecord) -> dict[str, float]:
    """``{metric: value}`` of one ``epoch`` record (``None`` values left out), :data:`EPOCH_MARK` included."""
    metrics = {key: getattr(record, field) for field, key in EPOCH_METRICS.items()}
    metrics.update({key: getattr(record, key) for key in OPTIONAL_EPOCH_METRICS})
    metrics[EPOCH_MARK] = record.epoch
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def start_params(record: ProgressRecord) -> dict[str, str]:
    """The params a ``start`` record adds: split counts (``clips.<split>``), architecture, world size."""
    params = {f"clips.{split}": str(count) for split, count in (record.clips or {}).items()}
    if record.world_size is not None:
        params["world_size"] = str(record.world_size)
    return params


def read_epochs(task_dir: Path) -> tuple[list[ProgressRecord], dict[str, str]]:
    """The ``epoch`` records of ``task_dir/progress.jsonl`` (the last one of each epoch: a resumed
    run may write an epoch again) in epoch order, and the params its ``start`` records give.

    Lines that do not parse are skipped (:func:`pytrain.spec.read_progress_record` does the same).

    Raises:
        OSError: the file exists but cannot be read.
    """
    try:
        data = (Path(task_dir) / PROGRESS).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return [], {}
    epochs: dict[int, ProgressRecord] = {}
    params: dict[str, str] = {}
    for line in data.splitlines():
        try:
            record = ProgressRecord.from_json(line.decode("utf-8"))
        except Exception:  # a line being written, not UTF-8, a wrong type: as read_progress_record
            continue
        if record.event == "epoch" and record.epoch is not None:
            epochs[record.epoch] = record
        elif record.event == "start":
            params.update(start_params(record))
    return [epochs[epoch] for epoch in sorted(epochs)], params


def dataset_params(task_dir: Path) -> dict[str, str]:
    """``dataset_fingerprint`` (:func:`pytrain.sources.catalog.dataset_fingerprint`) and
    ``dataset_fingerprint.by_stamp``, how many of the manifest's files entered it by size and
    mtime instead of a catalog digest (``"3 of 120"``); ``{}`` before the folder has the file.

    Raises:
        ConfigurationError: ``dataset_fingerprint.json`` does not parse.
    """
    path = Path(task_dir) / DATASET_FINGERPRINT
    if not path.is_file():
        return {}
    fingerprint = DatasetFingerprint.load(path)
    return {"dataset_fingerprint": fingerprint.digest,
            "dataset_fingerprint.by_stamp": f"{fingerprint.by_stamp} of {fingerprint.files}"}


def final_metrics(metrics: MetricsRecord) -> dict[str, float]:
    """The end-of-run metrics: test accuracy, top-k (``test_top1``...), epochs run, best epoch,
    wall time, and per class of the test split ``test_<metric>.<class>`` (precision, recall, F1)."""
    values: dict[str, Any] = {"test_accuracy": metrics.test_accuracy, "epochs_run": metrics.epochs_run,
                              "best_epoch": metrics.best_epoch, "wall_time_s": metrics.wall_time_s}
    values.update({f"test_{k}": v for k, v in (metrics.top_k or {}).items()})
    test = (metrics.splits or {}).get("test") or {}
    values["test_macro_f1"] = test.get("macro_f1")
    for name, figures in (test.get("per_class") or {}).items():
        for figure in ("precision", "recall", "f1"):
            values[_key(f"test_{figure}.{name}")] = (figures or {}).get(figure)
    return {key: float(value) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value}  # NaN: no test clips


def final_params(metrics: MetricsRecord) -> dict[str, str]:
    """Params known only at the end: the resolved class list and the clip counts trained on."""
    params = {f"clips.{split}": str(count) for split, count in (metrics.clip_counts or {}).items()}
    if metrics.class_list is not None:
        params["class_list"] = json.dumps(metrics.class_list)[:MAX_PARAM_CHARS]
    return params


def artifact_files(task_dir: Path) -> Iterator[Path]:
    """The task folder's files of :data:`ARTIFACT_FILES` that exist."""
    for name in ARTIFACT_FILES:
        path = Path(task_dir) / name
        if path.is_file():
            yield path
