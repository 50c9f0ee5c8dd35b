"""Turning a claimed task row into a prepared task folder: ``task.json`` and ``manifest.csv``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError
from pytrain.runners.base import PreparedTask
from pytrain.settings import Settings
from pytrain.sources import resolve_classes, split_clips, write_manifest
from pytrain.spec import SPLITS, TaskSpec, read_progress_record, task_dir_name
from pytrain.task_columns import TASK_COLUMNS

log = logging.getLogger(__name__)

#: The task row's columns that ``task.json`` carries as they are.
_SPEC_COLUMNS = tuple(c.name for c in TASK_COLUMNS if c.name in {f.name for f in fields(TaskSpec)})


def prepare_task(task: Mapping[str, Any], settings: Settings, *, registered: Iterable[str] | None, gpus: str | None = None) -> PreparedTask:
    """Resolve a task's classes, split its clips and write its folder.

    The folder ``<model_tasks_dir>/task-<id>-<model_name>/`` is kept across attempts (the training
    resumes from its checkpoint); ``task.json`` and ``manifest.csv`` are rewritten atomically and
    are the same every time (the split is deterministic).

    Args:
        task: the ``training_tasks`` row (a :class:`pytrain.db.TaskRow`, or any mapping with its
            user-settable columns).
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
        class_list=resolved.class_list,
        sources_root=str(settings.sources_dir),
        folders=resolved.folders,
        split_counts={
            split: {label: split_counts[(split, label)] for label in resolved.class_list} for split in SPLITS
        },
        **{name: task[name] for name in _SPEC_COLUMNS},
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
    """The latest progress of a run as the task row's ``progress`` JSON.

    Returns:
        ``ProgressRecord.to_dict()`` of :func:`pytrain.spec.read_progress_record` (the last
        ``epoch`` record with every later record laid over it; a newer writer's unknown keys
        kept), or ``None`` when ``progress.jsonl`` is missing or holds no record.
    """
    record = read_progress_record(task_dir)
    return None if record is None else record.to_dict()
