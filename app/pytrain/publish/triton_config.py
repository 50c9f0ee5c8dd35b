"""Triton model configurations and the PyTrain INI config, generated from one :class:`TensorSpec`.

The configs are built as plain data (dicts shaped like Triton's ``ModelConfig`` protobuf), parsed
into ``tritonclient.grpc.model_config_pb2.ModelConfig`` -- which rejects unknown fields and bad
enum values -- then checked for what the protobuf cannot know (dims against the spec, batching),
and written with ``google.protobuf.text_format``. Nothing here touches the file system.

Two configs per model (Triton's custom model configuration):

- ``config.pbtxt``: production, ``platform: "onnxruntime_onnx"`` on ``KIND_GPU`` instances;
- ``configs/cpu.pbtxt``: the embedded server (``--model-config-name=cpu``): ``backend: "python"``
  on ``KIND_CPU`` running the same ``model.onnx`` with onnxruntime (see
  :mod:`pytrain.serving.python_model`), with the same tensor names, dims, batching and labels.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from pytrain.errors import PublishError
from pytrain.sampling import ClipSampling
from pytrain.settings import TRITON_ACCELERATORS, Settings
from pytrain.spec import TensorSpec

LABELS_FILE = "labels.txt"
CPU_CONFIG_NAME = "cpu"
# Versions a config serves when no explicit list is given (PYTRAIN_SERVED_VERSIONS' default).
NUM_SERVED_VERSIONS: int = Settings.model_fields["served_versions"].default
# Wait at most this long for more requests to join a batch (microseconds).
MAX_QUEUE_DELAY_US = 100

_NUMPY_TO_TRITON = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}


def triton_dtype(numpy_dtype: str) -> str:
    """Triton's ``DataType`` enum name for a numpy dtype name (``"uint8"`` -> ``"TYPE_UINT8"``).

    Raises:
        PublishError: a dtype Triton has no type for.
    """
    try:
        return _NUMPY_TO_TRITON[str(numpy_dtype)]
    except KeyError as exc:
        raise PublishError(
            f"tensor dtype {numpy_dtype!r} has no Triton data type", hint=f"use one of {sorted(_NUMPY_TO_TRITON)}"
        ) from exc


def _io(spec: TensorSpec) -> dict[str, Any]:
    # dims exclude the batch axis: Triton adds it because max_batch_size > 0.
    return {
        "input": [
            {
                "name": spec.input_name,
                "data_type": triton_dtype(spec.input_dtype),
                "dims": spec.input_shape[1:],
            }
        ],
        "output": [
            {
                "name": spec.output_name,
                "data_type": triton_dtype(spec.output_dtype),
                "dims": spec.output_shape[1:],
                "label_filename": LABELS_FILE,
            }
        ],
    }


def version_policy(versions: Sequence[int] | None) -> dict[str, Any]:
    """``version_policy`` as data: ``specific`` listing ``versions`` (the versions this config can
    describe, see :mod:`pytrain.publish.versions`), or ``latest`` ``NUM_SERVED_VERSIONS`` when ``None``.

    Raises:
        PublishError: an empty list or a version below 1.
    """
    if versions is None:
        return {"latest": {"num_versions": NUM_SERVED_VERSIONS}}
    if not versions or min(versions) < 1:
        raise PublishError(f"served versions {list(versions)} must be a non-empty list of integers >= 1")
    return {"specific": {"versions": sorted(int(v) for v in versions)}}


#: ``config.pbtxt`` ``parameters`` keys carrying a model's clip sampling (:func:`sampling_parameters`).
SAMPLING_PARAMETER_PREFIX = "pytrain_"
_SAMPLING_FIELDS = ("sampling", "frame_interval", "test_clips")


def sampling_parameters(spec: TensorSpec) -> dict[str, Any]:
    """The model's clip sampling as Triton ``parameters`` (``pytrain_sampling``,
    ``pytrain_frame_interval``, ``pytrain_test_clips``, string values), so a client that has
    neither the PyTrain config nor the model repository samples videos as training did (Triton's
    model metadata has no such field; its model config does). ``{}`` for the default sampling
    (uniform, one view): those configs stay as they were.
    """
    if spec.clip_sampling == ClipSampling():
        return {}
    return {SAMPLING_PARAMETER_PREFIX + name: {"string_value": str(getattr(spec, name))} for name in _SAMPLING_FIELDS}


def sampling_from_parameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"sampling", "frame_interval", "test_clips"}`` from a Triton model config's ``parameters``
    (as JSON: ``{"pytrain_sampling": {"string_value": "dense"}, ...}``); ``{}`` when it has none.

    Raises:
        PublishError: a value that is not a number where one is expected.
    """
    parameters = config.get("parameters") or {}
    found = {}
    for name in _SAMPLING_FIELDS:
        value = (parameters.get(SAMPLING_PARAMETER_PREFIX + name) or {}).get("string_value")
        if value is None:
            continue
        try:
            found[name] = value if name == "sampling" else int(value)
        except ValueError:
            raise PublishError(f"model config parameter {SAMPLING_PARAMETER_PREFIX + name}={value!r} is not an integer") from None
    return found


