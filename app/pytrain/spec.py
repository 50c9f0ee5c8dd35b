"""The contracts between the orchestrator, the training entrypoint, publishing and the client.

A task folder ``model_tasks/<task_dir_name>/`` is the only thing the orchestrator and the training
run share (it is bind-mounted into the training container). Its files:

=====================  ========================  =============================================
file                   written by                what
=====================  ========================  =============================================
``task.json``          orchestrator              :class:`TaskSpec`
``manifest.csv``       orchestrator              one row per video: ``path,label,split``
                                                 (``path`` relative to the sources root)
``progress.jsonl``     training                  one JSON object per line (:data:`PROGRESS`)
``train.log``          runner                    stdout and stderr of the training run
``checkpoint_last.pt`` training                  for resume after a crash
``checkpoint_best.pt`` training                  best validation loss
``model.onnx``         training (export)         raw uint8 frames in, probabilities out
``tensor_spec.json``   training (export)         :class:`TensorSpec`, read by publishing,
                                                 the Triton config, the INI config and the client
``metrics.json``       training                  history, test metrics, confusion matrices
``skipped.json``       training                  ``[{"path": ..., "reason": ...}]``
``history.png`` etc.   training                  plots
``scan.json``          training                  pre-scan of every video (readable or why
                                                 not), reused by a resumed run
``clip_cache/``        training                  decoded clips, only with ``extra.cache``
=====================  ========================  =============================================
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError

TASK_SPEC = "task.json"
MANIFEST = "manifest.csv"
PROGRESS = "progress.jsonl"
TRAIN_LOG = "train.log"
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
MODEL_ONNX = "model.onnx"
TENSOR_SPEC = "tensor_spec.json"
METRICS = "metrics.json"
SKIPPED = "skipped.json"
PLOTS = ("history.png", "confusion_train.png", "confusion_test.png")

MANIFEST_COLUMNS = ("path", "label", "split")
SPLITS = ("train", "val", "test")

# PyTrain's historical tensor names: existing PyTrain clients send ``time_distributed_input``
# and read ``dense`` (the names Keras gave the TimeDistributed input and the final Dense layer).
DEFAULT_INPUT_NAME = "time_distributed_input"
DEFAULT_OUTPUT_NAME = "dense"
OTHER_CLASS = "Other"


def task_dir_name(task_id: int, model_name: str) -> str:
    """Folder name of a task under ``model_tasks/``: ``task-<id>-<model_name>``."""
    return f"task-{task_id}-{model_name}"


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


@dataclass(frozen=True)
class TaskSpec:
    """Everything the training entrypoint needs, written by the orchestrator to ``task.json``.

    Field names and defaults follow the ``training_tasks`` table.

    Attributes:
        task_id: id of the ``training_tasks`` row.
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
    """

    task_id: int
    model_name: str
    class_list: list[str]
    architecture: str = "tiny"
    num_frames: int = 20
    height: int = 224
    width: int = 224
    epochs: int = 50
    batch_size: int = 4
    shuffle_size: int = 300
    learning_rate: float = 1e-3
    seed: int = 0
    pretrained: bool = False
    input_name: str = DEFAULT_INPUT_NAME
    output_name: str = DEFAULT_OUTPUT_NAME
    sources_root: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.class_list) < 2:
            raise ConfigurationError(
                f"task {self.task_id}: class_list {self.class_list} has fewer than 2 classes",
                hint="select at least two classes, or set include_other",
            )
        if self.num_frames < 1 or self.height < 1 or self.width < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigurationError(f"task {self.task_id}: num_frames, height, width, epochs and batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what ``task.json`` holds)."""
        return asdict(self)

    def save(self, task_dir: Path) -> Path:
        """Write ``task.json`` atomically into ``task_dir``; returns its path."""
        path = Path(task_dir) / TASK_SPEC
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, task_dir: Path) -> "TaskSpec":
        """Read ``task.json`` from ``task_dir``.

        Raises:
            ConfigurationError: the file is missing, not JSON, or has unknown/missing fields.
        """
        path = Path(task_dir) / TASK_SPEC
        data = _read_json(path, "task spec", "the orchestrator writes it; pass the task folder")
        return _from_dict(cls, data, str(path))


@dataclass(frozen=True)
class TensorSpec:
    """The one description of the served model's tensors, saved as ``tensor_spec.json``.

    The ONNX export writes it; the Triton ``config.pbtxt``, ``configs/cpu.pbtxt``, the PyTrain
    INI config, ``labels.txt`` and the client are all generated from it.

    Input ``input_name``: ``(N, num_frames, height, width, 3)`` uint8 RGB frames, N dynamic.
    Output ``output_name``: ``(N, len(class_list))`` float32 class probabilities (softmax).
    """

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
        data = asdict(self)
        data["input_shape"] = self.input_shape
        data["output_shape"] = self.output_shape
        return data

    def save(self, folder: Path) -> Path:
        """Write ``tensor_spec.json`` atomically into ``folder``; returns its path."""
        path = Path(folder) / TENSOR_SPEC
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: Path) -> "TensorSpec":
        """Read ``tensor_spec.json`` from a folder (or the file itself).

        Raises:
            ConfigurationError: missing or malformed file.
        """
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / TENSOR_SPEC
        data = _read_json(path, "tensor spec", "the training run writes it beside model.onnx")
        data.pop("input_shape", None)
        data.pop("output_shape", None)
        return _from_dict(cls, data, str(path))
