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
``metrics.json``       training                  :class:`MetricsRecord`: history, test metrics,
                                                 confusion matrices
``skipped.json``       training                  ``[{"path": ..., "reason": ...}]``
``history.png`` etc.   training                  plots
``scan.json``          training                  pre-scan of every video (readable or why
                                                 not), reused by a resumed run:
                                                 ``{path:`` :class:`ScanResult` ``}``
``clip_cache/``        training                  decoded clips, only with option ``cache``
=====================  ========================  =============================================

Each JSON file of a task folder has one record type, one reader and one writer, all here:
:class:`TaskSpec` (``load``/``save``), :class:`TensorSpec` (``load``/``save``), :class:`ManifestRow`
(:func:`read_manifest`/:func:`write_manifest`), :class:`ProgressRecord` (:func:`read_progress_records`,
:func:`read_progress_record`), :class:`MetricsRecord` (:func:`read_metrics`/:func:`write_metrics`) and :class:`ScanResult`
(:func:`read_scan`/:func:`write_scan`). Publishing saves the task row beside a version as
``results/<model>/<v>/task_row.json`` (:class:`PublishedTaskRow`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
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
from pytrain.task_columns import TASK_COLUMNS, check_class_count, check_values, columns_dataclass
from pytrain.task_columns import default as column_default

log = logging.getLogger(__name__)

TASK_SPEC = "task.json"
MANIFEST = "manifest.csv"
PROGRESS = "progress.jsonl"
TRAIN_LOG = "train.log"
#: The environment variable a runner sets to name the node a training process runs on (the Ray
#: node id); metrics.json's ``nodes`` record it (else Slurm's node name, else the host name).
NODE_NAME_VARIABLE = "PYTRAIN_NODE_NAME"
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_PREV = "checkpoint_prev.pt"
RUN_LOCK = "run.lock"
CLIP_CACHE = "clip_cache"
MODEL_ONNX = "model.onnx"
TENSOR_SPEC = "tensor_spec.json"
METRICS = "metrics.json"
#: A version's task row in ``results/<model>/<v>/`` (:class:`PublishedTaskRow`), and its name before
#: it had its own (it shared ``task.json`` with the task folder's :class:`TaskSpec`).
TASK_ROW = "task_row.json"
TASK_ROW_LEGACY = "task.json"
#: The pre-scan's results in a task folder (:func:`read_scan`, :func:`write_scan`).
SCAN = "scan.json"
SKIPPED = "skipped.json"
UNLISTED = "unlisted.json"
DATASET_FINGERPRINT = "dataset_fingerprint.json"
PLOTS = ("history.png", "confusion_train.png", "confusion_test.png")

MANIFEST_COLUMNS = ("path", "label", "split")
#: The manifest's optional last column: each file's content id (the video catalog's digest,
#: :func:`pytrain.sources.catalog.file_content_id`), the key of the shared clip cache and of
#: training proxies; empty for a file the catalog does not know (or in a manifest written before it).
MANIFEST_CONTENT = "content"
#: The prefix of a content id that is the video catalog's digest (``catalog:<content_hash>``).
CATALOG_PREFIX = "catalog:"
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
        return cls.from_dict(_read_json(path, cls.WHAT, cls.MISSING_HINT), str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> Any:
        """The record of the file's JSON object (``DERIVED_KEYS`` ignored); ``source`` names it in errors.

        Raises:
            ConfigurationError: not an object, unknown or missing fields, or a field's value refused.
        """
        if not isinstance(data, dict):
            raise ConfigurationError(f"{source}: a {cls.WHAT} is a JSON object, not {type(data).__name__}")
        return _from_dict(cls, {key: value for key, value in data.items() if key not in cls.DERIVED_KEYS}, source)


#: The fields of :class:`TaskSpec` that are columns of ``training_tasks`` (every column training
#: reads: :attr:`pytrain.task_columns.TaskColumn.training`), with the database's defaults.
TaskColumnFields = columns_dataclass(
    "TaskColumnFields", (c for c in TASK_COLUMNS if c.training), defaults=True, module=__name__,
    doc="The task row's columns that training reads, with the database defaults (pytrain.task_columns.TASK_COLUMNS).",
)


@dataclass(frozen=True, kw_only=True)
class TaskSpec(_JsonFile, TaskColumnFields):  # type: ignore[misc,valid-type]  # a base made from the column table
    """Everything the training entrypoint needs, written by the orchestrator to ``task.json``.

    The row's columns that training reads are fields made from the column table
    (:class:`TaskColumnFields`: ``model_name``, ``architecture``, ``num_frames``, ``height``,
    ``width``, ``epochs``, ``batch_size``, ``shuffle_size``, ``learning_rate``, ``seed``,
    ``pretrained``, ``sources``, ``classes``, ``include_other``, the fractions, ``sampling``,
    ``frame_interval``, ``num_clips``, ``test_clips``, ``nodes``, ...; their meaning, default and
    bounds are in :data:`pytrain.task_columns.TASK_COLUMNS`, the one place they are written). A
    new column there is a new field here. ``sources``, ``classes``, ``include_other`` and the
    fractions are bookkeeping: the class list and ``manifest.csv`` below are what they resolved to.
    All fields are keyword-only.

    The fields that are not columns:

    Attributes:
        task_id: id of the ``training_tasks`` row.
        uid: the row's ``uid`` (UUID text): names the task folder (:func:`task_dir_name`) and is
            part of the checkpoint fingerprint, so a checkpoint of another row is never resumed.
            ``""`` in ``task.json`` files written before the column existed.
        class_list: sorted class labels; index ``i`` is logit ``i``.
        input_name, output_name: ONNX / Triton tensor names.
        sources_root: the sources root as the orchestrator saw it; the training entrypoint's
            ``--sources-root`` overrides it (a container mounts the sources elsewhere).
        folders: ``{label: [dataset/folder, ...]}``, the folders each class was resolved from.
        split_counts: ``{split: {label: clips}}`` of ``manifest.csv``.
        extra: the row's ``options``: training settings beyond the table's columns
            (:class:`pytrain.task_options.TrainConfig`).

    Raises:
        ConfigurationError: fewer than two classes, or a number outside its column's bounds
            (:func:`pytrain.task_columns.check_values`; names are not checked here: the runners
            check what they paste into a command).
    """

    FILE_NAME = TASK_SPEC
    WHAT = "task spec"
    MISSING_HINT = "the orchestrator writes it; pass the task folder"

    task_id: int
    class_list: list[str]
    input_name: str = DEFAULT_INPUT_NAME
    output_name: str = DEFAULT_OUTPUT_NAME
    sources_root: str = ""
    folders: dict[str, list[str]] = field(default_factory=dict)
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    uid: str = ""

    def __post_init__(self) -> None:
        check_class_count(self.class_list, what=f"task {self.task_id}: class_list")
        check_values({name: getattr(self, name) for name in TASK_SPEC_COLUMNS}, patterns=False)


#: The names of :class:`TaskSpec`'s column fields, in table order: what ``task.json`` copies from
#: the row as it is.
TASK_SPEC_COLUMNS = tuple(f.name for f in fields(TaskColumnFields))


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


@dataclass(frozen=True)
class DatasetFingerprint(_JsonFile):
    """The digest of a task's data, saved as ``dataset_fingerprint.json`` by the orchestrator
    when it prepares the task folder (:func:`pytrain.sources.catalog.dataset_fingerprint` says
    exactly what it covers); experiment tracking logs it as the param ``dataset_fingerprint``.

    Attributes:
        digest: sha256 (hex) over the manifest's sorted ``split,path,content`` lines.
        files: the manifest's files.
        by_stamp: how many of them had no current catalog digest and entered by (size, mtime).
    """

    FILE_NAME = DATASET_FINGERPRINT
    WHAT = "dataset fingerprint"
    MISSING_HINT = "the orchestrator writes it when it prepares the task folder"

    digest: str
    files: int
    by_stamp: int


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
        content: the file's content id (:data:`MANIFEST_CONTENT`); ``""`` when not known.
    """

    path: str
    label: str
    split: str
    content: str = ""


def write_manifest(rows: Iterable[ManifestRow], task_dir: Path) -> Path:
    """Write ``manifest.csv`` (header :data:`MANIFEST_COLUMNS`, plus :data:`MANIFEST_CONTENT` when a
    row has a content id, then ``rows`` in order) into ``task_dir`` atomically; returns its path."""
    rows = list(rows)
    with_content = any(row.content for row in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((*MANIFEST_COLUMNS, MANIFEST_CONTENT) if with_content else MANIFEST_COLUMNS)
    writer.writerows((row.path, row.label, row.split, row.content) if with_content else (row.path, row.label, row.split) for row in rows)
    path = Path(task_dir) / MANIFEST
    write_text_atomic(path, buffer.getvalue())
    return path


def read_manifest(task_dir: Path) -> list[ManifestRow]:
    """Read ``manifest.csv`` from ``task_dir``, rows in file order.

    Whether a row's label is in the class list and its file exists is the caller's business
    (training skips such rows); this checks the file's shape only.

    Raises:
        ConfigurationError: no manifest; columns other than :data:`MANIFEST_COLUMNS` (and the
            optional :data:`MANIFEST_CONTENT`); a split not
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
        if tuple(reader.fieldnames or ()) not in (MANIFEST_COLUMNS, (*MANIFEST_COLUMNS, MANIFEST_CONTENT)):
            raise ConfigurationError(f"{path}: columns {reader.fieldnames}, expected {list(MANIFEST_COLUMNS)} "
                                     f"(and optionally {MANIFEST_CONTENT!r})")
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            rel, split = row["path"], row["split"]
            if split not in SPLITS:
                raise ConfigurationError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
            normal = os.path.normpath(rel)
            if os.path.isabs(rel) or normal == ".." or normal.startswith(".." + os.sep):
                raise ConfigurationError(f"{path}:{line}: path {rel!r} leaves the sources root")
            rows.append(ManifestRow(path=rel, label=row["label"], split=split, content=row.get(MANIFEST_CONTENT) or ""))
    return rows


# ---------------------------------------------------------------------------------------------
# open records: JSON objects whose keys are all optional (progress, metrics, the task row copy)
# ---------------------------------------------------------------------------------------------


class _OpenRecord:
    """A JSON object read into a frozen dataclass whose fields are all optional.

    ``None`` means "not in the object". Known keys are type-checked (``ConfigurationError``; an
    ``int`` is accepted for a ``float``, a ``bool`` never for a number; the contents of lists and
    dicts are not checked); unknown keys (a newer writer's) are kept in ``extra`` and explicit
    ``null`` values in ``null_keys``, so ``cls.from_dict(d).to_dict() == d`` and a reader never loses
    a key. A subclass declares its fields, then ``extra`` and ``null_keys`` (see
    :class:`ProgressRecord`), and names itself in ``KIND`` (used in error messages).
    """

    #: What the record is, for error messages (``"progress"``, ``"metrics"``).
    KIND: typing.ClassVar[str]

    extra: dict[str, Any]
    null_keys: frozenset[str]

    def __post_init__(self) -> None:
        for name, kind in _record_types(type(self)).items():
            value = getattr(self, name)
            if value is not None and not _record_type_ok(kind, value):
                raise ConfigurationError(f"{self.KIND} key {name!r} holds {value!r}, not a {kind.__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: the fields that are set (and those in ``null_keys``, as ``None``) in
        field order, then ``extra``."""
        data: dict[str, Any] = {}
        for name in _record_types(type(self)):
            value = getattr(self, name)
            if value is not None or name in self.null_keys:
                data[name] = value
        data.update((key, value) for key, value in self.extra.items() if key not in data)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Read a JSON object; unknown keys go to ``extra``, explicit nulls to ``null_keys``.

        Raises:
            ConfigurationError: ``data`` is not an object, or a known key has the wrong type
                (e.g. ``"epoch": "3"``; numbers are never coerced, as in the constructor).
        """
        if not isinstance(data, dict):
            raise ConfigurationError(f"a {cls.KIND} record is a JSON object, not {type(data).__name__}")
        types = _record_types(cls)
        known = {key: value for key, value in data.items() if key in types and value is not None}
        extra = {key: value for key, value in data.items() if key not in types}
        nulls = frozenset(key for key, value in data.items() if key in types and value is None)
        return cls(**known, extra=extra, null_keys=nulls)  # type: ignore[call-arg]


@functools.cache
def _record_types(cls: type) -> dict[str, type]:
    """``{field: the type its value must have}`` from an open record's annotations."""
    hints = typing.get_type_hints(cls)
    types: dict[str, type] = {}
    for f in fields(cls):
        if f.name in ("extra", "null_keys"):
            continue
        (kind,) = [arg for arg in typing.get_args(hints[f.name]) if arg is not type(None)]
        types[f.name] = typing.get_origin(kind) or kind
    return types


def _record_type_ok(kind: type, value: Any) -> bool:
    if isinstance(value, bool):  # JSON true/false are never numbers here
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


# ---------------------------------------------------------------------------------------------
# progress.jsonl: the progress record
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressRecord(_OpenRecord):
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
      ``val_accuracy``, ``clips_per_second``, ``lr``, ``seconds``, ``data_wait_seconds`` (``val_*``
      are JSON ``null`` when the task has no validation split), and on a CUDA device
      ``gpu_memory_peak_bytes`` and, where NVML answers, ``gpu_utilization``;
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
        data_wait_seconds: of ``seconds``, the time rank 0's training loop was blocked waiting for
            the loader's next batch (decoding): ``data_wait_seconds / seconds`` near 1 means the
            device starved for data.
        gpu_memory_peak_bytes: ``torch.cuda.max_memory_allocated`` over the pass, bytes (rank 0).
        gpu_utilization: mean of ``torch.cuda.utilization`` (NVML's busy percent, 0..100) sampled
            after each step on rank 0.
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

    KIND = "progress"

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
    data_wait_seconds: float | None = None
    gpu_memory_peak_bytes: int | None = None
    gpu_utilization: float | None = None
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

    def to_json(self) -> str:
        """One ``progress.jsonl`` line, without the newline (values JSON cannot hold become strings)."""
        return json.dumps(self.to_dict(), default=str)

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


def fold_progress(records: Iterable[ProgressRecord]) -> ProgressRecord | None:
    """The latest progress: the last ``epoch`` record with every later record laid over it (so
    after ``done`` it keeps the last epoch's figures and gains the test metrics); records before
    the first ``epoch`` are laid over each other. ``None`` when there are no records."""
    latest: ProgressRecord | None = None
    for record in records:
        latest = record if latest is None or record.event == "epoch" else latest.overlay(record)
    return latest


def read_progress_records(task_dir: Path) -> list[ProgressRecord]:
    """Every record of ``task_dir/progress.jsonl``, in file order (a run's whole story: ``start``,
    one ``epoch`` per epoch, ``done``; a resumed run appends its own).

    Lines that do not parse (the line training is writing right now, bytes that are not UTF-8, or
    a known key of the wrong type) are skipped, so a reader running beside training never fails on
    them.

    Returns:
        The records; ``[]`` when the file is missing or holds none.

    Raises:
        OSError: the file exists but cannot be read (EIO, EACCES, a directory in its place).
    """
    try:
        data = (Path(task_dir) / PROGRESS).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for line in data.splitlines():
        try:
            records.append(ProgressRecord.from_json(line.decode("utf-8")))
        except (UnicodeDecodeError, ConfigurationError):
            continue
    return records


def read_progress_record(task_dir: Path) -> ProgressRecord | None:
    """:func:`fold_progress` of ``task_dir/progress.jsonl`` (:func:`read_progress_records`: lines
    that do not parse are skipped).

    Returns:
        The latest progress, or ``None`` when the file is missing or holds no record.

    Raises:
        OSError: the file exists but cannot be read (EIO, EACCES, a directory in its place).
    """
    return fold_progress(read_progress_records(task_dir))


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
        (False, None if record.data_wait_seconds is None else f"data wait {record.data_wait_seconds:.1f} s"),
        (False, None if record.lr is None else f"lr {record.lr:.1e}"),
        (True, None if record.test_accuracy is None else f"test acc {record.test_accuracy:.2f}"),
    ]
    return ", ".join(text for in_brief, text in figures if text is not None and (in_brief or not brief))


#: An epoch whose training step waited for data longer than this share of the epoch gets a hint
#: (:func:`data_wait_hint`).
DATA_WAIT_HINT_SHARE = 0.2


def data_wait_hint(record: ProgressRecord) -> str | None:
    """What would feed the device faster, when an ``epoch`` record's training step waited for data
    (``data_wait_seconds``) more than :data:`DATA_WAIT_HINT_SHARE` of the epoch (``seconds``);
    else ``None``. Training logs it; ``pytrain show`` prints it."""
    wait, seconds = record.data_wait_seconds, record.seconds
    if wait is None or not seconds or wait <= DATA_WAIT_HINT_SHARE * seconds:
        return None
    return (f"epoch {record.epoch}: the training step waited {wait:.1f} s of {seconds:.1f} s ({wait / seconds:.0%}) for data: "
            "keep the shared clip cache on (task option cache; later epochs and tasks then decode nothing), make training "
            "proxies (`pytrain sources sync --proxies`), give the loader more workers (--num-workers, PYTRAIN_NUM_WORKERS) "
            "or decode on the GPU (PYTRAIN_DECODER=nvdec)")


def _read_json_or_none(path: Path) -> Any:
    """The JSON value in ``path``, or ``None`` when there is no file.

    Raises:
        ConfigurationError: the file is not JSON (or not UTF-8); the message names it.
        OSError: the file exists but cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid JSON: {exc}") from exc


def _read_open_record(cls: type, path: Path) -> Any:
    """An open record (:class:`_OpenRecord`) from the JSON object in ``path``; ``None`` without the file.

    Raises:
        ConfigurationError: not JSON, not an object, or a known key of the wrong type; the message
            names the file.
    """
    data = _read_json_or_none(path)
    if data is None:
        return None
    try:
        return cls.from_dict(data)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc.message}", hint=exc.hint) from exc


# ---------------------------------------------------------------------------------------------
# metrics.json: the metrics record
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsRecord(_OpenRecord):
    """``metrics.json``: what a finished training run measured; also the task row's ``metrics``.

    Training writes it last (:func:`write_metrics`, from :func:`pytrain.training.train.main`); the
    orchestrator reads it (:func:`read_metrics`) into the task row, publishing copies it to
    ``results/<model>/<v>/``, ``pytrain models`` and the demo read ``test_accuracy``. Every field
    is optional (``None``: not in the file; stub trainings write only a few), unknown keys are kept
    and values type-checked (:class:`_OpenRecord`). The JSON keys are the field names, in this order.

    Attributes:
        task_id, model_name, architecture, class_list: the task (``class_list[i]`` is logit ``i``).
        epochs_run: epochs trained, all runs of the task together.
        best_epoch: the epoch whose checkpoint was exported.
        stopped_early: early stopping ended the run before ``epochs``.
        monitored: the loss early stopping followed (``val_loss``, or ``train_loss`` without a
            validation split); ``best_loss`` its lowest value (nats).
        early_stopping: the early-stopping state (``monitor``, ``patience``, ``best``,
            ``best_epoch``, ``bad_epochs``, ``stopped``).
        test_accuracy: fraction (0..1) of test clips the best checkpoint classified right (NaN
            without test clips).
        top_k: ``{"top1": .., "top5": ..}`` test top-k accuracies (0..1).
        history: one row per epoch: the ``epoch`` progress record's figures.
        splits: ``{split: {"loss", "count", "accuracy", "top_k", "per_class", "macro_f1",
            "confusion_matrix"}}`` (:func:`pytrain.training.metrics.classification_report`).
        confusion_matrices: ``{"train"|"test": (C, C) counts}``, row = true class.
        skipped: ``[{"path", "reason"}]``, as ``skipped.json``.
        clip_counts: ``{split: clips}`` trained and evaluated on.
        wall_time_s: seconds from the start of the run to the metrics.
        train_clips_per_second: mean over the epochs, all ranks together.
        device, world_size, torch_version: rank 0's torch device, the number of ranks, torch's version.
        nodes, devices: the distinct node names in rank order, and one placement entry per rank.
        export: ``{"exporter", "onnx_bytes", "parity": {...}}`` (:func:`pytrain.training.export.export_checkpoint`).
        train_config: every training setting (:class:`pytrain.task_options.TrainConfig`).
        task: the :class:`TaskSpec` as a dict.
        extra, null_keys: see :class:`_OpenRecord`.
    """

    KIND = "metrics"

    task_id: int | None = None
    model_name: str | None = None
    architecture: str | None = None
    class_list: list[str] | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped_early: bool | None = None
    monitored: str | None = None
    best_loss: float | None = None
    early_stopping: dict[str, Any] | None = None
    test_accuracy: float | None = None
    top_k: dict[str, float] | None = None
    history: list[dict[str, Any]] | None = None
    splits: dict[str, dict[str, Any]] | None = None
    confusion_matrices: dict[str, list[list[int]]] | None = None
    skipped: list[dict[str, str]] | None = None
    clip_counts: dict[str, int] | None = None
    wall_time_s: float | None = None
    train_clips_per_second: float | None = None
    device: str | None = None
    world_size: int | None = None
    torch_version: str | None = None
    nodes: list[str] | None = None
    devices: list[dict[str, Any]] | None = None
    export: dict[str, Any] | None = None
    train_config: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    null_keys: frozenset[str] = field(default=frozenset(), repr=False)


def write_metrics(folder: Path, record: MetricsRecord) -> Path:
    """Write ``metrics.json`` into ``folder`` atomically; returns its path."""
    path = Path(folder) / METRICS
    write_json_atomic(path, record.to_dict())
    return path


def read_metrics(folder: Path) -> MetricsRecord | None:
    """``folder/metrics.json`` (a task folder, or a version's ``results/<model>/<v>/``).

    Returns:
        The record, or ``None`` when there is no file (training has not finished).

    Raises:
        ConfigurationError: not JSON, not an object, or a known key of the wrong type (the
            message names the file).
        OSError: the file exists but cannot be read.
    """
    return _read_open_record(MetricsRecord, Path(folder) / METRICS)


# ---------------------------------------------------------------------------------------------
# results/<model>/<v>/task_row.json: the task row a version was trained from
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedTaskRow(_OpenRecord):
    """``results/<model>/<v>/task_row.json``: the ``training_tasks`` row that trained a version,
    as the orchestrator saw it when it published (status ``running``, with the run's ``metrics``,
    ``progress`` and ``task_dir``); ``pytrain publish`` by hand saves the row it is given.

    Versions published before PyTrain named it ``task_row.json`` hold it as ``task.json``
    (:data:`TASK_ROW_LEGACY`); :func:`read_published_task_row` reads both. The row's other columns
    (its options, fractions, times...) are kept in ``extra``; values JSON cannot hold were written
    with ``str`` (a datetime becomes its ISO text). Unknown keys and types: :class:`_OpenRecord`.

    Attributes:
        id: the task row's id; uid: its ``uid`` (UUID text); run_id: the run that published.
        model_name: the Triton model name.
        status: the row's status when it was saved.
        task_dir: the task folder the version was trained in.
        metrics: the run's :class:`MetricsRecord` as a dict.
        progress: the run's last :class:`ProgressRecord` as a dict.
    """

    KIND = "task row"

    id: int | None = None
    uid: str | None = None
    run_id: int | None = None
    model_name: str | None = None
    status: str | None = None
    task_dir: str | None = None
    metrics: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    null_keys: frozenset[str] = field(default=frozenset(), repr=False)

    @classmethod
    def from_row(cls, row: typing.Mapping[str, Any]) -> "PublishedTaskRow":
        """The record of a task row mapping, as its file will hold it (values JSON cannot hold
        become their ``str``).

        Raises:
            ConfigurationError: the row cannot be saved as JSON (a circular value), or a known
                column has the wrong type.
        """
        try:
            data = json.loads(json.dumps(dict(row), default=str))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the task row cannot be saved as JSON: {exc}") from exc
        return cls.from_dict(data)


def write_published_task_row(folder: Path, record: PublishedTaskRow) -> Path:
    """Write ``task_row.json`` into ``folder`` (a version's results) atomically; returns its path."""
    path = Path(folder) / TASK_ROW
    write_json_atomic(path, record.to_dict())
    return path


def read_published_task_row(folder: Path) -> PublishedTaskRow | None:
    """The task row saved with a version: ``folder/task_row.json``, else the ``task.json`` of a
    version published before the file had its own name.

    Returns:
        The record, or ``None`` when the folder holds neither (e.g. a version placed by hand).

    Raises:
        ConfigurationError: not JSON, not an object, or a known key of the wrong type.
        OSError: the file exists but cannot be read.
    """
    for name in (TASK_ROW, TASK_ROW_LEGACY):
        record = _read_open_record(PublishedTaskRow, Path(folder) / name)
        if record is not None:
            return record
    return None


# ---------------------------------------------------------------------------------------------
# scan.json: the pre-scan's results
# ---------------------------------------------------------------------------------------------


def scan_stamp(size: int, mtime_ns: int, num_frames: int, height: int, width: int) -> list[int]:
    """The key a pre-scan result holds for: file size (bytes), mtime (ns) and the clip size (frames, pixels)."""
    return [size, mtime_ns, num_frames, height, width]


@dataclass(frozen=True)
class ScanResult:
    """One entry of ``scan.json`` (``{manifest path: {"stamp": [...], "reason": ...}}``).

    Training's pre-scan (:mod:`pytrain.training.probe`) writes one per manifest file and keeps it
    while the stamp holds; the orchestrator seeds entries from the video catalog
    (:func:`pytrain.sources.catalog.seed_scan_results`).

    Attributes:
        stamp: :func:`scan_stamp` of the file when it was scanned.
        reason: why the file cannot be trained on, or ``None`` when it is readable.
    """

    stamp: list[int]
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the entry."""
        return {"stamp": list(self.stamp), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Any) -> "ScanResult":
        """Read one entry.

        Raises:
            ConfigurationError: not an object with exactly ``stamp`` (a list of integers) and
                ``reason`` (text or ``null``).
        """
        if not isinstance(data, dict) or set(data) != {"stamp", "reason"}:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigurationError(f"a scan result is an object with keys 'stamp' and 'reason', not {keys}")
        stamp, reason = data["stamp"], data["reason"]
        if not isinstance(stamp, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in stamp):
            raise ConfigurationError(f"scan result stamp {stamp!r} is not a list of integers")
        if reason is not None and not isinstance(reason, str):
            raise ConfigurationError(f"scan result reason {reason!r} is not text or null")
        return cls(stamp, reason)


def write_scan(task_dir: Path, results: typing.Mapping[str, ScanResult]) -> Path:
    """Write ``scan.json`` (``{manifest path: ScanResult}``, in ``results``' order) into ``task_dir``
    atomically; returns its path."""
    path = Path(task_dir) / SCAN
    write_json_atomic(path, {rel: result.to_dict() for rel, result in results.items()})
    return path


def read_scan(task_dir: Path) -> dict[str, ScanResult]:
    """The pre-scan's results in ``task_dir`` (``{manifest path: ScanResult}``).

    ``scan.json`` is a cache: what it cannot answer is scanned again. So there is no error for it:
    a missing file, or one that is not a JSON object, reads as ``{}``, and an entry that is not a
    :class:`ScanResult` (a key missing or unknown, a wrong type) is left out (logged).

    Raises:
        OSError: the file exists but cannot be read.
    """
    path = Path(task_dir) / SCAN
    try:
        data = _read_json_or_none(path)
    except ConfigurationError as exc:
        log.warning("%s; every file is scanned again", exc.message)
        return {}
    if not isinstance(data, dict):
        return {}
    results = {}
    for rel, entry in data.items():
        try:
            results[rel] = ScanResult.from_dict(entry)
        except ConfigurationError as exc:
            log.warning("%s: entry %r left out (%s); the file is scanned again", path, rel, exc.message)
    return results
