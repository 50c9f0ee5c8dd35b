"""Data for training: the manifest, the clip Dataset, the decoded-clip cache and the shuffle buffer.

:class:`ClipDataset` decodes each clip when it is asked for and keeps nothing in memory, so memory
does not grow with the dataset (a 60 GB folder trains on a 16 GB machine). With the shared clip
cache (:mod:`pytrain.training.clip_cache`, on by default) decoded clips are written once to disk and
read back by every later epoch and every later task on the same videos with the same clip settings
(disk use: ``cache_pool x H x W x 3`` bytes per clip, e.g. 32 x 112 x 112 x 3 = 1.2 MB; a training
clip reads only its frames of the pool, and the OS page cache keeps hot files in memory without the
process's RSS growing). The cache never changes what is trained on: with ``cache: false`` the same
frames are decoded straight from the video.

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
- ``uniform`` training draws its jittered frames from a pool of ``cache_pool`` evaluation-sampled
  frames (default ``2 x num_frames``), cached or not, instead of from every frame of the video: the
  pool is what the cache keeps. The cache serves ``uniform`` sampling only, and evaluation only with
  one view: for the other settings it is not used and a log line says why (:func:`cache_limit`);
- training proxies (:mod:`pytrain.proxies`): a sample may be decoded from its proxy instead
  of its original (:attr:`Sample.source`); the cache keys the two apart.

Randomness is a pure function of ``(seed, epoch, index)``, so results do not depend on the number
of DataLoader workers, and a resumed run sees the same clips as an uninterrupted one.
"""

from __future__ import annotations

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
from pytrain.proxies import pick_proxy, proxy_sizes, proxy_source
from pytrain.sampling import ClipSampling
from pytrain.spec import TaskSpec, read_manifest, read_unlisted
from pytrain.training.clip_cache import ClipCache, clip_key
from pytrain.training.transforms import TrainPreset, full_box
from pytrain.video import decode_picked, decode_views, default_decoder, nvdec_picked, read_clip, sample_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One manifest row.

    Attributes:
        path: absolute path of the video.
        rel_path: the path as written in the manifest (relative to the sources root).
        label: class index into the task's ``class_list``.
        split: ``train``, ``val`` or ``test``.
        content: the file's content id from the manifest (``catalog:<digest>``), ``""`` if unknown.
        source: which file ``path`` is: ``original``, or a training proxy (``proxy-s256``).
    """

    path: Path
    rel_path: str
    label: int
    split: str
    content: str = ""
    source: str = "original"

    def content_id(self) -> str:
        """The clip cache's content id: the catalog's digest, else the file's absolute path, size
        and mtime (a file the catalog does not know is not recognised under another name)."""
        if self.content:
            return self.content
        st = self.path.stat()
        return f"stamp:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


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
            samples.append(Sample(full, row.path, index[row.label], row.split, row.content))
    return samples, skipped


def with_proxies(samples: list[Sample], sources_root: Path, height: int, width: int) -> list[Sample]:
    """``samples`` with each one whose video has a fresh training proxy that a ``height x width``
    clip fits in (:func:`pytrain.proxies.pick_proxy`) read from that proxy instead; logs how many.

    Proxies are addressed by the catalog digest ``manifest.csv`` carries, so a proxy is never
    stale, and training needs no database to find them.
    """
    sizes = proxy_sizes(sources_root)
    out, used = [], {}
    for sample in samples:
        found = pick_proxy(sources_root, sample.content, height, width, sizes) if sizes else None
        if found is None:
            out.append(sample)
            continue
        path, size = found
        out.append(replace(sample, path=path, source=proxy_source(size)))
        used[size] = used.get(size, 0) + 1
    sizes_text = ", ".join(f"{n} from short side {size}" for size, n in sorted(used.items()))
    log.info("training proxies: %d of %d clips read from proxies%s; the others from the originals",
             sum(used.values()), len(samples), f" ({sizes_text})" if used else "")
    return out


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
        cache_pool: frames per video ``uniform`` training jitter draws from, cached or not (default
            ``2 * num_frames``).
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
        self.decoder = default_decoder()

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
        return torch.as_tensor(clip), label, torch.from_numpy(box)  # as_tensor: a numpy clip shares its memory, a CUDA one stays

    def _eval_clip(self, sample: Sample) -> np.ndarray:
        if self.cache is not None:
            return self._cached(sample, self.num_frames)
        views = decode_views(sample.path, self.num_frames, self.height, self.width, self.sampling)
        return views[0] if len(views) == 1 else views

    def _cached(self, sample: Sample, frames: int, indices: np.ndarray | None = None) -> np.ndarray:
        """Frames ``indices`` of the ``frames``-frame evaluation-sampled clip of ``sample``, from the cache."""
        key = clip_key(sample.content_id(), source=sample.source, decoder=self.decoder, mode=self.sampling.mode,
                       frame_interval=self.sampling.frame_interval, frames=frames, height=self.height, width=self.width)
        shape = (frames, self.height, self.width, 3)
        return self.cache.read(key, shape, lambda: read_clip(sample.path, frames, self.height, self.width, decoder=self.decoder), indices)

    def _pool_frames(self, sample: Sample, jitter: np.ndarray) -> np.ndarray:
        """Frames ``jitter`` of the video's pool of ``cache_pool`` evaluation-sampled frames: from the
        cache, or decoded straight from the video (the same frames, so the cache changes no result)."""
        if self.cache is not None:
            return self._cached(sample, self.cache_pool, jitter)
        if self.decoder == "nvdec":  # decoded and resized on the GPU, and left there: (T, H, W, 3) uint8 CUDA
            return nvdec_picked(sample.path, self.height, self.width, lambda total: sample_indices(total, self.cache_pool)[jitter])
        return decode_picked(sample.path, self.height, self.width, lambda total: sample_indices(total, self.cache_pool)[jitter],
                            decoder=self.decoder)

    def _train_clip(self, sample: Sample, index: int, epoch: int) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
        # seeded by the item: with one clip per video this is (seed, epoch, video), as it always was
        rng = np.random.default_rng((self.seed, epoch, index))
        try:
            if self.sampling.mode == "uniform":
                clip = self._pool_frames(sample, sample_indices(self.cache_pool, self.num_frames, rng=rng))
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
