"""Turning a claimed task row into a prepared task folder: ``task.json`` and ``manifest.csv``."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError
from pytrain.runners.base import PreparedTask
from pytrain.sampling import check_sampling
from pytrain.settings import Settings
from pytrain.sources import load_groups, resolve_classes, split_clips, write_manifest
from pytrain.sources.catalog import seed_scan_results
from pytrain.spec import SPLITS, TaskSpec, read_progress_record, task_dir_name, write_unlisted
from pytrain.task_columns import CLASS_NAME_PATTERN, MAX_CLASSES, MAX_SOURCES, SOURCE_NAME_PATTERN, TASK_COLUMNS
from pytrain.task_options import check_options
from pytrain.weights import require_weights

log = logging.getLogger(__name__)

#: The task row's columns that ``task.json`` carries as they are.
_SPEC_COLUMNS = tuple(c.name for c in TASK_COLUMNS if c.name in {f.name for f in fields(TaskSpec)})


def _shown(value: str) -> str:
    """``value`` for an error message: its repr (newlines, NUL and emoji escaped or kept readable),
    cut to 40 characters with the full length named, so a 1 MB name does not become a 1 MB error."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(value)} characters)"


def check_task_lists(task: Mapping[str, Any]) -> None:
    """Refuse ``sources`` and ``classes`` that no folder can match, before anything touches the disk.

    The database's CHECKs already refuse empty lists, NULL and empty entries; a row inserted by hand
    may still hold a path (``../x``, ``/etc``), control characters, a 1 MB name, thousands of
    entries or the same entry twice. Each is named in the error (shortened).

    Raises:
        ConfigurationError: the first bad list or entry, naming it and the rule.
    """
    for name, pattern, limit, what in (
        ("sources", SOURCE_NAME_PATTERN, MAX_SOURCES, "a dataset folder name directly under the sources root"),
        ("classes", CLASS_NAME_PATTERN, MAX_CLASSES, "the start of a class folder's name (no '/', no control characters, at most 255 characters)"),
    ):
        values = list(task[name])
        if len(values) > limit:
            raise ConfigurationError(f"{name} lists {len(values)} entries; at most {limit}", hint=f"split the task, or select fewer {name}")
        seen: set[str] = set()
        for value in values:
            if not isinstance(value, str) or not re.fullmatch(pattern, value):  # match() lets "x\n" through
                shown = _shown(value) if isinstance(value, str) else repr(value)
                raise ConfigurationError(f"{name} entry {shown} is not {what}", hint=f"{name} entries must match {pattern}")
            if value in seen:
                raise ConfigurationError(f"{name} lists {_shown(value)} twice", hint="list each entry once (pytrain submit drops repeats)")
            seen.add(value)


def prepare_task(task: Mapping[str, Any], settings: Settings, *, registered: Iterable[str] | None, gpus: str | None = None,
                 videos: Iterable[Mapping[str, Any]] = ()) -> PreparedTask:
    """Resolve a task's classes, split its clips and write its folder.

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
        SourceError, SplitError: the datasets or classes do not resolve, or a folder cannot be read (see
            :func:`pytrain.sources.resolve_classes`, :func:`pytrain.sources.split_clips`).
        ConfigurationError: fewer than two classes, a negative seed, a source or class entry
            no folder can match (:func:`check_task_lists`), or an unknown or mistyped option
            (:func:`pytrain.task_options.check_options`), or sampling training cannot
            follow (:func:`pytrain.sampling.check_sampling`); a ``pretrained`` task whose
            weights are not in ``settings.torch_home`` (:func:`pytrain.weights.require_weights`:
            the message holds the ``pytrain weights fetch`` command).
    """
    check_task_lists(task)
    check_options(dict(task.get("options") or {}))
    check_sampling(task["sampling"], task["frame_interval"], num_clips=task["num_clips"], test_clips=task["test_clips"])
    if task.get("pretrained"):  # before any folder, process or container: training never downloads
        require_weights(task["architecture"], settings.torch_home)
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
        groups=load_groups(settings.sources_dir, task["sources"], [clip.path for clip in resolved.clips]),
    )
    split_counts = Counter((row.split, row.label) for row in rows)
    spec = TaskSpec(
        task_id=int(task["id"]),
        uid=str(task["uid"]),
        class_list=resolved.class_list,
        sources_root=str(settings.sources_dir),
        folders=resolved.folders,
        split_counts={
            split: {label: split_counts[(split, label)] for label in resolved.class_list} for split in SPLITS
        },
        extra=dict(task.get("options") or {}),
        **{name: task[name] for name in _SPEC_COLUMNS},
    )
    task_dir = Path(settings.model_tasks_dir) / task_dir_name(spec.task_id, spec.model_name, spec.uid)
    task_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(rows, task_dir)
    write_unlisted(task_dir, resolved.unlisted)  # training lists them in skipped.json, as files that do not decode
    spec.save(task_dir)
    seeded = seed_scan_results(task_dir, rows, videos, spec.num_frames, spec.height, spec.width)
    if seeded:
        log.info("task %s: %d of %d files known to the video catalog: not probed again", spec.task_id, seeded, len(rows))
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
        kept), or ``None`` when ``progress.jsonl`` is missing, holds no record or cannot be read
        (logged: the progress is a side channel, the run's outcome does not depend on it).
    """
    try:
        record = read_progress_record(task_dir)
    except OSError as exc:
        log.warning("cannot read the progress of %s (%s: %s); the task row keeps its last progress", task_dir, type(exc).__name__, exc)
        return None
    return None if record is None else record.to_dict()
