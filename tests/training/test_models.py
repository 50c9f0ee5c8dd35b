"""Every architecture builds and runs; pretrained weights are never silently replaced."""

from __future__ import annotations

import sys

import pytest
import torch

from pytrain.errors import ConfigurationError
from pytrain.training.models import ARCHITECTURES, build_model, cached_weights_path, rebuild_from_checkpoint

# the smallest clip each architecture takes (mvit_v2_s's position embeddings fix 16 x 224 x 224)
SMALL = {name: (4, 32, 32) for name in ARCHITECTURES} | {"tiny": (8, 32, 32), "s3d": (8, 32, 32), "mvit_v2_s": (16, 224, 224)}
FAST = [name for name in ARCHITECTURES if name != "mvit_v2_s"]


def _needs_torchvision(name: str) -> None:
    # the Docker test image has torch alone: only torchvision architectures are skipped there
    if name != "tiny":
        pytest.importorskip("torchvision")


def _forward(name: str, batch: int = 2, **kwargs) -> torch.Tensor:
    _needs_torchvision(name)
    t, h, w = SMALL[name]
    torch.manual_seed(0)
    model = build_model(name, 3, t, h, w, **kwargs).eval()
    clips = torch.randint(0, 256, (batch, t, h, w, 3), dtype=torch.uint8)
    with torch.no_grad():
        return model(clips)


@pytest.mark.parametrize("name", FAST)
def test_architecture_builds_and_runs_a_forward_pass(name):
    logits = _forward(name)
    assert logits.shape == (2, 3) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_mvit_v2_s_builds_and_runs_at_16x224x224():
    logits = _forward("mvit_v2_s", batch=1)
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()


def test_per_frame_model_with_gru_head_runs():
    assert _forward("frames_mobilenet_v3_small", temporal_head="gru").shape == (2, 3)


def test_torchvision_architecture_without_torchvision_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes "import torchvision" fail
    with pytest.raises(ConfigurationError, match="needs torchvision") as info:
        build_model("r3d_18", 3, 4, 32, 32)
    assert "'tiny'" in info.value.hint


def test_mvit_v2_s_refuses_other_clip_sizes():
    with pytest.raises(ConfigurationError, match="exactly 16 frames of 224x224"):
        build_model("mvit_v2_s", 3, 8, 112, 112)


def test_s3d_refuses_clips_below_its_minimum_size():
    with pytest.raises(ConfigurationError, match="at least 8 frames of 32x32"):
        build_model("s3d", 3, 4, 32, 32)


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ConfigurationError, match="unknown architecture 'resnet9000'") as info:
        build_model("resnet9000", 3, 8, 32, 32)
    assert "r3d_18" in info.value.hint


@pytest.mark.parametrize("name", ["r3d_18", "frames_resnet18"])
def test_pretrained_weights_absent_from_the_cache_is_a_clear_error(name, tmp_path, monkeypatch):
    _needs_torchvision(name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    with pytest.raises(ConfigurationError, match="not in the local torch cache") as info:
        build_model(name, 3, 4, 32, 32, pretrained=True)
    assert str(tmp_path) in info.value.message
    assert "download.pytorch.org" in info.value.hint


def test_pretrained_weights_are_loaded_from_the_cache_when_present(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("r3d_18").DEFAULT.url
    torch.manual_seed(1)
    reference = torchvision.models.video.r3d_18()
    path = cached_weights_path(url)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = build_model("r3d_18", 3, 4, 32, 32, pretrained=True)
    assert torch.equal(model.backbone.stem[0].weight, reference.stem[0].weight)
    assert model.backbone.fc.out_features == 3


def test_tiny_has_no_pretrained_weights():
    with pytest.raises(ConfigurationError, match="no pretrained weights"):
        build_model("tiny", 3, 8, 32, 32, pretrained=True)


def test_checkpoint_constructor_args_rebuild_the_same_model():
    torch.manual_seed(0)
    model = build_model("tiny", 4, 8, 32, 32, dropout=0.3).eval()
    rebuilt = rebuild_from_checkpoint({"model_args": model.model_args, "model": model.state_dict()})
    clips = torch.randint(0, 256, (2, 8, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(clips), rebuilt(clips))
    assert rebuilt.model_args["dropout"] == 0.3


def test_preprocess_normalises_and_moves_channels_first():
    from pytrain.training.preprocess import KINETICS_MEAN, KINETICS_STD, Preprocess

    frames = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8)
    out = Preprocess(KINETICS_MEAN, KINETICS_STD)(frames)
    expected = (frames.float() / 255 - torch.tensor(KINETICS_MEAN)) / torch.tensor(KINETICS_STD)
    assert out.shape == (2, 3, 3, 4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected.permute(0, 4, 1, 2, 3), rtol=1e-5, atol=1e-5)
