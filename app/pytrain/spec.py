"""The contracts between the orchestrator, the training entrypoint, publishing and the client.

A task folder ``model_tasks/<task_dir_name>/`` (``task-<id>-<model>-<first 8 hex of the row's uid>``,
:func:`task_dir_name`) is the only thing the orchestrator and the training run share (it is
bind-mounted into the training container). The uid makes the name unique per task row, so a task
row never finds another row's folder, even after the database was reset and ids start again at 1.
Its files:

=====================  ========================  =============================================
file                   written by                what
=====================  ========================  =============================================
``task.json``          orchestrator              :class:`TaskSpec`
``manifest.csv``       orchestrator              one row per video: ``path,label,split``
                                                 (``path`` relative to the sources root)
``unlisted.json``      orchestrator              ``[{"path": ..., "reason": ...}]``: files left
                                                 out of the manifest (name not UTF-8); training
                                                 lists them first in ``skipped.json``
``progress.jsonl``     training                  one :class:`ProgressRecord` per line (JSON)
``train.log``          runner                    stdout and stderr of the training run
``checkpoint_last.pt`` training                  for resume after a crash; carries the run's
                                                 fingerprint (:mod:`pytrain.training.checkpoints`)
``checkpoint_prev.pt`` training                  the checkpoint ``checkpoint_last.pt`` replaced:
                                                 resume falls back to it when the last one is
                                                 unreadable (truncated)
``checkpoint_best.pt`` training                  best validation loss
``run.lock``           training                  ``flock``-ed by the run that trains in the folder;
                                                 holds that run's host and pid (kept after the run:
                                                 its presence does not mean a run holds it)
``stale-<time>/``      training                  files of a run whose fingerprint no longer matches
                                                 the task (moved aside, never deleted)
``model.onnx``         training (export)         raw uint8 frames in, probabilities out
``tensor_spec.json``   training (export)         :class:`TensorSpec`, read by publishing,
                                                 the Triton config, the INI config and the client
``metrics.json``       training                  history, test metrics, confusion matrices
``skipped.json``       training                  ``[{"path": ..., "reason": ...}]``
``history.png`` etc.   training                  plots
``scan.json``          training                  pre-scan of every video (readable or why
                                                 not), reused by a resumed run
``clip_cache/``        training                  decoded clips, only with option ``cache``
=====================  ========================  =============================================
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import typing
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError
from pytrain.sampling import ClipSampling, check_sampling
from pytrain.task_columns import default as column_default

TASK_SPEC = "task.json"
MANIFEST = "manifest.csv"
PROGRESS = "progress.jsonl"
TRAIN_LOG = "train.log"
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_PREV = "checkpoint_prev.pt"
RUN_LOCK = "run.lock"
CLIP_CACHE = "clip_cache"
MODEL_ONNX = "model.onnx"
TENSOR_SPEC = "tensor_spec.json"
METRICS = "metrics.json"
SKIPPED = "skipped.json"
UNLISTED = "unlisted.json"
PLOTS = ("history.png", "confusion_train.png", "confusion_test.png")

MANIFEST_COLUMNS = ("path", "label", "split")
SPLITS = ("train", "val", "test")

# PyTrain's historical tensor names: existing PyTrain clients send ``time_distributed_input``
# and read ``dense`` (the names Keras gave the TimeDistributed input and the final Dense layer).
DEFAULT_INPUT_NAME = "time_distributed_input"
DEFAULT_OUTPUT_NAME = "dense"
OTHER_CLASS = "Other"


def task_dir_name(task_id: int, model_name: str, uid: uuid.UUID | str) -> str:
    """Folder name of a task under ``model_tasks/``: ``task-<id>-<model_name>-<uid8>``.

    Args:
        task_id: the ``training_tasks`` row's id.
        model_name: the row's model name.
        uid: the row's ``uid`` (a random UUID, migration 0005), as a ``UUID`` or its text; its
            first 8 hex digits end the name, so a row never reuses the folder of another row with
            the same id and model (a database reset starts ids at 1 again).

    Example: ``task_dir_name(1, "kitchen", "3f2b8c1e-...")`` -> ``"task-1-kitchen-3f2b8c1e"``.

    Raises:
        ConfigurationError: ``uid`` is not a UUID.
    """
    try:
        hex8 = (uid if isinstance(uid, uuid.UUID) else uuid.UUID(str(uid))).hex[:8]
    except ValueError as exc:
        raise ConfigurationError(f"task {task_id}: uid {uid!r} is not a UUID", hint="use the training_tasks row's uid column") from exc
    return f"task-{task_id}-{model_name}-{hex8}"


@contextmanager
def atomic_path(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path``: write it inside the ``with`` block; on success it replaces
    ``path`` with one ``os.replace`` (so ``path`` appears whole or not at all), on error it is removed.

    Args:
        path: the final file.
        suffix: the temporary file's suffix, for writers that look at it (``.png``, ``.npy``).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that the file appears whole or not at all.

    The temporary file (:func:`atomic_path`) is fsynced before it replaces ``path``.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as pretty JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_unlisted(task_dir: Path, unlisted: dict[str, str]) -> None:
    """Write ``unlisted.json`` (``[{"path", "reason"}]`` from ``{path: reason}``, maybe empty) atomically."""
    write_json_atomic(Path(task_dir) / UNLISTED, [{"path": path, "reason": reason} for path, reason in unlisted.items()])


def read_unlisted(task_dir: Path) -> list[dict[str, str]]:
    """The files the orchestrator left out of the manifest (``unlisted.json``); ``[]`` without the file
    (a task folder prepared by an older PyTrain)."""
    try:
        return json.loads((Path(task_dir) / UNLISTED).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []


def _read_json(path: Path, what: str, missing_hint: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigurationError(f"no {what} at {path}", hint=missing_hint) from exc
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc


def _from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigurationError(f"{source}: unknown field(s) {unknown}", hint=f"known fields: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigurationError(f"{source}: {exc}") from exc


class _JsonFile:
    """``save``/``load`` of a dataclass kept as one JSON file in a folder (``task.json``,
    ``tensor_spec.json``): written atomically, read with unknown fields refused."""

    FILE_NAME: typing.ClassVar[str]
    #: What the file is, and how it is normally made, for the "missing" error.
    WHAT: typing.ClassVar[str]
    MISSING_HINT: typing.ClassVar[str]
    #: Keys ``to_dict`` adds that are derived from the fields (not constructor arguments).
    DERIVED_KEYS: typing.ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what the file holds)."""
        return asdict(self)  # type: ignore[call-overload]

    def save(self, folder: Path) -> Path:
        """Write the file atomically into ``folder``; returns its path."""
        path = Path(folder) / self.FILE_NAME
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: Path) -> Any:
        """Read the file from a folder (or the file itself).

        Raises:
            ConfigurationError: the file is missing, not JSON, or has unknown/missing fields.
        """
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / cls.FILE_NAME
        data = _read_json(path, cls.WHAT, cls.MISSING_HINT)
        for key in cls.DERIVED_KEYS:
            data.pop(key, None)
        return _from_dict(cls, data, str(path))


