"""Clip sampling and decoding shared by training (evaluation mode) and the client.

Training's evaluation transform and ``pytrain predict``/``evaluate`` both call :func:`decode_views`
(:func:`read_clip` is its one-view uniform case), so a clip is sampled
(:func:`pytrain.sampling.clip_indices`) and resized the same way on both sides. Normalisation is *not* done here: it lives inside
the model (and so inside the exported ONNX graph), see :mod:`pytrain.training.preprocess`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pytrain.errors import ConfigurationError, VideoDecodeError
from pytrain.sampling import ClipSampling, clip_indices

#: The decoders behind :func:`decode_clip`; the first is the default. ``PYTRAIN_DECODER`` picks one
#: (:class:`pytrain.settings.Settings` validates it; this module reads the variable itself because
#: the training entrypoint runs where PyTrain's settings package may be absent).
CPU_DECODERS = ("decord", "torchcodec")
#: ``nvdec``: the GPU's hardware decoder (:func:`nvdec_frames`), on NVIDIA GPUs only.
DECODERS = (*CPU_DECODERS, "nvdec")
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
    """Frame indices for one clip of ``num_frames`` frames sampled uniformly over a video.

    The video is cut into ``num_frames`` equal segments (the TSN scheme, Wang et al. 2016,
    "Temporal Segment Networks", ECCV). Evaluation (``rng is None``) takes the centre frame of each
    segment, so it is deterministic; training (``rng`` given) takes a uniformly random frame inside
    each segment (temporal jitter). This is :func:`pytrain.sampling.clip_indices` in ``uniform``
    mode with one clip.

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
    return clip_indices(num_video_frames, num_frames, rng=rng)[0]


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

    :func:`decode_views` in ``uniform`` mode with one clip (see there for the decoders).

    Returns:
        ``(num_frames, height, width, 3)`` uint8 RGB.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or has no decodable frame.
        ConfigurationError: an unknown decoder, or torchcodec asked for and not installed.
    """
    return decode_views(path, num_frames, height, width, rng=rng, decoder=decoder)[0]


def _checked_input(path: str | Path, decoder: str | None) -> tuple[Path, str]:
    """``(path, decoder)`` for :func:`decode_views`, once the decoder is known and the file is there.

    Raises:
        ConfigurationError: an unknown decoder.
        VideoDecodeError: the file is missing or empty.
    """
    decoder = decoder or default_decoder()
    if decoder not in DECODERS:
        raise ConfigurationError(f"unknown decoder {decoder!r}", hint=f"use one of {DECODERS} ({DECODER_ENV})")
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "no such file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "the file is empty")
    return path, decoder


def decode_views(
    path: str | Path, num_frames: int, height: int, width: int, sampling: ClipSampling | None = None, *,
    rng: np.random.Generator | None = None, clip: int = 0, decoder: str | None = None,
) -> np.ndarray:
    """Decode the clips :func:`pytrain.sampling.clip_indices` picks, resized to ``height x width``.

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
        num_frames: frames per clip (T).
        height, width: output size in pixels.
        sampling: the sampling mode and counts (default: uniform, one clip).
        rng: ``None`` for evaluation (deterministic, ``sampling.test_clips`` views); a generator
            for one training clip.
        clip: with ``rng``, which of the video's ``sampling.num_clips`` training clips.
        decoder: ``decord`` or ``torchcodec``; default :func:`default_decoder`.

    Returns:
        ``(V, num_frames, height, width, 3)`` uint8 RGB; ``V`` is ``sampling.test_clips`` for
        evaluation, 1 for training.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or has no decodable frame.
        ConfigurationError: an unknown decoder, or torchcodec asked for and not installed.
    """
    shape: list[int] = []

    def pick(total: int) -> np.ndarray:
        indices = clip_indices(total, num_frames, sampling, rng=rng, clip=clip)
        shape[:] = indices.shape
        return indices.reshape(-1)

    frames = decode_picked(path, height, width, pick, decoder=decoder)
    return frames.reshape(shape[0], num_frames, height, width, 3)


def decode_picked(path: str | Path, height: int, width: int, pick: Callable[[int], np.ndarray], *,
                  decoder: str | None = None) -> np.ndarray:
    """Decode the frames ``pick(frame_count)`` names, resized to ``height x width`` (the one decode
    step under :func:`decode_views`; see there for the decoders).

    Args:
        path: the video file.
        height, width: output size in pixels.
        pick: given the video's frame count, the frame indices to decode (1-D int, each in range).
        decoder: default :func:`default_decoder`.

    Returns:
        ``(len(pick(n)), height, width, 3)`` uint8 RGB.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or has no decodable frame.
        ConfigurationError: an unknown decoder, or its library not installed.
    """
    path, decoder = _checked_input(path, decoder)
    wanted: list[int] = []

    def listed(total: int) -> list[int]:
        wanted[:] = np.asarray(pick(total)).reshape(-1).tolist()
        return wanted

    decode = _DECODE[decoder]
    try:
        frames = decode(path, height, width, listed)
    except (VideoDecodeError, ConfigurationError):
        raise
    except Exception as exc:  # the decoders raise DECORDError / RuntimeError for unreadable input
        raise _decoder_error(path, exc) from exc
    if frames.shape != (len(wanted), height, width, 3):
        raise VideoDecodeError(path, f"decoded shape {frames.shape}, expected {(len(wanted), height, width, 3)}")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _decode_decord(path: Path, height: int, width: int, pick: Callable[[int], list[int]]) -> np.ndarray:
    """Frames ``pick(frame_count)`` of ``path``, resized: ``(len, H, W, 3)`` uint8."""
    import decord  # imported here: the orchestrator never decodes

    reader = decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    total = len(reader)
    if total < 1:
        raise VideoDecodeError(path, "the video has no frames")
    indices = pick(total)
    try:
        return reader.get_batch(indices).asnumpy()
    except decord.DECORDError as exc:
        if "size must exactly match" not in str(exc):
            raise
        native = decord.VideoReader(str(path), num_threads=1)
        return _resize(native.get_batch(indices).asnumpy(), height, width)


def _decode_torchcodec(path: Path, height: int, width: int, pick: Callable[[int], list[int]]) -> np.ndarray:
    """As :func:`_decode_decord`, with torchcodec's ``Resize`` transform."""
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
    return reader.get_frames_at(pick(total)).data.numpy()


