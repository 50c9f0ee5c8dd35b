"""ONNX export of a trained checkpoint, checked before it is declared done.

The exported graph is :class:`ProbabilityModel`: raw ``(N, T, H, W, 3)`` uint8 RGB frames in
(named ``TensorSpec.input_name``), ``(N, C)`` float32 softmax probabilities out (named
``TensorSpec.output_name``), with the batch axis dynamic. Normalisation and the layout change are
the same :class:`~pytrain.training.preprocess.Preprocess` module training used, so they are inside
the graph and inference cannot drift from training.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export-based, opset 18; the default since
torch 2.9 and the one that keeps working on torch 2.13 and 2.14); if it fails for an architecture
the TorchScript exporter (``dynamo=False``, opset 17) is tried, with a warning. Both need
``onnxscript`` (dynamo) / ``onnx`` installed.

Checks before ``model.onnx`` replaces an older one (it is written to a temporary file first):
``onnx.checker.check_model``; input/output names, dtypes and shapes equal the tensor spec; and
onnxruntime's probabilities on real clips, run with batch sizes 1 and N, are within
:data:`PARITY_ATOL` of PyTorch's.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pytrain.errors import ExportError
from pytrain.spec import MODEL_ONNX, TensorSpec, atomic_path
from pytrain.training.disk import NO_SPACE_HINT, find_no_space, no_space_message, tensor_bytes
from pytrain.training.models import VideoClassifier, rebuild_from_checkpoint

log = logging.getLogger(__name__)

# Max |p_onnxruntime - p_pytorch| over all probabilities. Both run float32 on the CPU; they differ
# only by operator implementations and summation order (measured ~1e-7 for tiny, ~1e-6 for
# r3d_18), so 1e-4 catches a wrong graph while leaving room for kernel differences.
PARITY_ATOL = 1e-4
DYNAMO_OPSET = 18
TORCHSCRIPT_OPSET = 17


class ProbabilityModel(nn.Module):
    """What is exported: ``(N, T, H, W, 3)`` uint8 -> ``(N, C)`` float32 softmax probabilities."""

    def __init__(self, classifier: VideoClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, T, H, W, 3)`` uint8 -> ``(N, C)`` float32 probabilities (rows sum to 1)."""
        return torch.softmax(self.classifier(frames), dim=1)


def _export(module: nn.Module, example: torch.Tensor, path: Path, spec: TensorSpec) -> str:
    names = dict(input_names=[spec.input_name], output_names=[spec.output_name])
    for noisy in ("onnxscript", "onnx_ir"):  # the dynamo exporter logs every optimisation pass at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(path), dynamo=True, opset_version=DYNAMO_OPSET, external_data=False,
                dynamic_shapes={"frames": {0: batch}}, verbose=False, **names,
            )
        return f"dynamo (opset {DYNAMO_OPSET})"
    except Exception as exc:  # the exporter raises many types; the fallback is logged
        if find_no_space(exc) is not None:  # the other exporter would fill the same disk
            raise
        log.warning("dynamo ONNX export failed (%s: %s); trying the TorchScript exporter", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}}, **names,
            )
        return f"torchscript (opset {TORCHSCRIPT_OPSET})"
    except Exception as exc:
        raise ExportError(f"ONNX export failed with both exporters: {type(exc).__name__}: {exc}") from exc


def _check_signature(model_proto: Any, spec: TensorSpec) -> None:
    import onnx

    def describe(value_info: Any) -> tuple[str, int, list]:
        t = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return value_info.name, t.elem_type, dims

    inputs = [describe(v) for v in model_proto.graph.input]
    outputs = [describe(v) for v in model_proto.graph.output]
    onnx_type = onnx.helper.np_dtype_to_tensor_dtype
    want_in = [(spec.input_name, onnx_type(np.dtype(spec.input_dtype)), spec.input_shape)]
    want_out = [(spec.output_name, onnx_type(np.dtype(spec.output_dtype)), spec.output_shape)]
    if inputs != want_in or outputs != want_out:
        raise ExportError(f"the exported graph's signature is inputs={inputs} outputs={outputs}, expected inputs={want_in} outputs={want_out}")


