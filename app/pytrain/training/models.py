"""The model registry: every architecture a task's ``architecture`` field may name.

Every model is a :class:`VideoClassifier`: raw ``(N, T, H, W, 3)`` uint8 frames in, ``(N, C)``
float32 logits out, with :class:`~pytrain.training.preprocess.Preprocess` as its first layer. The
constructor arguments (:func:`build_model`'s keywords) are stored in every checkpoint under
``"model_args"``, so export rebuilds the model without the task spec (the nanoGPT habit)::

    model = build_model(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["model"])

Architectures (see :data:`ARCHITECTURES`):

- ``tiny``: a three-layer 3D CNN (~60k parameters) that trains in seconds on a CPU; torch only.
- ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``, ``mvit_v2_s``, ``swin3d_t``: torchvision's
  video models. ``mvit_v2_s`` has fixed-size relative position embeddings and needs exactly
  ``16 x 224 x 224`` clips; ``s3d``'s final ``AvgPool3d((2, 7, 7))`` (which needs >= 14 x 224 x
  224) is replaced by a global average pool, identical at 16 x 224 x 224 and valid from 8 x 32 x 32.
- ``frames_resnet18``, ``frames_mobilenet_v3_small``, ``frames_efficientnet_b0``: a torchvision
  image CNN applied to every frame, then a temporal head (``mean``: average over time, or
  ``gru``: a GRU over the frame features) -- PyTrain's TimeDistributed(CNN) + pooling models.

torchvision is imported only when a torchvision architecture is built, so ``tiny`` works in an
image that has torch alone.

Pretrained weights (``pretrained=True``) are read from the local torch hub cache
(``$TORCH_HOME/hub/checkpoints/<file name of torchvision's weight URL>``) and never downloaded;
when the file is absent :class:`~pytrain.errors.ConfigurationError` says which file to put where.
Video models use their Kinetics-400 weights, per-frame CNNs their ImageNet weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pytrain.errors import ConfigurationError
from pytrain.task_columns import MIN_CLASSES
from pytrain.training.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    MVIT_MEAN,
    MVIT_STD,
    Preprocess,
)

TEMPORAL_HEADS = ("mean", "gru")


@dataclass(frozen=True)
class Architecture:
    """One entry of the registry.

    Attributes:
        name: the task's ``architecture`` value.
        family: ``tiny``, ``video`` (torchvision 3D model) or ``frames`` (2D CNN per frame).
        mean, std: input statistics of its (pretrained) weights, used by :class:`Preprocess`.
        fixed_size: ``(T, H, W)`` the architecture requires, or ``None`` for any size.
        min_size: smallest ``(T, H, W)`` its pooling layers take.
    """

    name: str
    family: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fixed_size: tuple[int, int, int] | None = None
    min_size: tuple[int, int, int] = (1, 1, 1)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("tiny", "tiny", KINETICS_MEAN, KINETICS_STD),
        Architecture("r3d_18", "video", KINETICS_MEAN, KINETICS_STD),
        Architecture("mc3_18", "video", KINETICS_MEAN, KINETICS_STD),
        Architecture("r2plus1d_18", "video", KINETICS_MEAN, KINETICS_STD),
        Architecture("s3d", "video", KINETICS_MEAN, KINETICS_STD, min_size=(8, 32, 32)),
        Architecture("mvit_v2_s", "video", MVIT_MEAN, MVIT_STD, fixed_size=(16, 224, 224)),
        Architecture("swin3d_t", "video", IMAGENET_MEAN, IMAGENET_STD),
        Architecture("frames_resnet18", "frames", IMAGENET_MEAN, IMAGENET_STD),
        Architecture("frames_mobilenet_v3_small", "frames", IMAGENET_MEAN, IMAGENET_STD),
        Architecture("frames_efficientnet_b0", "frames", IMAGENET_MEAN, IMAGENET_STD),
    )
}


class VideoClassifier(nn.Module):
    """Preprocessing + backbone: ``(N, T, H, W, 3)`` uint8 -> ``(N, num_classes)`` float32 logits.

    Attributes:
        model_args: the keywords :func:`build_model` was called with (saved in checkpoints).
    """

    def __init__(self, backbone: nn.Module, preprocess: Preprocess, model_args: dict[str, Any]) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.model_args = dict(model_args)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, T, H, W, 3)`` uint8 frames -> ``(N, C)`` float32 logits."""
        return self.backbone(self.preprocess(frames))


