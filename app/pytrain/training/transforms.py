"""Training augmentation: random resized crop + horizontal flip, drawn per clip, applied per batch.

The augmentation is split in two so that the DataLoader workers only decode:

- :meth:`TrainPreset.draw` runs in the worker, with the clip's own random generator (a pure
  function of ``(seed, epoch, index)``), and returns the clip's *box*: ``(top, left, height,
  width, flip)`` as ``(5,)`` int64;
- :func:`apply_boxes` runs in the training step on the device, on the batch of raw uint8 clips
  and their boxes, next to the normalisation (:class:`pytrain.training.preprocess.Preprocess`).

On the CPU :func:`apply_boxes` computes exactly what the per-clip transform computed when it ran in
the workers (same box, same uint8 bilinear kernel), so moving it changed no training result there.

Evaluation has no preset of its own: it is :func:`pytrain.video.read_clip` (centre-of-segment
sampling, resize while decoding), the same call the client makes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BOX_FIELDS = ("top", "left", "height", "width", "flip")


class TrainPreset:
    """Random resized crop + horizontal flip of a whole clip (the same box and flip for every frame).

    Args:
        scale: range of the crop area as a fraction of the frame (torchvision's
            ``RandomResizedCrop`` uses (0.08, 1.0) for images; clips are already framed, so the
            default keeps most of the frame).
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        hflip: probability of a horizontal flip (0 turns it off, e.g. when left/right motion
            tells the classes apart).
    """

    def __init__(self, *, scale: tuple[float, float] = (0.6, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5) -> None:
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip

    def draw(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """The box of one clip of ``height x width`` frames: ``(5,)`` int64, see :data:`BOX_FIELDS`."""
        top, left, ch, cw = self._crop(height, width, rng)
        flip = int(rng.random() < self.hflip)
        return np.array([top, left, ch, cw, flip], dtype=np.int64)

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one ``(T, H, W, 3)`` uint8 clip -> ``(T, H, W, 3)`` uint8 (same size), drawing from ``rng``."""
        box = self.draw(clip.shape[1], clip.shape[2], rng)
        return apply_boxes(torch.from_numpy(clip)[None], torch.from_numpy(box)[None])[0].numpy()

    def _crop(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):  # torchvision's rejection sampling, then fall back to the full frame
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        return 0, 0, h, w


def full_box(height: int, width: int) -> np.ndarray:
    """The box that leaves a clip as it is (whole frame, no flip): ``(5,)`` int64."""
    return np.array([0, 0, height, width, 0], dtype=np.int64)


def apply_boxes(clips: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each clip to its box, resize it back to the frame size (bilinear), flip it if asked.

    On the CPU each clip goes through the uint8 bilinear kernel (what the per-clip transform
    did in the workers, bit for bit); on a GPU the whole batch is one float ``grid_sample`` at the
    same sampling points (results within 1 of the CPU's).

    Args:
        clips: ``(N, T, H, W, 3)`` uint8, on any device.
        boxes: ``(N, 5)`` int64 (:data:`BOX_FIELDS`), on the CPU (read with ``tolist``: a box on
            the GPU would make every step wait for the copy).

    Returns:
        ``(N, T, H, W, 3)`` uint8 on ``clips.device``; ``clips`` itself when no box changes anything.

    Raises:
        ValueError: not one box per clip.
    """
    n, _, h, w, _ = clips.shape
    rows = boxes.tolist()
    if len(rows) != n:
        raise ValueError(f"{len(rows)} boxes for {n} clips")
    if all(row == [0, 0, h, w, 0] for row in rows):
        return clips
    if clips.device.type != "cpu":
        return _sample_boxes(clips, rows)
    out = torch.empty_like(clips)
    for i, (top, left, ch, cw, flip) in enumerate(rows):
        clip = clips[i, :, top : top + ch, left : left + cw]
        if (ch, cw) != (h, w):
            # (T, h', w', 3) -> (T, 3, h', w') as a channels-last view: the uint8 bilinear kernel
            # works on it in place, ~9x faster than a float round trip on the CPU
            x = clip.contiguous().permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
            clip = x.permute(0, 2, 3, 1)
        if flip:
            clip = clip.flip(2)
        out[i] = clip
    return out


def _sample_boxes(clips: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
    """The batched float path of :func:`apply_boxes` (any device): one ``grid_sample`` call."""
    n, t, h, w, _ = clips.shape
    box = torch.tensor(rows, dtype=torch.float64)
    top, left, ch, cw, flip = (box[:, k : k + 1] for k in range(5))
    # the pixels F.interpolate(crop, (h, w), align_corners=False) samples: (i + 0.5) * ch / h - 0.5
    # into the crop, clamped to the crop (its edge pixels repeat, nothing outside it leaks in)
    ys = top + ((torch.arange(h, dtype=torch.float64) + 0.5) * ch / h - 0.5).clamp(min=0).minimum(ch - 1)
    xs = left + ((torch.arange(w, dtype=torch.float64) + 0.5) * cw / w - 0.5).clamp(min=0).minimum(cw - 1)
    xs = torch.where(flip.bool(), xs.flip(1), xs)
    # to grid_sample's normalised coordinates (align_corners=False: -1 and 1 are the outer edges)
    ys = ((2 * ys + 1) / h - 1).to(device=clips.device, dtype=torch.float32)
    xs = ((2 * xs + 1) / w - 1).to(device=clips.device, dtype=torch.float32)
    grid = torch.stack((xs[:, None, :].expand(n, h, w), ys[:, :, None].expand(n, h, w)), dim=-1)
    # frames and channels share their clip's box: fold T into the channels, one call per batch
    x = clips.permute(0, 1, 4, 2, 3).reshape(n, t * 3, h, w).float()
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.reshape(n, t, 3, h, w).permute(0, 1, 3, 4, 2).contiguous()
