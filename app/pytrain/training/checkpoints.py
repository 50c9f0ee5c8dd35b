"""Checkpoints that belong to their run: the run's fingerprint, the previous checkpoint, moving aside.

A checkpoint is resumed only by the run it was written for. Each one carries the run's
**fingerprint** (:func:`run_fingerprint`): the task row's identity (``task_id``, ``uid``), every
``task.json`` field and every task option that changes the trained weights, and the SHA-256 of
``manifest.csv``. On resume (:func:`find_resumable`) a checkpoint whose fingerprint differs from
the task's is not loaded: the run starts over at epoch 1, the log names each field that changed
(``class_list: ['a', 'b'] -> ['a', 'c']``), and the old run's files are moved into
``stale-<UTC time>/`` in the task folder (:func:`move_aside`), never deleted.

What the fingerprint leaves out, and why (everything else is in it, so a field added later is
fingerprinted unless it is listed here):

- ``task.json``: ``model_name``, ``input_name``, ``output_name`` (names, not weights);
  ``sources_root`` (the same sources are mounted at another path in a container);
  ``sources``, ``classes``, ``include_other``, the three fractions, ``folders``, ``split_counts``
  (what they select is ``manifest.csv`` and ``class_list``, which are in it); ``test_clips``
  (evaluation only); ``nodes`` (a task re-claimed by a host with another GPU count resumes);
  ``extra`` (the options, fingerprinted one by one below).
- options (:class:`pytrain.task_options.TrainConfig`): ``patience`` (early stopping's state,
  patience included, is restored from the checkpoint; it does not change the weights so far) and
  ``decode_timeout_s`` (how long a decoder may hang) and ``cache`` (the cache changes no frame: a run
  without it decodes the same pool frames). ``cache_pool_factor`` IS in it: it sets the pool that
  training's jitter draws from.

``epochs`` is in it: the learning-rate schedule is a cosine over ``epochs``, so a run resumed with
another ``epochs`` would not end with the weights of an uninterrupted run.

**The previous checkpoint.** :func:`save_last` writes ``checkpoint_last.pt`` to a temporary file
(fsynced), renames the current last one to ``checkpoint_prev.pt`` and renames the new one in. A
crash between the renames leaves no last checkpoint and the newest one as ``checkpoint_prev.pt``;
resume tries the last one, then the previous one (when the last is missing or damaged, which is
logged; a damaged one is moved aside so it never becomes the previous one), then starts over.

**Damaged or unreadable.** Only a file whose bytes were read and do not parse (truncated, garbage:
``torch.load``'s zip and unpickling errors) is damaged. A file that cannot be read (EIO, ESTALE
on NFS, a permission error, a directory in its place, no memory) says nothing about the checkpoint:
the run fails with :class:`pytrain.errors.CheckpointReadError` (the path and the cause) like any
failed run, every file stays where it is, and a retry of the task resumes from them.

Checkpoints written before fingerprints existed have none: they are moved aside and the run starts
over (logged).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pytrain.errors import CheckpointReadError, TrainingError
from pytrain.spec import (
    CHECKPOINT_BEST, CHECKPOINT_LAST, CHECKPOINT_PREV, MANIFEST, METRICS, MODEL_ONNX, PLOTS, PROGRESS, TENSOR_SPEC, TaskSpec, atomic_path,
)
from pytrain.task_options import TrainConfig
from pytrain.training.disk import NO_SPACE_HINT, find_no_space, no_space_message, tensor_bytes

log = logging.getLogger("pytrain.training")

#: ``task.json`` fields left out of the fingerprint (the module docstring says why).
SPEC_NOT_FINGERPRINTED = frozenset({
    "model_name", "input_name", "output_name", "sources_root", "sources", "classes", "include_other",
    "train_fraction", "val_fraction", "test_fraction", "folders", "split_counts", "test_clips", "nodes", "extra",
})
#: Task options left out of the fingerprint (the module docstring says why).
OPTIONS_NOT_FINGERPRINTED = frozenset({"patience", "decode_timeout_s", "cache"})
#: The fingerprint's key for the manifest's hash.
MANIFEST_KEY = "manifest.csv sha256"
#: Files of a run that are moved aside when the task starts over (``scan.json``, ``skipped.json``
#: and ``clip_cache/`` stay: they depend on the files, not on the run, and are keyed by them).
RUN_FILES = (CHECKPOINT_LAST, CHECKPOINT_PREV, CHECKPOINT_BEST, PROGRESS, METRICS, MODEL_ONNX, TENSOR_SPEC, *PLOTS)


def run_fingerprint(spec: TaskSpec, cfg: TrainConfig, task_dir: Path) -> dict[str, Any]:
    """What the run is: ``{"task.<field>": value, "options.<key>": value, "manifest.csv sha256": hex}``.

    Args:
        spec: the task's ``task.json``.
        cfg: its options, typed.
        task_dir: the folder holding ``manifest.csv``.

    Raises:
        TrainingError: ``manifest.csv`` cannot be read.
    """
    spec_values = spec.to_dict()
    fingerprint: dict[str, Any] = {
        f"task.{f.name}": spec_values[f.name] for f in fields(TaskSpec) if f.name not in SPEC_NOT_FINGERPRINTED
    }
    options = cfg.to_options()
    fingerprint.update((f"options.{key}", value) for key, value in options.items() if key not in OPTIONS_NOT_FINGERPRINTED)
    try:
        fingerprint[MANIFEST_KEY] = hashlib.sha256((Path(task_dir) / MANIFEST).read_bytes()).hexdigest()
    except OSError as exc:
        raise TrainingError(f"cannot read {Path(task_dir) / MANIFEST}: {exc}") from exc
    return fingerprint


def fingerprint_changes(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Why a checkpoint with fingerprint ``saved`` does not belong to the run ``current``.

    Returns:
        One line per difference (``"options.dropout: 0.2 -> 0.5"``, ``"manifest.csv sha256:
        1f0c... -> 9ab2..."``), ``["the checkpoint has no fingerprint ..."]`` for ``None``, or
        ``[]`` when they match.
    """
    if saved is None:
        return ["the checkpoint has no fingerprint (written before PyTrain recorded them)"]
    changes = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            if key == MANIFEST_KEY:
                old, new = str(old)[:12] + "...", str(new)[:12] + "..."
            changes.append(f"{key}: {old!r} -> {new!r}")
    return changes


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsynced, then ``os.replace`` (appears whole).

    Raises:
        TrainingError: the file system is full (names the folder and the bytes needed).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        _save(state, tmp, path)
    _fsync_dir(path.parent)