def check_parity(onnx_path: Path, module: nn.Module, clips: np.ndarray, spec: TensorSpec, *, atol: float = PARITY_ATOL) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on ``clips`` ``(N, T, H, W, 3)`` uint8, batch sizes 1 and N.

    Returns:
        ``{"max_abs_diff", "atol", "clips", "argmax_agree"}``.

    Raises:
        ExportError: a difference above ``atol``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(torch.from_numpy(clips)).numpy()
    batched = session.run([spec.output_name], {spec.input_name: clips})[0]
    single = np.concatenate([session.run([spec.output_name], {spec.input_name: clips[i : i + 1]})[0] for i in range(len(clips))])
    diff = float(max(np.abs(batched - expected).max(), np.abs(single - expected).max()))
    if batched.dtype != np.dtype(spec.output_dtype) or batched.shape != expected.shape or not diff <= atol:
        raise ExportError(
            f"onnxruntime and PyTorch disagree: max |diff| {diff:.3g} > {atol:g} (shape {batched.shape} {batched.dtype}, expected {expected.shape})",
            hint="the graph differs from the model; try the other exporter or file a bug with the architecture",
        )
    return {"max_abs_diff": diff, "atol": atol, "clips": int(len(clips)), "argmax_agree": bool((batched.argmax(1) == expected.argmax(1)).all())}


def export_checkpoint(checkpoint: dict[str, Any] | Path, out_dir: Path, spec: TensorSpec, clips: np.ndarray) -> dict[str, Any]:
    """Rebuild the model of a checkpoint, export it to ``out_dir/model.onnx`` and check it.

    Args:
        checkpoint: a checkpoint dict or the path of a ``.pt`` file (``model_args`` + ``model``).
        out_dir: folder receiving ``model.onnx`` and ``tensor_spec.json``.
        spec: the tensor spec to export and to save.
        clips: ``(N, T, H, W, 3)`` uint8 real clips for the parity check (N >= 1; 2 or more also
            exercises the dynamic batch axis).

    Returns:
        ``{"exporter", "onnx_bytes", "parity": {...}}`` for ``metrics.json``.

    Raises:
        ExportError: the export, the checker, the signature or the parity check failed, or the
            file system is full ("no space left on device in <out_dir> while writing model.onnx
            (about N bytes needed, M bytes free)"). ``model.onnx`` and ``tensor_spec.json`` then
            stay as they were: the new model is checked under a temporary name, ``tensor_spec.json``
            is written next, and only then is ``model.onnx`` replaced.
    """
    import onnx

    if isinstance(checkpoint, (str, Path)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    module = ProbabilityModel(rebuild_from_checkpoint(checkpoint)).eval()
    clips = np.ascontiguousarray(clips, dtype=spec.input_dtype)
    clip_shape = tuple(spec.input_shape[1:])
    if clips.ndim != len(clip_shape) + 1 or clips.shape[1:] != clip_shape or len(clips) < 1:
        raise ExportError(f"parity clips have shape {clips.shape}, expected (N>=1, {', '.join(map(str, clip_shape))})")
    out_dir = Path(out_dir)
    final = out_dir / MODEL_ONNX
    try:
        with atomic_path(final, suffix=".onnx") as tmp:
            example = torch.from_numpy(np.concatenate([clips, clips])[:2])  # batch 2: keeps the batch axis symbolic
            exporter = _export(module, example, tmp, spec)
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except Exception as exc:
                raise ExportError(f"onnx.checker rejected the exported model: {exc}") from exc
            _check_signature(onnx.load(str(tmp), load_external_data=False), spec)
            parity = check_parity(tmp, module, clips, spec)
            spec.save(out_dir)  # before model.onnx is replaced: a full disk leaves the old pair as it was
    except Exception as exc:
        if find_no_space(exc) is None:
            raise
        raise ExportError(no_space_message(out_dir, MODEL_ONNX, tensor_bytes(module.state_dict())), hint=NO_SPACE_HINT) from exc
    log.info("exported %s with the %s exporter; parity max |diff| %.2g on %d clips", final, exporter, parity["max_abs_diff"], parity["clips"])
    return {"exporter": exporter, "onnx_bytes": final.stat().st_size, "parity": parity}
