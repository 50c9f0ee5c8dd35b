"""ONNX export: signature from the tensor spec, dynamic batch, parity with PyTorch on real clips."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pytrain.errors import ExportError
from pytrain.spec import TensorSpec
from pytrain.training.export import PARITY_ATOL, export_checkpoint
from pytrain.training.models import build_model
from pytrain.video import read_clip


def _real_clips(sources, n, t, h, w) -> np.ndarray:
    paths = sorted((sources / "dataset1").glob("*/*.mp4"))[:n]
    return np.stack([read_clip(p, t, h, w) for p in paths])


def _checkpoint(architecture: str, t: int, h: int, w: int) -> dict:
    torch.manual_seed(0)
    model = build_model(architecture, 3, t, h, w).eval()
    return {"model_args": model.model_args, "model": model.state_dict()}


def _spec(t, h, w, **names) -> TensorSpec:
    return TensorSpec(class_list=["a", "b", "c"], num_frames=t, height=h, width=w, architecture="tiny", **names)


def test_onnx_matches_pytorch_on_real_clips_with_a_dynamic_batch(tmp_path, synthetic_sources):
    spec = _spec(8, 32, 32)
    checkpoint = _checkpoint("tiny", 8, 32, 32)
    clips = _real_clips(synthetic_sources, 3, 8, 32, 32)
    report = export_checkpoint(checkpoint, tmp_path, spec, clips)
    assert report["parity"]["max_abs_diff"] <= PARITY_ATOL and report["parity"]["argmax_agree"]

    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("time_distributed_input", "tensor(uint8)", [8, 32, 32, 3])
    assert (out.name, out.type, out.shape[1:]) == ("dense", "tensor(float)", [3])
    assert isinstance(inp.shape[0], str)  # symbolic batch axis
    for batch in (1, 5):
        probs = session.run(None, {"time_distributed_input": np.concatenate([clips, clips])[:batch]})[0]
        assert probs.shape == (batch, 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert TensorSpec.load(tmp_path) == spec
    assert json.loads((tmp_path / "tensor_spec.json").read_text())["input_shape"] == [-1, 8, 32, 32, 3]


def test_export_uses_the_tensor_names_of_the_spec(tmp_path, synthetic_sources):
    spec = _spec(8, 32, 32, input_name="frames", output_name="probabilities")
    export_checkpoint(_checkpoint("tiny", 8, 32, 32), tmp_path, spec, _real_clips(synthetic_sources, 2, 8, 32, 32))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["frames"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]


def test_export_refuses_parity_clips_of_the_wrong_size(tmp_path):
    with pytest.raises(ExportError, match="parity clips have shape"):
        export_checkpoint(_checkpoint("tiny", 8, 32, 32), tmp_path, _spec(8, 32, 32), np.zeros((2, 8, 16, 16, 3), np.uint8))
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["r3d_18", "frames_mobilenet_v3_small"])
def test_torchvision_architectures_export_with_parity(tmp_path, synthetic_sources, architecture):
    pytest.importorskip("torchvision")
    spec = _spec(4, 32, 32)
    report = export_checkpoint(_checkpoint(architecture, 4, 32, 32), tmp_path, spec, _real_clips(synthetic_sources, 2, 4, 32, 32))
    assert report["parity"]["max_abs_diff"] <= PARITY_ATOL