def _config_data(model_name: str, spec: TensorSpec, runtime: dict[str, str], kind: str, *, max_batch_size: int,
                 versions: Sequence[int] | None) -> dict[str, Any]:
    """The config both files share: tensors, batching, versions, the clip sampling's parameters;
    ``runtime`` (platform or backend) and the instance ``kind`` are what differ."""
    parameters = sampling_parameters(spec)
    return {
        "name": model_name,
        **runtime,
        "max_batch_size": max_batch_size,
        "version_policy": version_policy(versions),
        **_io(spec),
        "instance_group": [{"count": 1, "kind": kind}],
        "dynamic_batching": {"max_queue_delay_microseconds": MAX_QUEUE_DELAY_US},
        **({"parameters": parameters} if parameters else {}),
    }


def gpu_config_data(model_name: str, spec: TensorSpec, *, max_batch_size: int, versions: Sequence[int] | None = None) -> dict[str, Any]:
    """``config.pbtxt`` as data: ONNX Runtime on GPU instances, dynamic batching, the served versions.

    Args:
        model_name: the Triton model name (the model's folder name).
        spec: the tensor description of ``model.onnx``.
        max_batch_size: largest batch Triton forms (clips per execution).
        versions: the versions served (see :func:`version_policy`).
    """
    return _config_data(model_name, spec, {"platform": "onnxruntime_onnx"}, "KIND_GPU", max_batch_size=max_batch_size, versions=versions)


#: Folder of a model's TensorRT engines, inside the model's folder of the repository.
TRT_ENGINE_CACHE = "trt_engine_cache"
#: TensorRT's build workspace (bytes): the ONNX Runtime backend's own default, 1 GiB.
TRT_WORKSPACE_BYTES = 1 << 30


