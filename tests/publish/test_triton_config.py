"""Generated Triton configs and the PyTrain INI config: validation, golden files, exact bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from pytrain.errors import PublishError
from pytrain.publish import triton_config
from pytrain.publish.examples import example_files
from pytrain.spec import TensorSpec

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPEC = TensorSpec(class_list=["cooking", "drinking", "eating", "walking"], num_frames=8, height=32, width=32)


def test_gpu_config_matches_golden_file() -> None:
    text = triton_config.gpu_config_pbtxt("kitchen", SPEC, max_batch_size=4)
    assert text == (GOLDEN / "config.pbtxt").read_text()


def test_cpu_config_matches_golden_file() -> None:
    text = triton_config.cpu_config_pbtxt("kitchen", SPEC, max_batch_size=4)
    assert text == (GOLDEN / "cpu.pbtxt").read_text()


def test_gpu_config_parses_into_model_config_with_required_fields() -> None:
    config = text_format.Parse(triton_config.gpu_config_pbtxt("kitchen", SPEC, max_batch_size=4), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert config.version_policy.latest.num_versions == 2
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("time_distributed_input", model_config_pb2.TYPE_UINT8, [8, 32, 32, 3])
    assert (out.name, out.data_type, list(out.dims), out.label_filename) == ("dense", model_config_pb2.TYPE_FP32, [4], "labels.txt")


def test_cpu_config_differs_from_gpu_config_only_in_runtime_and_instance_kind() -> None:
    gpu = triton_config.parse_pbtxt(triton_config.gpu_config_pbtxt("kitchen", SPEC, max_batch_size=4))
    cpu = triton_config.parse_pbtxt(triton_config.cpu_config_pbtxt("kitchen", SPEC, max_batch_size=4))
    assert cpu.backend == "python" and not cpu.platform
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "version_policy"):
        assert getattr(cpu, field) == getattr(gpu, field), field


@pytest.mark.parametrize(
    "change, message",
    [
        ({"instance_group": [{"kind": "KIND_TPU"}]}, "KIND_TPU"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"backend": "python"}, "exactly one of platform and backend"),
        ({"input": [{"name": "x", "data_type": "TYPE_UINT8", "dims": [0, 3]}]}, "dims"),
    ],
)
def test_invalid_config_data_is_rejected_before_writing(change: dict, message: str) -> None:
    data = {**triton_config.gpu_config_data("kitchen", SPEC, max_batch_size=4), **change}
    with pytest.raises(PublishError, match=message):
        triton_config.to_model_config(data)


def test_unsupported_dtype_is_rejected() -> None:
    with pytest.raises(PublishError, match="complex64"):
        triton_config.triton_dtype("complex64")


def test_pytrain_ini_is_byte_for_byte_the_seed_format() -> None:
    spec = TensorSpec(class_list=["Other", "cooking", "drinking", "eating", "pouring"], num_frames=20, height=224, width=224)
    text = triton_config.pytrain_ini(spec, epochs=50, shuffle_size=300, batch_size=4)
    assert text.encode("utf-8") == (
        b"[PREDICTION]\n"
        b"num_frames = 20\n"
        b"class_list = ['Other', 'cooking', 'drinking', 'eating', 'pouring']\n"
        b"height = 224\n"
        b"width = 224\n"
        b"input_name = time_distributed_input\n"
        b"output_name = dense\n"
        b"\n"
        b"[TRAINING]\n"
        b"epochs = 50\n"
        b"shuffle_size = 300\n"
        b"batch_size = 4\n"
    )


def test_pytrain_ini_reads_back() -> None:
    text = triton_config.pytrain_ini(SPEC, epochs=3, shuffle_size=10, batch_size=2)
    assert triton_config.read_pytrain_ini(text) == {
        "num_frames": 8, "class_list": SPEC.class_list, "height": 32, "width": 32,
        "input_name": "time_distributed_input", "output_name": "dense", "epochs": 3, "shuffle_size": 10, "batch_size": 2,
    }


@pytest.mark.parametrize("text, message", [
    ("hello\nworld\n", "invalid PyTrain model config: MissingSectionHeaderError: File contains no section headers."),
    ("[PREDICTION]\nnum_frames = 4\n", "invalid PyTrain model config: missing section or key 'TRAINING'"),
    ("[PREDICTION]\nnum_frames = four\n[TRAINING]\n", "invalid PyTrain model config: ValueError: invalid literal for int() with base 10: 'four'"),
])
def test_a_malformed_pytrain_ini_is_one_line_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PublishError) as caught:
        triton_config.read_pytrain_ini(text)
    assert caught.value.message == message
    assert caught.value.hint == "expected [PREDICTION] and [TRAINING] as publishing writes them"


def test_labels_file_has_one_class_per_line_in_output_order() -> None:
    assert triton_config.labels_text(SPEC) == "cooking\ndrinking\neating\nwalking\n"


def test_examples_folder_is_in_sync_with_the_code() -> None:
    for relative, text in example_files().items():
        path = EXAMPLES / relative
        assert path.is_file(), f"{path} missing: run python -m pytrain.publish.examples examples/"
        assert path.read_text() == text, f"{path} is stale: run python -m pytrain.publish.examples examples/"


def test_tensorrt_config_matches_golden_file_and_differs_only_by_its_optimization_block() -> None:
    text = triton_config.gpu_config_pbtxt("kitchen", SPEC, max_batch_size=4, accelerator="tensorrt", repository="/models")
    assert text == (GOLDEN / "config_tensorrt.pbtxt").read_text()
    trt = triton_config.parse_pbtxt(text)
    plain = triton_config.parse_pbtxt(triton_config.gpu_config_pbtxt("kitchen", SPEC, max_batch_size=4))
    assert not plain.HasField("optimization")
    trt.ClearField("optimization")
    assert trt == plain


def test_tensorrt_profile_has_static_clip_and_dynamic_batch_and_caches_in_the_models_folder() -> None:
    spec = TensorSpec(class_list=["a", "b"], num_frames=16, height=112, width=96, input_name="clips")
    config = triton_config.parse_pbtxt(
        triton_config.gpu_config_pbtxt("ward", spec, max_batch_size=8, accelerator="tensorrt", repository="/srv/repo/")
    )
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/srv/repo/ward/trt_engine_cache",
        "trt_profile_min_shapes": "clips:1x16x112x96x3",
        "trt_profile_opt_shapes": "clips:8x16x112x96x3",
        "trt_profile_max_shapes": "clips:8x16x112x96x3",
    }


def test_unknown_accelerator_is_refused_with_the_known_ones() -> None:
    with pytest.raises(PublishError, match=r"unknown Triton accelerator 'openvino'.*one of \('none', 'tensorrt'\)"):
        triton_config.gpu_config_pbtxt("kitchen", SPEC, max_batch_size=4, accelerator="openvino")


def test_a_dense_models_configs_carry_its_sampling_as_parameters_and_uniform_configs_none():
    from dataclasses import replace

    from google.protobuf import json_format

    from pytrain.publish.triton_config import sampling_from_parameters, sampling_parameters
    from pytrain.publish.versions import compatible

    uniform = TensorSpec(class_list=["a", "b"], num_frames=4, height=32, width=32)
    dense = replace(uniform, sampling="dense", frame_interval=3, test_clips=2)
    assert sampling_parameters(uniform) == {}
    assert "parameters" not in triton_config.gpu_config_pbtxt("kitchen", uniform, max_batch_size=4)
    assert 'key: "pytrain_sampling"' in triton_config.cpu_config_pbtxt("kitchen", dense, max_batch_size=4)
    text = triton_config.gpu_config_pbtxt("kitchen", dense, max_batch_size=4)
    assert 'key: "pytrain_sampling"' in text
    # what a client reads back over gRPC (the config as JSON) gives the training sampling
    config = json_format.MessageToDict(text_format.Parse(text, model_config_pb2.ModelConfig()), preserving_proto_field_name=True)
    assert sampling_from_parameters(config) == {"sampling": "dense", "frame_interval": 3, "test_clips": 2}
    assert sampling_from_parameters({}) == {}
    # one config cannot describe two samplings: versions differing in it are not served together
    assert not compatible(uniform, dense) and compatible(dense, replace(dense))