@dataclass(frozen=True)
class TaskSpec(_JsonFile):
    """Everything the training entrypoint needs, written by the orchestrator to ``task.json``.

    Field names and defaults are those of the ``training_tasks`` table
    (:data:`pytrain.task_columns.TASK_COLUMNS`, the one place they are written).

    Attributes:
        task_id: id of the ``training_tasks`` row.
        uid: the row's ``uid`` (UUID text): names the task folder (:func:`task_dir_name`) and is
            part of the checkpoint fingerprint, so a checkpoint of another row is never resumed.
            ``""`` in ``task.json`` files written before the column existed.
        model_name: ``[A-Za-z0-9_-]{1,64}``; the Triton model name.
        class_list: sorted class labels; index ``i`` is logit ``i``.
        architecture: model name understood by :mod:`pytrain.training.models` (e.g. ``tiny``,
            ``r3d_18``).
        num_frames: frames per clip (T).
        height, width: frame size in pixels after resizing.
        epochs: maximum number of epochs (early stopping may end sooner).
        batch_size: clips per optimisation step.
        shuffle_size: PyTrain's shuffle-buffer size in clips.
        learning_rate: peak AdamW learning rate.
        seed: seed for the split, sampling jitter, augmentation and initialisation.
        pretrained: use pretrained weights from the local torch cache (error when absent).
        input_name, output_name: ONNX / Triton tensor names.
        sources_root: the sources root as the orchestrator saw it; the training entrypoint's
            ``--sources-root`` overrides it (a container mounts the sources elsewhere).
        sources, classes, include_other: the row's dataset and class selection (bookkeeping: the
            class list above is what they resolved to).
        train_fraction, val_fraction, test_fraction: the row's split fractions (bookkeeping: the
            split itself is ``manifest.csv``).
        folders: ``{label: [dataset/folder, ...]}``, the folders each class was resolved from.
        split_counts: ``{split: {label: clips}}`` of ``manifest.csv``.
        sampling, frame_interval, num_clips, test_clips: clip sampling (the columns' meanings are in
            :data:`pytrain.task_columns.TASK_COLUMNS`).
        nodes: nodes of a Slurm run (1 elsewhere).
        extra: the row's ``options``: training settings beyond the table's columns
            (:class:`pytrain.task_options.TrainConfig`).
    """

    FILE_NAME = TASK_SPEC
    WHAT = "task spec"
    MISSING_HINT = "the orchestrator writes it; pass the task folder"

    task_id: int
    model_name: str
    class_list: list[str]
    architecture: str = column_default("architecture")
    num_frames: int = column_default("num_frames")
    height: int = column_default("height")
    width: int = column_default("width")
    epochs: int = column_default("epochs")
    batch_size: int = column_default("batch_size")
    shuffle_size: int = column_default("shuffle_size")
    learning_rate: float = column_default("learning_rate")
    seed: int = column_default("seed")
    pretrained: bool = column_default("pretrained")
    input_name: str = DEFAULT_INPUT_NAME
    output_name: str = DEFAULT_OUTPUT_NAME
    sources_root: str = ""
    sources: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    include_other: bool = column_default("include_other")
    train_fraction: float = column_default("train_fraction")
    val_fraction: float = column_default("val_fraction")
    test_fraction: float = column_default("test_fraction")
    folders: dict[str, list[str]] = field(default_factory=dict)
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    sampling: str = column_default("sampling")
    frame_interval: int = column_default("frame_interval")
    num_clips: int = column_default("num_clips")
    test_clips: int = column_default("test_clips")
    nodes: int = column_default("nodes")
    extra: dict[str, Any] = field(default_factory=dict)
    uid: str = ""

    def __post_init__(self) -> None:
        if len(self.class_list) < 2:
            raise ConfigurationError(
                f"task {self.task_id}: class_list {self.class_list} has fewer than 2 classes",
                hint="select at least two classes, or set include_other",
            )
        if self.num_frames < 1 or self.height < 1 or self.width < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigurationError(f"task {self.task_id}: num_frames, height, width, epochs and batch_size must be >= 1")