def tensorrt_optimization(model_name: str, spec: TensorSpec, *, max_batch_size: int, repository: str) -> dict[str, Any]:
    """The ``optimization`` block that runs ``model.onnx`` through ONNX Runtime's TensorRT execution
    provider (the ONNX Runtime backend's ``gpu_execution_accelerator "tensorrt"``).

    FP16, with one optimisation profile: T, H, W and C static (the spec's), the batch from 1 to
    ``max_batch_size`` (optimised for ``max_batch_size``, what dynamic batching forms under load).
    Engines are cached in ``<repository>/<model>/trt_engine_cache`` so a restart or a reload does
    not rebuild them (minutes for a 3D CNN); Triton must be able to write there.

    Parameter names: the ONNX Runtime backend's README, "ONNX Runtime with TensorRT optimization"
    (github.com/triton-inference-server/onnxruntime_backend).

    Args:
        model_name: the model (its folder name).
        spec: the tensor description of ``model.onnx``.
        max_batch_size: the config's ``max_batch_size``.
        repository: the model repository's path *as Triton sees it* (``PYTRAIN_TRITON_MODEL_REPOSITORY``).
    """
    clip = "x".join(str(d) for d in spec.input_shape[1:])

    def profile(batch: int) -> str:
        return f"{spec.input_name}:{batch}x{clip}"

    parameters = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{repository.rstrip('/')}/{model_name}/{TRT_ENGINE_CACHE}",
        "trt_profile_min_shapes": profile(1),
        "trt_profile_opt_shapes": profile(max_batch_size),
        "trt_profile_max_shapes": profile(max_batch_size),
    }
    return {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": parameters}]}}


def cpu_config_data(model_name: str, spec: TensorSpec, *, max_batch_size: int, versions: Sequence[int] | None = None) -> dict[str, Any]:
    """``configs/cpu.pbtxt`` as data: the Python backend on a CPU instance, same tensors, batching and versions."""
    return _config_data(model_name, spec, {"backend": "python"}, "KIND_CPU", max_batch_size=max_batch_size, versions=versions)


def to_model_config(data: Mapping[str, Any]) -> model_config_pb2.ModelConfig:
    """Parse config data into Triton's ``ModelConfig`` protobuf and check it against itself.

    Raises:
        PublishError: an unknown field, a bad enum value, a non-positive dim, a missing name,
            dtype or label file, or both/neither of ``platform`` and ``backend``.
    """
    name = data.get("name", "?")
    try:
        config = json_format.ParseDict(dict(data), model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        raise PublishError(f"model {name}: invalid Triton config: {exc}") from exc
    validate_model_config(config)
    return config


def validate_model_config(config: model_config_pb2.ModelConfig) -> None:
    """Checks Triton would make at load time, done before anything is written.

    Raises:
        PublishError: naming the model and the offending field.
    """
    problems = []
    if not config.name:
        problems.append("no name")
    if bool(config.platform) == bool(config.backend):
        problems.append("exactly one of platform and backend must be set")
    if config.max_batch_size < 1:
        problems.append(f"max_batch_size {config.max_batch_size} < 1 (PyTrain models batch)")
    if not config.input or not config.output:
        problems.append("needs at least one input and one output")
    for tensor in list(config.input) + list(config.output):
        if not tensor.name:
            problems.append("a tensor has no name")
        if tensor.data_type == model_config_pb2.TYPE_INVALID:
            problems.append(f"tensor {tensor.name}: no data_type")
        if not tensor.dims or any(d < 1 for d in tensor.dims):
            problems.append(f"tensor {tensor.name}: dims {list(tensor.dims)} must be positive (batch axis excluded)")
    if problems:
        raise PublishError(f"model {config.name or '?'}: invalid Triton config: " + "; ".join(problems))


def to_pbtxt(config: model_config_pb2.ModelConfig) -> str:
    """The protobuf text format Triton reads (``config.pbtxt``); round-trips through the parser."""
    text = text_format.MessageToString(config)
    reparsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    if reparsed != config:  # pragma: no cover - protobuf guarantees this
        raise PublishError(f"model {config.name}: config does not round-trip through text format")
    return text


def parse_pbtxt(text: str) -> model_config_pb2.ModelConfig:
    """Parse a ``config.pbtxt`` text into ``ModelConfig``.

    Raises:
        PublishError: the text is not a valid ``ModelConfig``.
    """
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise PublishError(f"invalid config.pbtxt: {exc}") from exc


def gpu_config_pbtxt(
    model_name: str, spec: TensorSpec, *, max_batch_size: int, accelerator: str = "none", repository: str | None = None,
    versions: Sequence[int] | None = None,
) -> str:
    """``config.pbtxt`` text for GPU serving, validated.

    Args:
        accelerator: ``none`` (ONNX Runtime's CUDA provider) or ``tensorrt`` (see
            :func:`tensorrt_optimization`; ``repository`` is where Triton sees the model repository).
        versions: the versions served (see :func:`version_policy`); ``None``: the newest ``NUM_SERVED_VERSIONS``.

    Raises:
        PublishError: an invalid config, or an unknown accelerator.
    """
    data = gpu_config_data(model_name, spec, max_batch_size=max_batch_size, versions=versions)
    if accelerator == "tensorrt":
        if not repository:
            raise PublishError("the tensorrt accelerator needs the model repository's path as Triton sees it",
                               hint="set PYTRAIN_TRITON_MODEL_REPOSITORY")
        data["optimization"] = tensorrt_optimization(model_name, spec, max_batch_size=max_batch_size, repository=repository)
    elif accelerator != "none":
        raise PublishError(f"unknown Triton accelerator {accelerator!r}", hint=f"PYTRAIN_TRITON_ACCELERATOR one of {TRITON_ACCELERATORS}")
    return to_pbtxt(to_model_config(data))


def cpu_config_pbtxt(model_name: str, spec: TensorSpec, *, max_batch_size: int, versions: Sequence[int] | None = None) -> str:
    """``configs/cpu.pbtxt`` text for the embedded server, validated. Raises :class:`PublishError`."""
    return to_pbtxt(to_model_config(cpu_config_data(model_name, spec, max_batch_size=max_batch_size, versions=versions)))


def labels_text(spec: TensorSpec) -> str:
    """``labels.txt``: one class per line, line ``i`` is output index ``i`` (Triton's classification)."""
    for label in spec.class_list:
        if "\n" in label or not label.strip():
            raise PublishError(f"class label {label!r} is empty or spans lines; labels.txt needs one label per line")
    return "".join(f"{label}\n" for label in spec.class_list)


def pytrain_ini(spec: TensorSpec, *, epochs: int, shuffle_size: int, batch_size: int) -> str:
    """The PyTrain INI config ``<model>.config``, byte for byte in the historical format::

        [PREDICTION]
        num_frames = 20
        class_list = ['Other', 'cooking', 'drinking', 'eating', 'pouring']
        height = 224
        width = 224
        input_name = time_distributed_input
        output_name = dense

        [TRAINING]
        epochs = 50
        shuffle_size = 300
        batch_size = 4

    ``class_list`` is Python's ``repr`` of the list (existing clients ``ast.literal_eval`` it).
    Lines end with ``\\n``; the file ends with one ``\\n`` after ``batch_size``.

    A spec with ``clip_seconds`` (the time an input clip spans, seconds) adds
    ``clip_seconds = 2.4`` after ``output_name``. A model sampled otherwise than uniform with one
    view (:mod:`pytrain.sampling`) adds, after that, all three of::

        sampling = dense
        frame_interval = 4
        test_clips = 3

    Old readers ignore the keys; a spec without ``clip_seconds`` and with the default sampling
    gives the historical bytes above (and :func:`read_pytrain_ini` reads the missing keys as
    their defaults).

    Values are literal: read the file without interpolation (``ConfigParser(interpolation=None)``,
    as :func:`read_pytrain_ini` does); a ``%`` in a class name breaks a default ``ConfigParser``.
    """
    lines = [
        "[PREDICTION]",
        f"num_frames = {spec.num_frames}",
        f"class_list = {list(spec.class_list)!r}",
        f"height = {spec.height}",
        f"width = {spec.width}",
        f"input_name = {spec.input_name}",
        f"output_name = {spec.output_name}",
        *([] if spec.clip_seconds is None else [f"clip_seconds = {float(spec.clip_seconds):g}"]),
        *([] if spec.clip_sampling == ClipSampling() else [
            f"sampling = {spec.sampling}", f"frame_interval = {int(spec.frame_interval)}", f"test_clips = {int(spec.test_clips)}",
        ]),
        "",
        "[TRAINING]",
        f"epochs = {int(epochs)}",
        f"shuffle_size = {int(shuffle_size)}",
        f"batch_size = {int(batch_size)}",
    ]
    return "\n".join(lines) + "\n"


def read_pytrain_ini(text: str) -> dict[str, Any]:
    """Parse a ``<model>.config`` text back into ``{"num_frames", "class_list", "height", "width",
    "input_name", "output_name", "epochs", "shuffle_size", "batch_size"}``, plus ``"clip_seconds"``
    (float, seconds), ``"sampling"`` (str), ``"frame_interval"`` and ``"test_clips"`` (int) for
    those the file has.

    Raises:
        PublishError: a missing section or key, or an unparsable value.
    """
    import ast
    import configparser

    # No interpolation: the file's values are literal (a class named "50%_off" is a class name)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        pred, train = parser["PREDICTION"], parser["TRAINING"]
        readers = {"clip_seconds": pred.getfloat, "sampling": pred.get, "frame_interval": pred.getint, "test_clips": pred.getint}
        optional = {key: read(key) for key, read in readers.items() if key in pred}
        return {
            **optional,
            "num_frames": pred.getint("num_frames"),
            "class_list": list(ast.literal_eval(pred["class_list"])),
            "height": pred.getint("height"),
            "width": pred.getint("width"),
            "input_name": pred["input_name"],
            "output_name": pred["output_name"],
            "epochs": train.getint("epochs"),
            "shuffle_size": train.getint("shuffle_size"),
            "batch_size": train.getint("batch_size"),
        }
    except KeyError as exc:
        raise PublishError(
            f"invalid PyTrain model config: missing section or key {exc}", hint="expected [PREDICTION] and [TRAINING] as publishing writes them"
        ) from exc
    except (configparser.Error, ValueError, SyntaxError) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]  # configparser's messages quote the offending lines below
        raise PublishError(
            f"invalid PyTrain model config: {type(exc).__name__}: {first_line}",
            hint="expected [PREDICTION] and [TRAINING] as publishing writes them",
        ) from exc
