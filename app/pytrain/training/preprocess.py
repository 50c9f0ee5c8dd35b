"""Normalisation and layout change: the one place raw frames become network input.

The same :class:`Preprocess` module runs on the training device (the DataLoader hands over raw
uint8 frames, so workers and pinned memory move 4x fewer bytes than float32) and inside the
exported ONNX graph (so Triton clients send raw frames and inference cannot drift from training).

Constants:

- :data:`KINETICS_MEAN` / :data:`KINETICS_STD`: the Kinetics-400 statistics of torchvision's video
  weights for ``r3d_18``, ``mc3_18``, ``r2plus1d_18`` and ``s3d``
  (``torchvision.models.video.R3D_18_Weights.KINETICS400_V1.transforms()``).
- :data:`MVIT_MEAN` / :data:`MVIT_STD`: ``MViT_V2_S_Weights.KINETICS400_V1.transforms()``.
- :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`: torchvision's ImageNet image weights (the per-frame
  2D CNNs) and ``Swin3D_T_Weights.KINETICS400_V1.transforms()``.
"""

from __future__ import annotations

import torch
from torch import nn

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
MVIT_MEAN = (0.45, 0.45, 0.45)
MVIT_STD = (0.225, 0.225, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocess(nn.Module):
    """Raw RGB frames to normalised network input.

    ``(N, T, H, W, 3)`` uint8 in ``[0, 255]`` -> ``(N, 3, T, H, W)`` float32,
    ``(x / 255 - mean) / std`` per channel.

    Args:
        mean, std: per-channel statistics of ``x / 255`` (RGB order).

    Attributes:
        channels_last_3d: return the tensor in ``torch.channels_last_3d`` memory format (faster
            3D convolutions with cuDNN). Training sets it on CUDA only; export rebuilds the model
            from its checkpoint, so it is never in the exported graph.
    """

    def __init__(self, mean: tuple[float, float, float] = KINETICS_MEAN, std: tuple[float, float, float] = KINETICS_STD) -> None:
        super().__init__()
        self.mean_values = tuple(float(v) for v in mean)
        self.std_values = tuple(float(v) for v in std)
        # (x/255 - mean)/std == x * scale + shift: one multiply-add, folded into constants.
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std_values]).view(1, 3, 1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean_values, self.std_values)]).view(1, 3, 1, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.channels_last_3d = False

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, T, H, W, 3)`` uint8 (or float 0..255) -> ``(N, 3, T, H, W)`` normalised float32."""
        x = frames.permute(0, 4, 1, 2, 3).to(self.scale.dtype)
        x = x * self.scale + self.shift
        if self.channels_last_3d:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        else:
            x = x.contiguous()
        return x

    def extra_repr(self) -> str:
        return f"mean={self.mean_values}, std={self.std_values}"