def save_last(state: dict[str, Any], task_dir: Path) -> None:
    """Write ``checkpoint_last.pt``; the one it replaces becomes ``checkpoint_prev.pt``.

    Each file appears whole: the new checkpoint is written and fsynced under a temporary name,
    then ``last -> prev`` and ``tmp -> last`` are two renames (a crash between them leaves the
    newest good checkpoint as ``checkpoint_prev.pt``, which resume falls back to).

    Raises:
        TrainingError: the file system is full (names the folder and the bytes needed).
    """
    task_dir = Path(task_dir)
    last = task_dir / CHECKPOINT_LAST
    with atomic_path(last) as tmp:  # tmp -> last when the block ends
        _save(state, tmp, last)
        if last.exists():
            os.replace(last, task_dir / CHECKPOINT_PREV)
    _fsync_dir(task_dir)


def _save(state: dict[str, Any], tmp: Path, path: Path) -> None:
    """``state`` saved and fsynced at ``tmp`` (the temporary name of ``path``).

    Raises:
        TrainingError: the file system is full.
    """
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except Exception as exc:
        if find_no_space(exc) is not None:
            raise TrainingError(no_space_message(path.parent, path.name, tensor_bytes(state)), hint=NO_SPACE_HINT) from exc
        raise


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Resumable:
    """What :func:`find_resumable` found.

    Attributes:
        checkpoint: the checkpoint dict to resume from, or ``None`` to start at epoch 1.
        path: the file it was read from (``checkpoint_last.pt`` or ``checkpoint_prev.pt``).
        damaged: checkpoint files that were read but do not parse (to move aside).
        stale_reasons: why the task's earlier files do not belong to this run (``[]``: they do,
            or there are none); non-empty means :data:`RUN_FILES` are moved aside.
    """

    checkpoint: dict[str, Any] | None = None
    path: Path | None = None
    damaged: list[Path] = field(default_factory=list)
    stale_reasons: list[str] = field(default_factory=list)


