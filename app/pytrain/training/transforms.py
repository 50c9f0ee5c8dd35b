"""Training augmentation presets, applied to decoded uint8 clips (after :func:`pytrain.video.decode_clip`).

Evaluation has no preset of its own: it is :func:`pytrain.video.read_clip` (centre-of-segment
sampling, resize while decoding), the same call the client makes. Normalisation is not done here
but on the device, by :class:`pytrain.training.preprocess.Preprocess`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


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

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment ``(T, H, W, 3)`` uint8 -> ``(T, H, W, 3)`` uint8 (same size), drawing from ``rng``."""
        t, h, w, _ = clip.shape
        top, left, ch, cw = self._box(h, w, rng)
        out = clip[:, top : top + ch, left : left + cw]
        if (ch, cw) != (h, w):
            # uint8 bilinear straight on the (T, H, W, 3) buffer (a channels-last view): ~9x faster
            # than a float round trip, and the workers' time is the loader's throughput
            x = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2)
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
            out = x.permute(0, 2, 3, 1).numpy()
        if rng.random() < self.hflip:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)

    def _box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
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
