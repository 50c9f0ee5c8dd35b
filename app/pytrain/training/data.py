"""Data for training: the manifest, the clip Dataset, the decoded-clip cache and the shuffle buffer.

Streaming by default: :class:`ClipDataset` decodes each clip when it is asked for and keeps
nothing, so memory does not grow with the dataset (a 60 GB folder trains on a 16 GB machine).
The opposite trade is :class:`ClipCache`: decoded clips are written once as ``.npy`` files on disk
and read back in later epochs instead of decoding again (disk use: ``cache_pool x H x W x 3`` bytes
per clip, e.g. 32 x 112 x 112 x 3 = 1.2 MB; a training clip reads only its frames of the pool, and
the OS page cache keeps hot files in memory without the process's RSS growing).

Sampling (the task's ``sampling``/``frame_interval``/``num_clips``/``test_clips``, see
:mod:`pytrain.sampling`; the frames are decoded with :func:`pytrain.video.decode_views`):

- evaluation: ``uniform``: the centre frame of each of ``num_frames`` equal segments; ``dense``: the
  centre window of ``num_frames`` frames ``frame_interval`` apart; with ``test_clips`` K > 1, K evenly
  spaced views per video, whose probabilities evaluation averages;
- training: ``uniform``: a random frame in each segment (temporal jitter); ``dense``: a window at a
  random start; ``num_clips`` clips per video per epoch (the dataset is ``num_clips`` times longer).
  Each clip gets its random resized crop + flip box drawn by
  :meth:`~pytrain.training.transforms.TrainPreset.draw`; the box is applied to the batch in the
  training step, on the device (:func:`~pytrain.training.transforms.apply_boxes`), so the workers
  only decode;
- short videos: ``uniform`` repeats frames (each frame shown ~``num_frames / length`` times),
  ``dense`` loops (MMAction2's ``loop``);
- with the cache, training draws its jittered frames from a pool of ``cache_pool`` evaluation-sampled
  frames (default ``2 x num_frames``) decoded once, instead of from every frame of the video. The pool
  serves ``uniform`` sampling only, and evaluation only with one view: for the other settings the
  cache is not used and a log line says why (:func:`cache_limit`).

Randomness is a pure function of ``(seed, epoch, index)``, so results do not depend on the number
of DataLoader workers, and a resumed run sees the same clips as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pytrain.errors import SourceError, TrainingError, VideoDecodeError
from pytrain.sampling import ClipSampling
from pytrain.spec import TaskSpec, atomic_path, read_manifest, read_unlisted
from pytrain.training.transforms import TrainPreset, full_box
from pytrain.video import decode_views, default_decoder, read_clip, sample_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One manifest row.

    Attributes:
        path: absolute path of the video.
        rel_path: the path as written in the manifest (relative to the sources root).
        label: class index into the task's ``class_list``.
        split: ``train``, ``val`` or ``test``.
    """

    path: Path
    rel_path: str
    label: int
    split: str


def load_samples(task_dir: Path, sources_root: Path, class_list: list[str]) -> tuple[list[Sample], list[dict[str, str]]]:
    """The manifest's rows (:func:`pytrain.spec.read_manifest`) as training samples.

    Rows whose label is not in ``class_list`` or whose file is missing are skipped, not fatal
    (they are listed in ``skipped.json``, after the files the orchestrator left out of the
    manifest: :func:`pytrain.spec.read_unlisted`); a malformed manifest is fatal.

    Returns:
        ``(samples, skipped)`` in manifest order, where ``skipped`` is
        ``[{"path": rel_path, "reason": ...}]``.

    Raises:
        ConfigurationError: missing manifest, wrong columns, unknown split, a path leaving the
            sources root (see :func:`pytrain.spec.read_manifest`).
    """
    root = Path(sources_root).absolute()
    index = {name: i for i, name in enumerate(class_list)}
    samples: list[Sample] = []
    skipped: list[dict[str, str]] = read_unlisted(task_dir)
    for row in read_manifest(task_dir):
        full = root / os.path.normpath(row.path)
        if row.label not in index:
            skipped.append({"path": row.path, "reason": f"label {row.label!r} is not in the class list"})
        elif not full.is_file():
            skipped.append({"path": row.path, "reason": "no such file"})
        else:
            samples.append(Sample(full, row.path, index[row.label], row.split))
    return samples, skipped


def task_sampling(spec: TaskSpec) -> ClipSampling:
    """The task's clip sampling (its ``sampling``, ``frame_interval``, ``num_clips`` and
    ``test_clips``). Raises :class:`~pytrain.errors.ConfigurationError` for a setting training
    cannot follow (:func:`pytrain.sampling.check_sampling`)."""
    return ClipSampling(spec.sampling, spec.frame_interval, spec.num_clips, spec.test_clips)


def check_splits(samples: list[Sample]) -> None:
    """Raise :class:`~pytrain.errors.SourceError` when no train or no test clip is left."""
    for split in ("train", "test"):
        if not any(s.split == split for s in samples):
            raise SourceError(f"no readable {split} clip is left in the manifest", hint="see skipped.json for the files that were skipped")


