"""Clip sampling and decoding shared by training (evaluation mode) and the client.

Training's evaluation transform and ``pytrain predict`` both call :func:`read_clip`, so a clip is
sampled and resized the same way on both sides. Normalisation is *not* done here: it lives inside
the model (and so inside the exported ONNX graph), see :mod:`pytrain.training.preprocess`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pytrain.errors import ConfigurationError, VideoDecodeError

#: The decoders behind :func:`decode_clip`; the first is the default. ``PYTRAIN_DECODER`` picks one
#: (:class:`pytrain.settings.Settings` validates it; this module reads the variable itself because
#: the training entrypoint runs where PyTrain's settings package may be absent).
DECODERS = ("decord", "torchcodec")
DECODER_ENV = "PYTRAIN_DECODER"


def default_decoder() -> str:
    """The decoder ``PYTRAIN_DECODER`` names, else ``decord``.

    Raises:
        ConfigurationError: an unknown name.
    """
    name = os.environ.get(DECODER_ENV, "").strip() or DECODERS[0]
    if name not in DECODERS:
        raise ConfigurationError(f"{DECODER_ENV}={name!r} is not a decoder PyTrain knows", hint=f"use one of {DECODERS}")
    return name


def sample_indices(num_video_frames: int, num_frames: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices for a clip of ``num_frames`` frames sampled uniformly over a video.

    The video is cut into ``num_frames`` equal segments (the TSN scheme, Wang et al. 2016,
    "Temporal Segment Networks", ECCV). Evaluation (``rng is None``) takes the centre frame of each
    segment, so it is deterministic; training (``rng`` given) takes a uniformly random frame inside
    each segment (temporal jitter).

    A video shorter than ``num_frames`` frames gets repeated indices (each frame is shown for
    about ``num_frames / num_video_frames`` steps), so the clip always has ``num_frames`` frames.

    Args:
        num_video_frames: frames in the video (>= 1).
        num_frames: frames wanted in the clip (>= 1).
        rng: random generator for training jitter; ``None`` for evaluation.

    Returns:
        ``(num_frames,)`` int64 indices, non-decreasing, each in ``[0, num_video_frames)``.

    Raises:
        ValueError: ``num_video_frames < 1`` or ``num_frames < 1``.
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    segment = num_video_frames / num_frames
    starts = np.arange(num_frames, dtype=np.float64) * segment
    if rng is None:
        positions = starts + segment / 2.0
    else:
        positions = starts + rng.random(num_frames) * segment
    indices = np.floor(positions).astype(np.int64)
    return np.clip(indices, 0, num_video_frames - 1)


def read_clip(path: str | Path, num_frames: int, height: int, width: int, *, decoder: str | None = None) -> np.ndarray:
    """Decode the evaluation clip of a video: uniform centre sampling, resized while decoding.

    This is the one decode path of evaluation in training and of ``pytrain predict``.

    Args:
        path: an mp4 (or any container FFmpeg reads).
        num_frames: frames in the clip (T).
        height, width: output frame size in pixels.
        decoder: ``decord`` or ``torchcodec``; default :func:`default_decoder`.

    Returns:
        ``(num_frames, height, width, 3)`` uint8 RGB.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or has no decodable frame.
        ConfigurationError: an unknown decoder.
    """
    return decode_clip(path, num_frames, height, width, rng=None, decoder=decoder)


def decode_clip(
    path: str | Path, num_frames: int, height: int, width: int, *, rng: np.random.Generator | None = None,
    decoder: str | None = None,
) -> np.ndarray:
    """Decode ``num_frames`` frames sampled with :func:`sample_indices`, resized to ``height x width``.

    Two decoders, both FFmpeg underneath, both resizing while decoding (FFmpeg's scaler):

    - ``decord`` (default). decord 0.6 fails on some target sizes (e.g. 48x32 from 64x64: "The
      size must exactly match"); for those the frames are decoded at native size and resized with
      Pillow's bilinear filter. The choice depends only on the file and the size, so training and
      inference take the same path for the same input.
    - ``torchcodec`` (``pip install torchcodec``, matching the torch version): its ``Resize``
      decoder transform. Pixels differ from decord's by the scalers' rounding and filter, so a
      model should be served with the decoder it was trained with (``PYTRAIN_DECODER`` on both
      hosts); ``tests/test_video.py`` bounds the difference.

    Args:
        path: the video file.
        num_frames: frames in the clip (T).
        height, width: output size in pixels.
        rng: ``None`` for evaluation (deterministic); a generator for training's temporal jitter.
        decoder: ``decord`` or ``torchcodec``; default :func:`default_decoder`.

    Returns:
        ``(num_frames, height, width, 3)`` uint8 RGB.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or has no decodable frame.
        ConfigurationError: an unknown decoder, or torchcodec asked for and not installed.
    """
    decoder = decoder or default_decoder()
    if decoder not in DECODERS:
        raise ConfigurationError(f"unknown decoder {decoder!r}", hint=f"use one of {DECODERS} ({DECODER_ENV})")
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "no such file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "the file is empty")
    decode = _decode_torchcodec if decoder == "torchcodec" else _decode_decord
    try:
        frames = decode(path, num_frames, height, width, rng)
    except (VideoDecodeError, ConfigurationError):
        raise
    except Exception as exc:  # the decoders raise DECORDError / RuntimeError for unreadable input
        raise _decoder_error(path, exc) from exc
    if frames.shape != (num_frames, height, width, 3):
        raise VideoDecodeError(path, f"decoded shape {frames.shape}, expected {(num_frames, height, width, 3)}")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _decode_decord(path: Path, num_frames: int, height: int, width: int, rng: np.random.Generator | None) -> np.ndarray:
    import decord  # imported here: the orchestrator never decodes

    reader = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    total = len(reader)
    if total < 1:
        raise VideoDecodeError(path, "the video has no frames")
    indices = sample_indices(total, num_frames, rng=rng).tolist()
    try:
        return reader.get_batch(indices).asnumpy()
    except decord.DECORDError as exc:
        if "size must exactly match" not in str(exc):
            raise
        native = decord.VideoReader(str(path), num_threads=1)
        return _resize(native.get_batch(indices).asnumpy(), height, width)


def _decode_torchcodec(path: Path, num_frames: int, height: int, width: int, rng: np.random.Generator | None) -> np.ndarray:
    try:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize
    except ImportError as exc:
        raise ConfigurationError(f"PYTRAIN_DECODER=torchcodec, but torchcodec cannot be imported: {exc}",
                                 hint="pip install torchcodec (the release matching torch), or PYTRAIN_DECODER=decord") from exc
    # one FFmpeg thread, as decord's num_threads=1: DataLoader workers are the parallelism
    reader = VideoDecoder(str(path), dimension_order="NHWC", num_ffmpeg_threads=1, transforms=[Resize((height, width))])
    total = int(reader.metadata.num_frames or 0)
    if total < 1:
        raise VideoDecodeError(path, "the video has no frames")
    indices = sample_indices(total, num_frames, rng=rng).tolist()
    return reader.get_frames_at(indices).data.numpy()


def _decoder_error(path: str | Path, exc: Exception) -> VideoDecodeError:
    """A decoder library's exception as a :class:`VideoDecodeError` naming the file: its type and
    first line (FFmpeg's messages go on for lines)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "decoder error"
    return VideoDecodeError(path, f"{type(exc).__name__}: {first_line}")


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def video_seconds(path: str | Path) -> float:
    """Duration of a video in seconds: its frame count over its average frame rate (decord's index).

    Raises:
        VideoDecodeError: the file cannot be opened, or reports no frames or no frame rate.
    """
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        frames, fps = len(reader), float(reader.get_avg_fps())
    except Exception as exc:  # DECORDError / RuntimeError for unreadable input
        raise _decoder_error(path, exc) from exc
    if frames < 1 or not fps > 0:
        raise VideoDecodeError(path, f"{frames} frames at {fps} fps: no duration")
    return frames / fps


def median_seconds(paths: list[str | Path], *, limit: int = 200) -> float | None:
    """The median duration (seconds) of up to ``limit`` of ``paths`` (evenly spread over the list,
    so the figure costs at most ``limit`` file opens); files that cannot be read are left out.
    ``None`` when none can be read."""
    if not paths:
        return None
    step = max(1, len(paths) // limit)
    durations = []
    for path in list(paths)[::step][:limit]:
        try:
            durations.append(video_seconds(path))
        except VideoDecodeError:
            continue
    return float(np.median(durations)) if durations else None