def nvdec_frames(path: str | Path, height: int, width: int, indices: list[int], *, device: str = "cuda") -> "torch.Tensor":
    """Frames ``indices`` of ``path`` decoded on the GPU's video decoder (NVDEC) and resized there.

    torchcodec's CUDA device decodes (docs/adr/0014-clip-cache-proxies-nvdec.md says why this library,
    provisionally: the choice is to be measured on a GPU); the resize is ``torch``'s bilinear
    interpolation with antialiasing on the device, so the frames never leave the GPU. The pixels
    differ from decord's (another scaler, and NVDEC's own YUV->RGB conversion): ``tests/gpu``
    bounds the mean difference.

    Args:
        path: the video file.
        height, width: output size in pixels.
        indices: frame indices, each in ``[0, frame count)``.
        device: the CUDA device.

    Returns:
        ``(len(indices), height, width, 3)`` uint8 RGB on ``device``.

    Raises:
        ConfigurationError: no CUDA device, torchcodec missing or without CUDA support, or no
            hardware decoder for the file's codec on this GPU (the message names what is missing).
    """
    import torch

    VideoDecoder = _nvdec_ready()
    try:
        reader = VideoDecoder(str(path), device=device, dimension_order="NCHW")
        frames = reader.get_frames_at(list(indices)).data
    except RuntimeError as exc:
        text = str(exc)
        if any(word in text for word in ("CUDA", "cuda", "NVDEC", "nvdec", "Unsupported", "not supported")):
            raise ConfigurationError(f"{path}: the GPU's video decoder cannot decode it: {text.splitlines()[0]}",
                                     hint="this GPU or this torchcodec build has no NVDEC for the codec; "
                                     "make proxies (pytrain sources sync --proxies: H.264) or use PYTRAIN_DECODER=decord") from exc
        raise
    resized = torch.nn.functional.interpolate(frames.float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _nvdec_ready() -> type:
    """torchcodec's ``VideoDecoder`` when a CUDA device is there to decode on.

    Raises:
        ConfigurationError: no CUDA device, or torchcodec cannot be imported (naming which).
    """
    import torch

    if not torch.cuda.is_available():
        raise ConfigurationError("PYTRAIN_DECODER=nvdec needs an NVIDIA GPU, but torch sees no CUDA device",
                                 hint="run on a GPU host with the NVIDIA driver, or use PYTRAIN_DECODER=decord")
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as exc:
        raise ConfigurationError(f"PYTRAIN_DECODER=nvdec decodes with torchcodec's CUDA device, but torchcodec cannot be imported: {exc}",
                                 hint="pip install torchcodec (the CUDA build matching torch), or PYTRAIN_DECODER=decord") from exc
    return VideoDecoder


def nvdec_picked(path: str | Path, height: int, width: int, pick: Callable[[int], np.ndarray]) -> "torch.Tensor":
    """:func:`decode_picked` with ``nvdec``, the frames left on the GPU: ``(N, H, W, 3)`` uint8 CUDA.

    Raises:
        VideoDecodeError: the file is missing, empty, not a video, or has no decodable frame.
        ConfigurationError: see :func:`nvdec_frames`.
    """
    path, _ = _checked_input(path, "nvdec")
    VideoDecoder = _nvdec_ready()
    try:
        total = int(VideoDecoder(str(path)).metadata.num_frames or 0)  # the CPU index: counting needs no GPU
        if total < 1:
            raise VideoDecodeError(path, "the video has no frames")
        return nvdec_frames(path, height, width, np.asarray(pick(total)).reshape(-1).tolist())
    except (VideoDecodeError, ConfigurationError):
        raise
    except Exception as exc:  # torchcodec raises RuntimeError / ValueError for unreadable input
        raise _decoder_error(path, exc) from exc


def _decode_nvdec(path: Path, height: int, width: int, pick: Callable[[int], list[int]]) -> np.ndarray:
    """As :func:`_decode_decord`, on the GPU (:func:`nvdec_picked`), copied to the host."""
    return nvdec_picked(path, height, width, pick).cpu().numpy()


def _decoder_error(path: str | Path, exc: Exception) -> VideoDecodeError:
    """A decoder library's exception as a :class:`VideoDecodeError` naming the file: its type and
    first line (FFmpeg's messages go on for lines)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "decoder error"
    return VideoDecodeError(path, f"{type(exc).__name__}: {first_line}")


#: :data:`DECODERS` -> the function decoding ``(path, height, width, pick)``.
_DECODE: dict[str, Callable[[Path, int, int, Callable[[int], list[int]]], np.ndarray]] = {
    "decord": _decode_decord, "torchcodec": _decode_torchcodec, "nvdec": _decode_nvdec,
}


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def video_seconds(path: str | Path) -> float:
    """Duration of a video in seconds: its frame count over its average frame rate (decord's index).

    Raises:
        VideoDecodeError: the file cannot be opened, or reports no frames or no frame rate.
    """
    frames, fps = _frames_and_fps(path)
    return frames / fps


def video_fps(path: str | Path) -> float:
    """A video's average frame rate, frames per second (decord's index).

    Raises:
        VideoDecodeError: the file cannot be opened, or reports no frames or no frame rate.
    """
    return _frames_and_fps(path)[1]


def _frames_and_fps(path: str | Path) -> tuple[int, float]:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        frames, fps = len(reader), float(reader.get_avg_fps())
    except Exception as exc:  # DECORDError / RuntimeError for unreadable input
        raise _decoder_error(path, exc) from exc
    if frames < 1 or not fps > 0:
        raise VideoDecodeError(path, f"{frames} frames at {fps} fps: no duration")
    return frames, fps


def median_seconds(paths: list[str | Path], *, limit: int = 200) -> float | None:
    """The median duration (seconds) of up to ``limit`` of ``paths`` (evenly spread over the list,
    so the figure costs at most ``limit`` file opens); files that cannot be read are left out.
    ``None`` when none can be read."""
    return _median(paths, video_seconds, limit)


def clip_seconds(paths: list[str | Path], num_frames: int, sampling: ClipSampling | None = None, *, limit: int = 200) -> float | None:
    """The time one model input spans, seconds, over the videos ``paths`` (training's): ``uniform``
    sampling spreads a clip over a whole video, so the videos' median duration
    (:func:`median_seconds`); ``dense`` sampling takes ``num_frames * frame_interval`` frames, so
    that many frames at the videos' median frame rate. ``None`` when no file can be read.

    A live stream is sampled at ``num_frames / clip_seconds`` frames per second
    (:mod:`pytrain.client.stream`): for ``dense`` that is every ``frame_interval``-th frame at the
    training videos' frame rate.
    """
    sampling = sampling or ClipSampling()
    if sampling.mode == "uniform":
        return median_seconds(paths, limit=limit)
    fps = _median(paths, video_fps, limit)
    return None if fps is None else sampling.window(num_frames) / fps


def _median(paths: list[str | Path], measure: Callable[[str | Path], float], limit: int) -> float | None:
    if not paths:
        return None
    step = max(1, len(paths) // limit)
    values = []
    for path in list(paths)[::step][:limit]:
        try:
            values.append(measure(path))
        except VideoDecodeError:
            continue
    return float(np.median(values)) if values else None