@dataclass(frozen=True)
class TensorSpec(_JsonFile):
    """The one description of the served model's tensors, saved as ``tensor_spec.json``.

    The ONNX export writes it; the Triton ``config.pbtxt``, ``configs/cpu.pbtxt``, the PyTrain
    INI config, ``labels.txt`` and the client are all generated from it.

    Input ``input_name``: ``(N, num_frames, height, width, 3)`` uint8 RGB frames, N dynamic.
    Output ``output_name``: ``(N, len(class_list))`` float32 class probabilities (softmax).

    ``clip_seconds`` is the time one input clip spans, seconds: in ``uniform`` sampling the training
    clips' typical duration (the median over the training split: training samples ``num_frames``
    over a whole clip); in ``dense`` sampling ``num_frames * frame_interval`` frames at the training
    videos' median frame rate. A live stream is sampled at ``num_frames / clip_seconds`` frames per
    second (:mod:`pytrain.client.stream`). ``None`` for models exported before PyTrain recorded it
    (their ``tensor_spec.json`` still loads).

    ``sampling``, ``frame_interval`` and ``test_clips`` say how a video becomes the input clips
    (:mod:`pytrain.sampling`; the client samples the same way and averages ``test_clips`` views).
    Specs written before PyTrain recorded them load as ``uniform``, 1, 1: what those models were
    trained with.

    Raises:
        ConfigurationError: an unknown sampling mode or out-of-range counts
            (:func:`pytrain.sampling.check_sampling`).
    """

    FILE_NAME = TENSOR_SPEC
    WHAT = "tensor spec"
    MISSING_HINT = "the training run writes it beside model.onnx"
    DERIVED_KEYS = ("input_shape", "output_shape")

    class_list: list[str]
    num_frames: int
    height: int
    width: int
    input_name: str = DEFAULT_INPUT_NAME
    output_name: str = DEFAULT_OUTPUT_NAME
    input_dtype: str = "uint8"
    output_dtype: str = "float32"
    channels: int = 3
    architecture: str = ""
    clip_seconds: float | None = None
    sampling: str = column_default("sampling")
    frame_interval: int = column_default("frame_interval")
    test_clips: int = column_default("test_clips")

    def __post_init__(self) -> None:
        check_sampling(self.sampling, self.frame_interval, test_clips=self.test_clips)

    @property
    def clip_sampling(self) -> ClipSampling:
        """How clips are cut from a video for this model (one training clip per video: the
        client never trains)."""
        return ClipSampling(self.sampling, self.frame_interval, test_clips=self.test_clips)

    @property
    def input_shape(self) -> list[int]:
        """Input shape with ``-1`` for the dynamic batch axis."""
        return [-1, self.num_frames, self.height, self.width, self.channels]

    @property
    def output_shape(self) -> list[int]:
        """Output shape with ``-1`` for the dynamic batch axis."""
        return [-1, len(self.class_list)]

    @property
    def num_classes(self) -> int:
        """C, the number of classes (the output's last dimension)."""
        return len(self.class_list)

    def to_dict(self) -> dict[str, Any]:
        """The fields plus ``input_shape``/``output_shape`` (``-1`` = batch), as in ``tensor_spec.json``."""
        data = super().to_dict()
        data["input_shape"] = self.input_shape
        data["output_shape"] = self.output_shape
        return data


