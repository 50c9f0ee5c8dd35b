"""Turning a claimed task row into a prepared task folder: ``task.json`` and ``manifest.csv``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytrain.runners.base import PreparedTask
from pytrain.settings import Settings
from pytrain.sources import write_manifest
from pytrain.sources.catalog import dataset_fingerprint, seed_scan_results, with_content_ids
from pytrain.spec import SPLITS, TASK_SPEC_COLUMNS, TaskSpec, read_progress_record, task_dir_name, write_unlisted
from pytrain.task_check import TaskData, check_task
from pytrain.weights import require_weights

log = logging.getLogger(__name__)

def prepare_task(task: Mapping[str, Any], settings: Settings, *, registered: Iterable[str] | None, gpus: str | None = None,
                 videos: Iterable[Mapping[str, Any]] = ()) -> PreparedTask:
    """Check a task, resolve its classes, split its clips and write its folder.

    The folder ``<model_tasks_dir>/task-<id>-<model_name>-<uid8>/`` (:func:`pytrain.spec.task_dir_name`)
    is kept across attempts of the row (the training resumes from its checkpoint when the
    checkpoint's fingerprint still matches); ``task.json``, ``manifest.csv`` and ``unlisted.json``
    (the files left out because their name is not UTF-8) are rewritten atomically and are the
    same every time (the split is deterministic).

    Args:
        task: the ``training_tasks`` row (a :class:`pytrain.db.TaskRow`, or any mapping with its
            user-settable columns, ``id`` and ``uid``).
        settings: gives ``sources_dir``, ``model_tasks_dir`` and ``task_timeout_seconds``.
        registered: registered dataset names (``None``: do not check).
        gpus: GPU ids for the run, or ``None`` for CPU.
        videos: video catalog verdicts of the task's datasets (:meth:`pytrain.db.VideoCatalog.verdicts`):
            their verdicts seed the pre-scan's ``scan.json`` (:func:`pytrain.sources.catalog.seed_scan_results`).

    Returns:
        The :class:`PreparedTask`.

    Raises:
        ConfigurationError, SourceError, SplitError: the task fails :func:`pytrain.task_check.check_task`
            (the same check as ``pytrain submit``'s); a ``pretrained`` task whose weights are not
            in ``settings.torch_home`` (:func:`pytrain.weights.require_weights`: the message
            holds the ``pytrain weights fetch`` command).
    """
    data = check_task(task, sources_dir=settings.sources_dir, registered=registered)
    assert data is not None  # with a sources_dir, check_task resolves the data
    if task.get("pretrained"):  # before any folder, process or container: training never downloads
        require_weights(task["architecture"], settings.torch_home)
    spec = _task_spec(task, data, settings)
    task_dir = _write_task_folder(spec, data, settings, videos)
    return PreparedTask(
        spec=spec,
        task_dir=task_dir,
        sources_root=Path(settings.sources_dir),
        timeout_seconds=settings.task_timeout_seconds,
        gpus=gpus,
    )


def _task_spec(task: Mapping[str, Any], data: TaskData, settings: Settings) -> TaskSpec:
    """The :class:`TaskSpec` of a checked row: its columns as they are, plus what they resolved to."""
    split_counts = Counter((row.split, row.label) for row in data.rows)
    return TaskSpec(
        task_id=int(task["id"]),
        uid=str(task["uid"]),
        class_list=data.resolved.class_list,
        sources_root=str(settings.sources_dir),
        folders=data.resolved.folders,
        split_counts={split: {label: split_counts[(split, label)] for label in data.resolved.class_list} for split in SPLITS},
        extra=dict(task.get("options") or {}),
        **{name: task[name] for name in TASK_SPEC_COLUMNS},
    )


def _write_task_folder(spec: TaskSpec, data: TaskData, settings: Settings, videos: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``manifest.csv``, ``unlisted.json``, ``task.json``, the seeded ``scan.json`` and
    ``dataset_fingerprint.json`` into the task's folder (made if missing); returns the folder."""
    task_dir = Path(settings.model_tasks_dir) / task_dir_name(spec.task_id, spec.model_name, spec.uid)
    task_dir.mkdir(parents=True, exist_ok=True)
    videos = list(videos)
    # the content ids key the shared clip cache and the proxies: training has no database
    write_manifest(with_content_ids(data.rows, videos, settings.sources_dir), task_dir)
    write_unlisted(task_dir, data.resolved.unlisted)  # training lists them in skipped.json, as files that do not decode
    spec.save(task_dir)
    seeded = seed_scan_results(task_dir, data.rows, videos, spec.num_frames, spec.height, spec.width)
    dataset_fingerprint(data.rows, videos, settings.sources_dir).save(task_dir)
    if seeded:
        log.info("task %s: %d of %d files known to the video catalog: not probed again", spec.task_id, seeded, len(data.rows))
    log.info("task %s: prepared %s (%d clips, classes %s)", spec.task_id, task_dir, len(data.rows), spec.class_list)
    return task_dir


def read_progress(task_dir: Path) -> dict[str, Any] | None:
    """The latest progress of a run as the task row's ``progress`` JSON.

    Returns:
        ``ProgressRecord.to_dict()`` of :func:`pytrain.spec.read_progress_record` (the last
        ``epoch`` record with every later record laid over it; a newer writer's unknown keys
        kept), or ``None`` when ``progress.jsonl`` is missing, holds no record or cannot be read
        (logged: the progress is a side channel, the run's outcome does not depend on it).
    """
    try:
        record = read_progress_record(task_dir)
    except OSError as exc:
        log.warning("cannot read the progress of %s (%s: %s); the task row keeps its last progress", task_dir, type(exc).__name__, exc)
        return None
    return None if record is None else record.to_dict()
