"""The one check of a task before it trains: :func:`check_task`.

``pytrain submit`` calls it before the INSERT (so a user hears at once what the worker would
say), the console will call it the same way, and the orchestrator calls it when it prepares a
claimed row (:func:`pytrain.orchestrator.prepare.prepare_task`), since a row may come from plain
SQL or from before a CHECK existed. The rules themselves live where they belong: the columns'
bounds and patterns in :mod:`pytrain.task_columns`, the options in :mod:`pytrain.task_options`,
the sampling in :mod:`pytrain.sampling`, the classes and the split in :mod:`pytrain.sources`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError
from pytrain.sampling import check_sampling
from pytrain.sources import ManifestRow, ResolvedClasses, load_groups, resolve_classes, split_clips
from pytrain.task_columns import (
    CLASS_NAME_PATTERN,
    MAX_CLASSES,
    MAX_SOURCES,
    SOURCE_NAME_PATTERN,
    check_class_count,
    check_values,
    task_defaults,
)
from pytrain.task_options import check_options


@dataclass(frozen=True)
class TaskData:
    """What a task's datasets and classes resolved to.

    Attributes:
        resolved: the labelled clips and the class list (:func:`pytrain.sources.resolve_classes`).
        rows: the split, one :class:`ManifestRow` per clip (:func:`pytrain.sources.split_clips`).
    """

    resolved: ResolvedClasses
    rows: list[ManifestRow]


def check_task(task: Mapping[str, Any], *, sources_dir: Path | None, registered: Iterable[str] | None) -> TaskData | None:
    """Every check a task passes before it trains, in one place.

    1. The row's own values (no file is read): each column within its bounds and pattern
       (:func:`pytrain.task_columns.check_values`: a row from before migration 0003, whose CHECKs
       are ``NOT VALID``, may hold a negative seed), the ``sources`` and ``classes`` entries
       (:func:`check_task_lists`), the ``options`` (:func:`pytrain.task_options.check_options`)
       and a sampling training can follow (:func:`pytrain.sampling.check_sampling`).
    2. With ``sources_dir``, the data: every selected class resolves to folders of the
       (registered) datasets, at least two classes result, and each class has enough clips for
       the split.

    Args:
        task: the task's columns (a :class:`pytrain.db.TaskRow`, or a mapping with every
            user-settable column, e.g. ``{**TASK_DEFAULTS, **request.columns()}``).
        sources_dir: the sources root; ``None`` checks the row's values only (``pytrain submit``
            on a machine that does not see the datasets: the worker checks again).
        registered: the registered dataset names (``None``: not checked).

    Returns:
        The resolved classes and the split (:class:`TaskData`), ``None`` without ``sources_dir``.

    Raises:
        ConfigurationError: a bad value, entry, option or sampling; fewer than two classes.
        SourceError, SplitError: a dataset or class does not resolve, a folder cannot be read,
            too few clips for the split (:func:`pytrain.sources.resolve_classes`,
            :func:`pytrain.sources.split_clips`).
    """
    check_task_lists(task)
    check_options(dict(task.get("options") or {}))
    check_values(task)
    check_sampling(task["sampling"], task["frame_interval"], num_clips=task["num_clips"], test_clips=task["test_clips"])
    if sources_dir is None:
        return None
    resolved = resolve_classes(sources_dir, task["sources"], task["classes"], include_other=task["include_other"], registered=registered)
    check_class_count(resolved.class_list)
    rows = split_clips(
        resolved,
        train_fraction=task["train_fraction"],
        val_fraction=task["val_fraction"],
        test_fraction=task["test_fraction"],
        seed=task["seed"],
        groups=load_groups(sources_dir, task["sources"], [clip.path for clip in resolved.clips]),
    )
    return TaskData(resolved, rows)


def check_submission(columns: Mapping[str, Any], *, sources_dir: Path, registered: Iterable[str]) -> None:
    """What ``pytrain submit`` and the console's Submit page check before the INSERT.

    Every dataset is registered, the architecture is one training knows (where the training extra
    is installed), and :func:`check_task` passes; the data is checked only where every dataset
    folder is seen here (they may lie under another mount on the worker's host, which checks again
    when it prepares the task).

    Args:
        columns: the given columns (``TaskRequest.columns()``); the rest take the database defaults.
        sources_dir: the sources root.
        registered: the registered dataset names.

    Raises:
        ConfigurationError, SourceError, SplitError: as :func:`check_task`, and for an unregistered
            dataset or an unknown architecture.
    """
    registered = set(registered)
    unregistered = [s for s in columns["sources"] if s not in registered]
    if unregistered:
        raise ConfigurationError(f"dataset(s) {unregistered} are not registered", hint="run `pytrain sources sync`")
    check_architecture(columns.get("architecture"))
    seen = all((sources_dir / name).is_dir() for name in columns["sources"])
    check_task({**task_defaults(), **columns}, sources_dir=sources_dir if seen else None, registered=registered)


def check_architecture(architecture: str | None) -> None:
    """Reject an architecture training does not know; skipped where the training extra is not installed.

    Raises:
        ConfigurationError: naming the architecture and those training knows.
    """
    if architecture is None:
        return
    try:
        from pytrain.training.models import ARCHITECTURES
    except ImportError:  # an orchestrator-only install: the training run reports it
        return
    if architecture not in ARCHITECTURES:
        raise ConfigurationError(f"unknown architecture {architecture!r}", hint=f"--architecture one of {sorted(ARCHITECTURES)}")


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