def find_resumable(task_dir: Path, fingerprint: dict[str, Any]) -> Resumable:
    """Pick the checkpoint to resume from: ``checkpoint_last.pt``, else ``checkpoint_prev.pt``
    (when the last is missing or damaged), if its fingerprint is ``fingerprint``.

    Damaged means the file's bytes were read but are not a checkpoint (truncated, garbage: the
    unpickling or zip errors ``torch.load`` raises). A file that cannot be read at all is not
    damaged, and taking it for damaged would throw the run's progress away: that fails the run.

    Reads only (every rank may call it); :func:`move_aside` acts on the answer.

    Returns:
        The :class:`Resumable`; each damaged file and a mismatch are logged with the reason.

    Raises:
        CheckpointReadError: a checkpoint exists but reading it failed (an ``OSError`` other than
            "not found": EIO, ESTALE, EACCES, a directory in its place; or ``MemoryError``).
            Nothing is moved; a retry of the task resumes from them.
    """
    task_dir = Path(task_dir)
    found = Resumable()
    for name in (CHECKPOINT_LAST, CHECKPOINT_PREV):
        path = task_dir / name
        data = _read_checkpoint_bytes(path)
        if data is None:
            continue
        try:
            checkpoint = _parse_checkpoint(data)
        except MemoryError as exc:
            raise CheckpointReadError(path, exc) from exc
        except Exception as exc:  # the bytes were read and do not parse: damage from outside (written atomically)
            log.warning("checkpoint %s is damaged (%s: %s); trying the previous checkpoint", path, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            found.damaged.append(path)
            continue
        changes = fingerprint_changes(checkpoint.get("fingerprint"), fingerprint)
        if changes:
            found.stale_reasons = [f"{path.name} belongs to another run: " + "; ".join(changes)]
            return found
        found.checkpoint, found.path = checkpoint, path
        return found
    if found.damaged:
        found.stale_reasons = ["no readable checkpoint: " + ", ".join(p.name for p in found.damaged)]
    return found


def _read_checkpoint_bytes(path: Path) -> bytes | None:
    """The whole file, or ``None`` when there is none.

    Read before parsing so that an error here is the file system's, never the format's:
    ``torch.load`` of a path raises ``OSError(EINVAL)`` for some truncated files. The price: the
    checkpoint is in memory twice (bytes and tensors) while it is parsed.

    Raises:
        CheckpointReadError: any other ``OSError`` (EIO, ESTALE, EACCES, a directory), ``MemoryError``.
    """
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, MemoryError) as exc:
        raise CheckpointReadError(path, exc) from exc


def _parse_checkpoint(data: bytes) -> dict[str, Any]:
    """The checkpoint dict in ``data`` (a ``torch.save`` file's bytes).

    Raises:
        ValueError: ``data`` is a pickle but not a PyTrain checkpoint; anything ``torch.load``
            raises for bytes that are not a checkpoint (``RuntimeError`` from the zip reader,
            ``pickle.UnpicklingError``, ``EOFError``, ``ValueError``...).
    """
    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError("not a PyTrain checkpoint")
    return checkpoint


def move_aside(task_dir: Path, found: Resumable) -> Path | None:
    """Move what ``found`` says does not belong to the run into ``task_dir/stale-<UTC time>/``.

    With ``found.stale_reasons``: every file of :data:`RUN_FILES` (the run starts over at epoch 1);
    otherwise only ``found.damaged``. A ``reason.txt`` in the folder says why. Rank 0 only.

    Returns:
        The folder the files went to, or ``None`` when nothing was moved.
    """
    task_dir = Path(task_dir)
    if found.stale_reasons:
        moving = [task_dir / name for name in RUN_FILES if (task_dir / name).exists()]
    else:
        moving = list(found.damaged)
    if not moving:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = task_dir / f"stale-{stamp}"
    n = 1
    while folder.exists():
        n += 1
        folder = task_dir / f"stale-{stamp}-{n}"
    folder.mkdir()
    reasons = found.stale_reasons or [f"damaged: {p.name}" for p in found.damaged]
    (folder / "reason.txt").write_text("\n".join(reasons) + "\n", encoding="utf-8")
    for path in moving:
        os.replace(path, folder / path.name)
    return folder
