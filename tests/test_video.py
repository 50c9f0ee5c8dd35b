"""The decoders behind ``pytrain.video.decode_clip`` (``PYTRAIN_DECODER``): decord and torchcodec, on real H.264 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.clips import make_bad_files, make_lavfi_clip
from pytrain.errors import ConfigurationError, VideoDecodeError
from pytrain.video import CPU_DECODERS, decode_clip, default_decoder, read_clip

pytest.importorskip("torchcodec", reason="the torchcodec decoder is part of the dev install (pyproject's torchcodec extra)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lavfi_clip(tmp_path_factory.mktemp("video") / "mandelbrot.mp4", source="mandelbrot", size="160x120", rate=25, seconds=2)


def test_both_decoders_give_the_same_frames_at_native_size(clip: Path) -> None:
    decord_clip, torchcodec_clip = (read_clip(clip, 8, 120, 160, decoder=d) for d in CPU_DECODERS)
    assert decord_clip.shape == torchcodec_clip.shape == (8, 120, 160, 3)
    assert decord_clip.dtype == torchcodec_clip.dtype == np.uint8
    # the same frames (sample_indices over the same frame count) and the same colour conversion
    assert np.array_equal(decord_clip, torchcodec_clip)


@pytest.mark.parametrize("size", [(112, 112), (64, 48)])
def test_decoders_differ_only_by_their_scalers_rounding(clip: Path, size: tuple[int, int]) -> None:
    decord_clip, torchcodec_clip = (read_clip(clip, 8, *size, decoder=d).astype(np.int16) for d in CPU_DECODERS)
    assert decord_clip.shape == torchcodec_clip.shape == (8, *size, 3)
    # measured here on ffmpeg's mandelbrot and testsrc2 sources: mean |diff| 0.1-4.9 of 255 (the
    # scalers' filters differ); a wrong frame or a swapped channel order gives tens
    assert np.abs(decord_clip - torchcodec_clip).mean() < 8


def test_training_jitter_samples_the_same_frames_with_either_decoder(clip: Path) -> None:
    clips = [decode_clip(clip, 6, 120, 160, rng=np.random.default_rng(7), decoder=d) for d in CPU_DECODERS]
    assert np.array_equal(*clips)


def test_pytrain_decoder_picks_the_default(monkeypatch: pytest.MonkeyPatch, clip: Path) -> None:
    monkeypatch.setenv("PYTRAIN_DECODER", "torchcodec")
    assert default_decoder() == "torchcodec"
    monkeypatch.setenv("PYTRAIN_DECODER", "opencv")
    with pytest.raises(ConfigurationError, match=r"PYTRAIN_DECODER='opencv' is not a decoder PyTrain knows"):
        read_clip(clip, 4, 32, 32)
    monkeypatch.delenv("PYTRAIN_DECODER")
    assert default_decoder() == "decord"


@pytest.mark.parametrize("decoder", CPU_DECODERS)
def test_bad_files_raise_a_decode_error_naming_the_file_with_either_decoder(tmp_path: Path, decoder: str) -> None:
    for kind, path in make_bad_files(tmp_path).items():
        with pytest.raises(VideoDecodeError) as info:
            read_clip(path, 4, 32, 32, decoder=decoder)
        assert str(path) in str(info.value), kind


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error of a host without CUDA")
def test_nvdec_without_a_gpu_names_what_is_missing(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"PYTRAIN_DECODER=nvdec needs an NVIDIA GPU, but torch sees no CUDA device") as info:
        read_clip(clip, 4, 32, 32, decoder="nvdec")
    assert "PYTRAIN_DECODER=decord" in str(info.value)
    monkeypatch.setenv("PYTRAIN_DECODER", "nvdec")  # a known decoder: refused for the missing GPU, not as unknown
    assert default_decoder() == "nvdec"