# ---------------------------------------------------------------------------------------------
# manifest.csv: the one reader and the one writer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    """One line of ``manifest.csv``.

    Attributes:
        path: the video, relative to the sources root (``/``-separated); it never leaves the root.
        label: the class name (one of the task's ``class_list`` when the orchestrator wrote it).
        split: ``train``, ``val`` or ``test`` (:data:`SPLITS`).
    """

    path: str
    label: str
    split: str


def write_manifest(rows: Iterable[ManifestRow], task_dir: Path) -> Path:
    """Write ``manifest.csv`` (header :data:`MANIFEST_COLUMNS`, then ``rows`` in order) into
    ``task_dir`` atomically; returns its path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    writer.writerows((row.path, row.label, row.split) for row in rows)
    path = Path(task_dir) / MANIFEST
    write_text_atomic(path, buffer.getvalue())
    return path


def read_manifest(task_dir: Path) -> list[ManifestRow]:
    """Read ``manifest.csv`` from ``task_dir``, rows in file order.

    Whether a row's label is in the class list and its file exists is the caller's business
    (training skips such rows); this checks the file's shape only.

    Raises:
        ConfigurationError: no manifest; columns other than :data:`MANIFEST_COLUMNS`; a split not
            in :data:`SPLITS`; a path that is absolute or leaves the sources root (checked
            lexically, not with ``resolve()``: datasets symlinked into the root are fine). The
            message names the file and line.
    """
    path = Path(task_dir) / MANIFEST
    try:
        handle = path.open(newline="", encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigurationError(f"no manifest at {path}", hint="the orchestrator writes it beside task.json") from exc
    rows: list[ManifestRow] = []
    with handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise ConfigurationError(f"{path}: columns {reader.fieldnames}, expected {list(MANIFEST_COLUMNS)}")
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            rel, split = row["path"], row["split"]
            if split not in SPLITS:
                raise ConfigurationError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
            normal = os.path.normpath(rel)
            if os.path.isabs(rel) or normal == ".." or normal.startswith(".." + os.sep):
                raise ConfigurationError(f"{path}:{line}: path {rel!r} leaves the sources root")
            rows.append(ManifestRow(path=rel, label=row["label"], split=split))
    return rows


# ---------------------------------------------------------------------------------------------
# progress.jsonl: the progress record
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressRecord:
    """One line of ``progress.jsonl``, and the latest progress a task row's ``progress`` holds.

    Training appends one record per event; the orchestrator folds the file
    (:func:`read_progress_record`) into the row at every heartbeat; :func:`format_progress` makes
    the human line. Every field is optional: ``None`` means "not in the line". The JSON keys are
    the field names, unchanged since the format existed only as prose (users' scripts read them).
    Values are type-checked (``ConfigurationError``; an ``int`` is accepted for a ``float``, a
    ``bool`` never for a number).

    Which fields each ``event`` carries (``event`` and ``time`` are on every line):

    - ``start``: ``epochs``, ``resumed_from_epoch``, ``device``, ``world_size``, ``clips``,
      ``skipped``, ``architecture``;
    - ``epoch``: ``epoch``, ``epochs``, ``train_loss``, ``train_accuracy``, ``val_loss``,
      ``val_accuracy``, ``clips_per_second``, ``lr``, ``seconds`` (``val_*`` are JSON ``null``
      when the task has no validation split);
    - ``done``: ``test_accuracy``, ``top_k``, ``epochs_run``, ``best_epoch``.

    Attributes:
        event: ``start`` (a run began or resumed), ``epoch`` (an epoch ended), ``done`` (the model
            is exported and ``metrics.json`` written).
        time: when the line was written, Unix seconds (float).
        epoch: the epoch that just ended, counted from 1.
        epochs: the task's maximum number of epochs (early stopping may end sooner).
        train_loss: mean label-smoothed cross-entropy over the epoch's training clips (nats).
        train_accuracy: fraction (0..1) of the epoch's augmented training clips classified right.
        val_loss, val_accuracy: the same on the validation split, in evaluation mode.
        clips_per_second: training clips per second over the epoch, all ranks together, waiting
            for data included.
        lr: the learning rate of the first parameter group at the end of the epoch.
        seconds: wall-clock seconds of the epoch's training pass (validation not included).
        resumed_from_epoch: 0 for a fresh run, else the checkpoint's epoch the run continues after.
        device: the torch device of rank 0 (``cpu``, ``cuda:0``).
        world_size: training processes (``torchrun`` ranks).
        clips: ``{split: clips}`` left after the bad files were skipped.
        skipped: how many manifest rows were skipped (``skipped.json`` says why).
        architecture: the model's architecture name.
        test_accuracy: fraction (0..1) of test clips classified right by the best checkpoint.
        top_k: ``{"top1": .., "top2": .., ...}`` test top-k accuracies (0..1).
        epochs_run: epochs trained, all runs of the task together.
        best_epoch: the epoch whose checkpoint was exported.
        extra: keys this version does not know (a newer writer's): kept, and written back by
            :meth:`to_dict` unchanged, so a row never loses them.
        null_keys: known keys that were an explicit JSON ``null`` in the line; written back as
            ``null``, so ``ProgressRecord.from_dict(d).to_dict() == d``.
    """

    event: str | None = None
    time: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    clips_per_second: float | None = None
    lr: float | None = None
    seconds: float | None = None
    resumed_from_epoch: int | None = None
    device: str | None = None
    world_size: int | None = None
    clips: dict[str, int] | None = None
    skipped: int | None = None
    architecture: str | None = None
    test_accuracy: float | None = None
    top_k: dict[str, float] | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    null_keys: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        for name, kind in _PROGRESS_TYPES.items():
            value = getattr(self, name)
            if value is not None and not _progress_type_ok(kind, value):
                raise ConfigurationError(f"progress key {name!r} holds {value!r}, not a {kind.__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the fields that are set (and those in ``null_keys``, as ``None``) in
        field order, then ``extra``."""
        data: dict[str, Any] = {}
        for name in _PROGRESS_TYPES:
            value = getattr(self, name)
            if value is not None or name in self.null_keys:
                data[name] = value
        data.update((key, value) for key, value in self.extra.items() if key not in data)
        return data

    def to_json(self) -> str:
        """One ``progress.jsonl`` line, without the newline (values JSON cannot hold become strings)."""
        return json.dumps(self.to_dict(), default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProgressRecord":
        """Read a JSON object; unknown keys go to ``extra``, explicit nulls to ``null_keys``.

        Raises:
            ConfigurationError: ``data`` is not an object, or a known key has the wrong type
                (e.g. ``"epoch": "3"``; numbers are never coerced, as in the constructor).
        """
        if not isinstance(data, dict):
            raise ConfigurationError(f"a progress record is a JSON object, not {type(data).__name__}")
        known = {key: value for key, value in data.items() if key in _PROGRESS_TYPES and value is not None}
        extra = {key: value for key, value in data.items() if key not in _PROGRESS_TYPES}
        nulls = frozenset(key for key, value in data.items() if key in _PROGRESS_TYPES and value is None)
        return cls(**known, extra=extra, null_keys=nulls)

    @classmethod
    def from_json(cls, line: str) -> "ProgressRecord":
        """Read one ``progress.jsonl`` line.

        Raises:
            ConfigurationError: not JSON (e.g. a line still being written), or see :meth:`from_dict`.
        """
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"a progress line is not JSON: {exc}") from exc
        return cls.from_dict(data)

    def overlay(self, later: "ProgressRecord") -> "ProgressRecord":
        """This record with every key ``later`` carries laid over it (``{**self, **later}``)."""
        return ProgressRecord.from_dict({**self.to_dict(), **later.to_dict()})


def _progress_types() -> dict[str, type]:
    """``{field: the type its value must have}`` from :class:`ProgressRecord`'s annotations."""
    hints = typing.get_type_hints(ProgressRecord)
    types: dict[str, type] = {}
    for f in fields(ProgressRecord):
        if f.name in ("extra", "null_keys"):
            continue
        (kind,) = [arg for arg in typing.get_args(hints[f.name]) if arg is not type(None)]
        types[f.name] = typing.get_origin(kind) or kind
    return types


def _progress_type_ok(kind: type, value: Any) -> bool:
    if isinstance(value, bool):  # JSON true/false are never numbers here
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


_PROGRESS_TYPES = _progress_types()


def fold_progress(records: Iterable[ProgressRecord]) -> ProgressRecord | None:
    """The latest progress: the last ``epoch`` record with every later record laid over it (so
    after ``done`` it keeps the last epoch's figures and gains the test metrics); records before
    the first ``epoch`` are laid over each other. ``None`` when there are no records."""
    latest: ProgressRecord | None = None
    for record in records:
        latest = record if latest is None or record.event == "epoch" else latest.overlay(record)
    return latest


def read_progress_record(task_dir: Path) -> ProgressRecord | None:
    """:func:`fold_progress` of ``task_dir/progress.jsonl``.

    Lines that do not parse (the line training is writing right now, bytes that are not UTF-8, or
    a known key of the wrong type) are skipped, so a reader running beside training never fails on
    them.

    Returns:
        The latest progress, or ``None`` when the file is missing or holds no record.

    Raises:
        OSError: the file exists but cannot be read (EIO, EACCES, a directory in its place).
    """
    try:
        data = (Path(task_dir) / PROGRESS).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    records = []
    for line in data.splitlines():
        try:
            records.append(ProgressRecord.from_json(line.decode("utf-8")))
        except (UnicodeDecodeError, ConfigurationError):
            continue
    return fold_progress(records)


def format_progress(record: ProgressRecord, *, brief: bool = False) -> str:
    """The one human progress line, e.g. ``epoch 3/10, loss 0.523, acc 0.81, val loss 0.612,
    val acc 0.75, 12.3 clips/s, lr 1.0e-03, test acc 0.75``.

    Figures the record lacks are left out (``""`` when it has none). ``brief`` keeps the epoch,
    the training loss and the validation and test accuracies (the ``pytrain tasks`` column).
    """
    figures = [  # (shown when brief, text or None)
        (True, None if record.epoch is None else f"epoch {record.epoch}" + ("" if record.epochs is None else f"/{record.epochs}")),
        (True, None if record.train_loss is None else f"loss {record.train_loss:.3f}"),
        (False, None if record.train_accuracy is None else f"acc {record.train_accuracy:.2f}"),
        (False, None if record.val_loss is None else f"val loss {record.val_loss:.3f}"),
        (True, None if record.val_accuracy is None else f"val acc {record.val_accuracy:.2f}"),
        (False, None if record.clips_per_second is None else f"{record.clips_per_second:.1f} clips/s"),
        (False, None if record.lr is None else f"lr {record.lr:.1e}"),
        (True, None if record.test_accuracy is None else f"test acc {record.test_accuracy:.2f}"),
    ]
    return ", ".join(text for in_brief, text in figures if text is not None and (in_brief or not brief))
