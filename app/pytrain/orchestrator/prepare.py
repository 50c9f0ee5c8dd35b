"""Turning a claimed task row into a prepared task folder: ``task.json`` and ``manifest.csv``."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError
from pytrain.runners.base import PreparedTask
from pytrain.settings import Settings
from pytrain.sources import resolve_classes, split_clips, write_manifest
from pytrain.spec import PROGRESS, TaskSpec, task_dir_name

log = logging.getLogger(__name__)


def prepare_task(task: dict[str, Any], settings: Settings, *, registered: Iterable[str] | None, gpus: str | None = None) -> PreparedTask:
    """Resolve a task's classes, split its clips and write its folder.

    The folder ``<model_tasks_dir>/task-<id>-<model_name>/`` is kept across attempts (the training
    resumes from its checkpoint); ``task.json`` and ``manifest.csv`` are rewritten atomically and
    are the same every time (the split is deterministic).

    Args:
        task: the ``training_tasks`` row.
        settings: gives ``sources_dir``, ``model_tasks_dir`` and ``task_timeout_seconds``.
        registered: registered dataset names (``None``: do not check).
        gpus: GPU ids for the run, or ``None`` for CPU.

    Returns:
        The :class:`PreparedTask`.

    Raises:
        SourceError, SplitError: the datasets or classes do not resolve (see
            :func:`pytrain.sources.resolve_classes`, :func:`pytrain.sources.split_clips`).
        ConfigurationError: fewer than two classes, or a negative seed.
    """
    if task["seed"] < 0:  # rows from before migration 0003 (its CHECK is NOT VALID for old rows)
        raise ConfigurationError(f"seed {task['seed']} is negative", hint="insert the task again with a seed >= 0")
    resolved = resolve_classes(
        settings.sources_dir, task["sources"], task["classes"], include_other=task["include_other"], registered=registered
    )
    rows = split_clips(
        resolved,
        train_fraction=task["train_fraction"],
        val_fraction=task["val_fraction"],
        test_fraction=task["test_fraction"],
        seed=task["seed"],
    )
    split_counts = Counter((row.split, row.label) for row in rows)
    spec = TaskSpec(
        task_id=int(task["id"]),
        model_name=task["model_name"],
        class_list=resolved.class_list,
        architecture=task["architecture"],
        num_frames=task["num_frames"],
        height=task["height"],
        width=task["width"],
        epochs=task["epochs"],
        batch_size=task["batch_size"],
        shuffle_size=task["shuffle_size"],
        learning_rate=task["learning_rate"],
        seed=task["seed"],
        pretrained=task["pretrained"],
        sources_root=str(settings.sources_dir),
        extra={
            "sources": list(task["sources"]),
            "classes": list(task["classes"]),
            "include_other": task["include_other"],
            "fractions": {"train": task["train_fraction"], "val": task["val_fraction"], "test": task["test_fraction"]},
            "folders": resolved.folders,
            "split_counts": {
                split: {label: split_counts[(split, label)] for label in resolved.class_list} for split in ("train", "val", "test")
            },
        },
    )
    task_dir = Path(settings.model_tasks_dir) / task_dir_name(spec.task_id, spec.model_name)
    task_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(rows, task_dir)
    spec.save(task_dir)
    log.info("task %s: prepared %s (%d clips, classes %s)", spec.task_id, task_dir, len(rows), spec.class_list)
    return PreparedTask(
        spec=spec,
        task_dir=task_dir,
        sources_root=Path(settings.sources_dir),
        timeout_seconds=settings.task_timeout_seconds,
        gpus=gpus,
    )


def read_progress(task_dir: Path) -> dict[str, Any] | None:
    """The latest progress of a run, from ``progress.jsonl``.

    Returns:
        The last ``epoch`` event with every later event's fields laid over it (so after ``done``
        the row keeps the last epoch's numbers and gains the test metrics), or ``None`` when the
        file is missing or empty. Unparseable lines (a line being written) are skipped.
    """
    path = Path(task_dir) / PROGRESS
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    latest: dict[str, Any] = {}
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        latest = dict(event) if event.get("event") == "epoch" else {**latest, **event}
    return latest or None