class TinyVideoNet(nn.Module):
    """Three strided 3D conv blocks, global average pool, linear: ``(N, 3, T, H, W)`` -> ``(N, C)``."""

    def __init__(self, num_classes: int, dropout: float = 0.2, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> nn.Sequential:
            padding = tuple(k // 2 for k in kernel)
            return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(3, width, (1, 3, 3), (1, 2, 2)),  # spatial only first: keep the early motion cues
            block(width, 2 * width, (3, 3, 3), (1, 2, 2)),
            block(2 * width, 4 * width, (3, 3, 3), (2, 2, 2)),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float32 -> ``(N, C)`` logits."""
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


class PerFrameCNN(nn.Module):
    """A 2D CNN on every frame, then a temporal head: ``(N, 3, T, H, W)`` -> ``(N, C)``.

    Args:
        encoder: image model mapping ``(N*T, 3, H, W)`` to ``(N*T, feature_dim)``.
        feature_dim: the encoder's output width.
        num_classes: C.
        temporal_head: ``mean`` (average the frame features over time) or ``gru`` (a one-layer
            GRU over time; its last hidden state is classified).
        dropout: dropout before the classifier.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int, temporal_head: str = "mean", dropout: float = 0.2) -> None:
        super().__init__()
        if temporal_head not in TEMPORAL_HEADS:
            raise ConfigurationError(f"unknown temporal_head {temporal_head!r}", hint=f"one of {TEMPORAL_HEADS}")
        self.encoder = encoder
        self.temporal_head = temporal_head
        self.gru = nn.GRU(feature_dim, 256, batch_first=True) if temporal_head == "gru" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(256 if self.gru is not None else feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W)`` float32 -> ``(N, C)`` logits."""
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        features = self.encoder(frames).reshape(n, t, -1)
        if self.gru is not None:
            _, hidden = self.gru(features)
            pooled = hidden[-1]
        else:
            pooled = features.mean(dim=1)
        return self.fc(self.dropout(pooled))


def build_model(
    architecture: str,
    num_classes: int,
    num_frames: int,
    height: int,
    width: int,
    *,
    pretrained: bool = False,
    dropout: float = 0.2,
    temporal_head: str = "mean",
) -> VideoClassifier:
    """Build a model for ``(N, num_frames, height, width, 3)`` uint8 clips.

    Args:
        architecture: a key of :data:`ARCHITECTURES`.
        num_classes: size of the output.
        num_frames, height, width: clip size (checked against the architecture's fixed size).
        pretrained: start from the weights in the local torch hub cache (never downloaded).
        dropout: dropout before the classifier of ``tiny`` and the per-frame models.
        temporal_head: ``mean`` or ``gru`` (per-frame models only).

    Returns:
        A :class:`VideoClassifier` in training mode, randomly initialised by the current torch
        seed unless ``pretrained``.

    Raises:
        ConfigurationError: unknown architecture; a size the architecture cannot take; pretrained
            weights asked for but absent from the torch cache (or ``tiny`` with ``pretrained``);
            torchvision not installed for a torchvision architecture.
    """
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        raise ConfigurationError(f"unknown architecture {architecture!r}", hint=f"one of {sorted(ARCHITECTURES)}")
    if num_classes < MIN_CLASSES:
        raise ConfigurationError(f"num_classes must be >= {MIN_CLASSES}, got {num_classes}")
    if arch.fixed_size is not None and (num_frames, height, width) != arch.fixed_size:
        t, h, w = arch.fixed_size
        raise ConfigurationError(
            f"{architecture} needs clips of exactly {t} frames of {h}x{w}, the task asks for {num_frames} frames of {height}x{width}",
            hint=f"set num_frames={t}, height={h}, width={w}, or pick another architecture",
        )
    if any(have < need for have, need in zip((num_frames, height, width), arch.min_size)):
        t, h, w = arch.min_size
        raise ConfigurationError(
            f"{architecture} needs clips of at least {t} frames of {h}x{w}, the task asks for {num_frames} frames of {height}x{width}",
            hint="raise num_frames/height/width, or pick another architecture",
        )
    args = dict(
        architecture=architecture, num_classes=num_classes, num_frames=num_frames, height=height, width=width,
        pretrained=pretrained, dropout=dropout, temporal_head=temporal_head,
    )
    if arch.family == "tiny":
        if pretrained:
            raise ConfigurationError("the tiny architecture has no pretrained weights", hint="set pretrained to false")
        backbone: nn.Module = TinyVideoNet(num_classes, dropout=dropout)
    elif arch.family == "video":
        backbone = _torchvision_video(architecture, num_classes, pretrained)
    else:
        backbone = _per_frame(architecture, num_classes, pretrained, temporal_head, dropout)
    return VideoClassifier(backbone, Preprocess(arch.mean, arch.std), args)


def _torchvision():
    try:
        import torchvision  # lazy: the torch-only training image has no torchvision
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise ConfigurationError(
            f"this architecture needs torchvision, which cannot be imported here ({type(exc).__name__}: {exc})",
            hint="install the torchvision matching this torch, or use architecture 'tiny'",
        ) from exc
    return torchvision


def cached_weights_path(url: str) -> Path:
    """Where torchvision would cache ``url``: ``<torch.hub.get_dir()>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _load_cached_weights(name: str) -> dict[str, torch.Tensor]:
    tv = _torchvision()
    weights = tv.models.get_model_weights(name).DEFAULT
    path = cached_weights_path(weights.url)
    if not path.is_file():
        raise ConfigurationError(
            f"pretrained weights for {name} are not in the local torch cache: {path} is missing",
            hint=f"copy {weights.url} to {path} (PyTrain never downloads weights), or set pretrained to false",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigurationError(f"cannot read pretrained weights {path}: {exc}", hint="the file may be truncated; copy it again") from exc


def _torchvision_video(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    tv = _torchvision()
    factory: Callable[..., nn.Module] = getattr(tv.models.video, name)
    if pretrained:
        model = factory(weights=None)  # Kinetics-400 head, then load, then replace the head
        model.load_state_dict(_load_cached_weights(name))
        _replace_video_head(name, model, num_classes)
    else:
        model = factory(weights=None, num_classes=num_classes)
    if name == "s3d":
        model.avgpool = nn.AdaptiveAvgPool3d(1)
    return model


def _replace_video_head(name: str, model: nn.Module, num_classes: int) -> None:
    if name in ("r3d_18", "mc3_18", "r2plus1d_18"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif name == "s3d":
        old = model.classifier[1]
        model.classifier[1] = nn.Conv3d(old.in_channels, num_classes, kernel_size=1, stride=1, bias=True)
    elif name == "mvit_v2_s":
        model.head[1] = nn.Linear(model.head[1].in_features, num_classes)
    elif name == "swin3d_t":
        model.head = nn.Linear(model.head.in_features, num_classes)
    else:  # pragma: no cover - registry and this table are kept together
        raise ConfigurationError(f"no head replacement for {name}")


def _per_frame(name: str, num_classes: int, pretrained: bool, temporal_head: str, dropout: float) -> nn.Module:
    tv = _torchvision()
    image_name = name.removeprefix("frames_")
    encoder = getattr(tv.models, image_name)(weights=None)
    if pretrained:
        encoder.load_state_dict(_load_cached_weights(image_name))
    if image_name == "resnet18":
        feature_dim = encoder.fc.in_features
        encoder.fc = nn.Identity()
    elif image_name == "mobilenet_v3_small":
        feature_dim = encoder.classifier[0].in_features
        encoder.classifier = nn.Identity()
    else:  # efficientnet_b0
        feature_dim = encoder.classifier[1].in_features
        encoder.classifier = nn.Identity()
    return PerFrameCNN(encoder, feature_dim, num_classes, temporal_head=temporal_head, dropout=dropout)


def rebuild_from_checkpoint(checkpoint: dict[str, Any]) -> VideoClassifier:
    """The model of a checkpoint dict (``model_args`` + ``model`` state dict), in eval mode.

    Pretrained loading is turned off: the weights come from the checkpoint.

    Raises:
        ConfigurationError: the checkpoint has no ``model_args``/``model``, or they do not fit.
    """
    try:
        args = dict(checkpoint["model_args"])
        state = checkpoint["model"]
    except (KeyError, TypeError) as exc:
        raise ConfigurationError("the checkpoint has no 'model_args' and 'model' entries", hint="was it written by pytrain.training?") from exc
    args["pretrained"] = False
    model = build_model(**args)
    model.load_state_dict(state)
    return model.eval()