class ClipCache:
    """Decoded clips as ``.npy`` files under ``root``, shared by all DataLoader workers.

    A clip's key covers the file's absolute path, size and modification time and the decode
    parameters, so a changed file is decoded again. Files are written atomically (temp + rename),
    so concurrent workers and crashed runs never leave a half-written entry.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, path: Path, num_frames: int, height: int, width: int) -> Path:
        st = path.stat()
        # the decoder too: decord's and torchcodec's scalers round differently (pytrain.video)
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{num_frames}|{height}|{width}|{default_decoder()}"
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.npy"

    def read_clip(self, path: Path, num_frames: int, height: int, width: int) -> np.ndarray:
        """:func:`pytrain.video.read_clip`, from the cache when present: ``(T, H, W, 3)`` uint8."""
        file = self._file(path, num_frames, height, width)
        try:
            return np.load(file)
        except (FileNotFoundError, ValueError, OSError):
            return self._fill(file, path, num_frames, height, width)

    def read_frames(self, path: Path, num_frames: int, height: int, width: int, indices: np.ndarray) -> np.ndarray:
        """``read_clip(path, num_frames, height, width)[indices]``, reading only those frames.

        A training clip uses half of its cached pool: reading just its frames (one ``preadv``
        each, straight into the result) instead of loading the whole file and indexing it (or
        indexing a fresh memory map) made cached epochs ~1.7x faster in
        ``benchmarks/bench_loader.py``.

        Returns:
            ``(len(indices), H, W, 3)`` uint8.
        """
        file = self._file(path, num_frames, height, width)
        try:
            return _read_npy_frames(file, (num_frames, height, width, 3), indices)
        except (FileNotFoundError, ValueError, OSError):
            return self._fill(file, path, num_frames, height, width)[indices]

    def _fill(self, file: Path, path: Path, num_frames: int, height: int, width: int) -> np.ndarray:
        clip = read_clip(path, num_frames, height, width)
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file, suffix=".npy") as tmp:
            np.save(tmp, clip)
        return clip


def _read_npy_frames(file: Path, shape: tuple[int, int, int, int], indices: np.ndarray) -> np.ndarray:
    """Frames ``indices`` of the ``shape`` uint8 array saved by ``np.save`` in ``file``.

    Raises:
        ValueError: the file holds another shape or dtype, or is shorter than its header says.
        OSError: it cannot be read.
    """
    with open(file, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        stored, fortran_order, dtype = read_header(handle)
        if tuple(stored) != shape or fortran_order or dtype != np.uint8:
            raise ValueError(f"{file} holds {stored} {dtype}, expected {shape} uint8")
        offset = handle.tell()
        frame = math.prod(shape[1:])
        out = np.empty((len(indices), *shape[1:]), dtype=np.uint8)
        rows = out.reshape(len(indices), frame)
        for k, i in enumerate(np.asarray(indices).tolist()):
            if not 0 <= i < shape[0] or os.preadv(handle.fileno(), [rows[k]], offset + i * frame) != frame:
                raise ValueError(f"{file}: frame {i} is missing")
    return out


def cache_limit(sampling: ClipSampling, *, train: bool) -> str | None:
    """Why :class:`ClipCache` cannot serve ``sampling``'s training (``train``) or evaluation clips,
    or ``None`` when it can. The cache keeps a pool of uniformly spaced frames per video: it cannot
    hold the windows of ``dense`` sampling, nor the extra views of ``test_clips > 1``."""
    if sampling.mode != "uniform":
        return f"{sampling.mode} sampling reads windows frame_interval apart, not the cache's pool of uniformly spaced frames"
    if not train and sampling.test_clips > 1:
        return f"test_clips={sampling.test_clips}: the cache keeps one evaluation view per video"
    return None


class ClipDataset(Dataset):
    """Clips of a list of samples.

    Items:

    - evaluation: ``(clip (T, H, W, 3) uint8, label () int64)``, the clip equal to
      :func:`pytrain.video.read_clip`'s in ``uniform`` mode; with ``sampling.test_clips`` K > 1,
      ``(views (K, T, H, W, 3) uint8, label)`` (:func:`pytrain.video.decode_views`);
    - training (``len(samples) * sampling.num_clips`` items: item ``i`` is clip ``i // len(samples)``
      of video ``i % len(samples)``, so an epoch passes over the videos ``num_clips`` times):
      ``(clip (T, H, W, 3) uint8, label () int64, box (5,) int64)``: the clip with temporal
      sampling only, and its augmentation box (``(top, left, height, width, flip)``, see
      :mod:`~pytrain.training.transforms`) for the training step to apply to the
      batch with :func:`~pytrain.training.transforms.apply_boxes`.

    Args:
        samples: the clips (one split).
        num_frames, height, width: clip size.
        train: jitter + augmentation boxes (items are ``(index, epoch)`` pairs from
            :class:`ShuffleBufferSampler`); else deterministic evaluation clips (items are indices).
        seed: base of the per-item random generator.
        augment: draws the training boxes; ``None`` for temporal jitter only (every box is the
            whole frame, unflipped).
        cache: decoded-clip cache, or ``None`` to stream; ignored (with a log line) where it cannot
            serve ``sampling`` (:func:`cache_limit`).
        cache_pool: frames per clip kept in the cache for training jitter (default ``2 * num_frames``).
        sampling: the sampling mode and counts (default: uniform, one clip, one view).
    """

    def __init__(
        self,
        samples: list[Sample],
        num_frames: int,
        height: int,
        width: int,
        *,
        train: bool = False,
        seed: int = 0,
        augment: TrainPreset | None = None,
        cache: ClipCache | None = None,
        cache_pool: int | None = None,
        sampling: ClipSampling | None = None,
    ) -> None:
        self.samples = list(samples)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.train = train
        self.seed = seed
        self.augment = augment
        self.sampling = sampling or ClipSampling()
        reason = cache_limit(self.sampling, train=train) if cache is not None else None
        if reason is not None:
            log.info("%s clips are decoded every time, not cached: %s", "training" if train else "evaluation", reason)
            cache = None
        self.cache = cache
        self.cache_pool = cache_pool or 2 * num_frames

    def __len__(self) -> int:
        return len(self.samples) * (self.sampling.num_clips if self.train else 1)

    def labels(self) -> list[int]:
        """The class index of every item, in item order."""
        return [self.samples[i % len(self.samples)].label for i in range(len(self))]

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        if isinstance(item, (tuple, list)):
            index, epoch = int(item[0]), int(item[1])
        else:
            index, epoch = int(item), 0
        sample = self.samples[index % len(self.samples)]
        label = torch.tensor(sample.label, dtype=torch.int64)
        if not self.train:
            return torch.from_numpy(self._eval_clip(sample)), label
        clip, box = self._train_clip(sample, index, epoch)
        return torch.from_numpy(clip), label, torch.from_numpy(box)

    def _eval_clip(self, sample: Sample) -> np.ndarray:
        if self.cache is not None:
            return self.cache.read_clip(sample.path, self.num_frames, self.height, self.width)
        views = decode_views(sample.path, self.num_frames, self.height, self.width, self.sampling)
        return views[0] if len(views) == 1 else views

    def _train_clip(self, sample: Sample, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        # seeded by the item: with one clip per video this is (seed, epoch, video), as it always was
        rng = np.random.default_rng((self.seed, epoch, index))
        try:
            if self.cache is not None:
                indices = sample_indices(self.cache_pool, self.num_frames, rng=rng)
                clip = self.cache.read_frames(sample.path, self.cache_pool, self.height, self.width, indices)
            else:
                clip = decode_views(sample.path, self.num_frames, self.height, self.width, self.sampling, rng=rng,
                                    clip=index // len(self.samples))[0]
        except VideoDecodeError as exc:
            # The pre-scan decoded the evaluation frames; a sampled frame can still be broken
            # (e.g. damage in the middle of the file): fall back to the evaluation clip.
            log.warning("%s; using its evaluation frames instead", exc)
            try:
                clip = decode_views(sample.path, self.num_frames, self.height, self.width, replace(self.sampling, test_clips=1))[0]
            except VideoDecodeError as again:
                raise TrainingError(f"{again} (it passed the pre-scan, so the file changed during training?)") from again
        # drawn after the jitter, from the same generator: the boxes the in-worker transform drew
        box = self.augment.draw(self.height, self.width, rng) if self.augment is not None else full_box(self.height, self.width)
        return clip, box


class ShuffleBufferSampler(Sampler):
    """Yields ``(index, epoch)`` pairs in PyTrain's shuffle-buffer order.

    PyTrain's ``shuffle_size`` is the size of a shuffle buffer (``tf.data.Dataset.shuffle``):
    clips enter a buffer of ``buffer_size`` in manifest order, and each step emits a uniformly
    random clip from the buffer and refills its slot with the next clip. ``buffer_size >= len``
    is a full uniform shuffle; ``buffer_size <= 1`` keeps the manifest order. The order depends
    only on ``(seed, epoch)``.

    For data-parallel training each of ``world_size`` ranks takes every ``world_size``-th item of
    the same order (wrapping around so all ranks get the same count).

    Args:
        length: number of clips.
        buffer_size: the shuffle buffer, in clips.
        seed: base seed.
        rank, world_size: this process's share under ``torchrun``.
    """

    def __init__(self, length: int, buffer_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.buffer_size = max(1, int(buffer_size))
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """The full (all ranks) order of this epoch."""
        rng = np.random.default_rng((self.seed, self.epoch, 0x5EED))
        buffer: list[int] = []
        out: list[int] = []
        for i in range(self.length):
            if len(buffer) < self.buffer_size:
                buffer.append(i)
                continue
            k = int(rng.integers(len(buffer)))
            out.append(buffer[k])
            buffer[k] = i
        while buffer:
            k = int(rng.integers(len(buffer)))
            out.append(buffer[k])
            buffer[k] = buffer[-1]
            buffer.pop()
        return out

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        total = len(self) * self.world_size
        if order and total > len(order):
            order = order + order[: total - len(order)]
        for index in order[self.rank : total : self.world_size]:
            yield index, self.epoch
