"""The exported ``model.onnx`` logged as an MLflow ONNX model, its signature from ``tensor_spec.json``.

The model goes into the run's artifact folder :data:`MODEL_ARTIFACT` (MLflow's ``MLmodel``,
``model.onnx``, requirements), so ``mlflow.pyfunc.load_model("runs:/<id>/model")`` loads it and the
registered version's source is that folder (:mod:`pytrain.tracking.registry`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytrain.spec import MODEL_ONNX, TensorSpec

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: The run's artifact folder holding the MLflow ONNX model.
MODEL_ARTIFACT = "model"


def model_signature(spec: TensorSpec) -> Any:
    """The MLflow ``ModelSignature`` of ``spec``: one input tensor ``spec.input_name``
    ``(-1, T, H, W, 3)`` of ``spec.input_dtype`` (uint8 frames), one output ``spec.output_name``
    ``(-1, C)`` of ``spec.output_dtype`` (float32 probabilities); ``-1`` is the dynamic batch axis."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema
    from mlflow.types import TensorSpec as MlflowTensorSpec

    return ModelSignature(
        inputs=Schema([MlflowTensorSpec(np.dtype(spec.input_dtype), tuple(spec.input_shape), spec.input_name)]),
        outputs=Schema([MlflowTensorSpec(np.dtype(spec.output_dtype), tuple(spec.output_shape), spec.output_name)]))


def log_onnx_model(client: MlflowClient, run_id: str, task_dir: Path) -> bool:
    """Log ``task_dir/model.onnx`` with its signature as the run's MLflow ONNX model
    (:data:`MODEL_ARTIFACT`; logged again: the same files replaced). Returns whether it was logged:
    ``False`` when the task folder has no ``model.onnx`` or ``tensor_spec.json`` (the run exported
    nothing), or when the ``onnx`` package is missing (a warning).

    Raises:
        Exception: what MLflow raises (the server is down).
        ConfigurationError: ``tensor_spec.json`` does not parse.
    """
    task_dir = Path(task_dir)
    if not (task_dir / MODEL_ONNX).is_file() or not (task_dir / TensorSpec.FILE_NAME).is_file():
        return False
    try:
        import onnx
        import mlflow.onnx
    except ImportError as exc:
        log.warning("%s: not logged as an MLflow ONNX model (%s); install the onnx package", task_dir / MODEL_ONNX, exc)
        return False
    signature = model_signature(TensorSpec.load(task_dir))
    with tempfile.TemporaryDirectory(prefix="pytrain-mlflow-model-") as scratch:
        folder = Path(scratch) / MODEL_ARTIFACT
        # The flavour's own pins (onnx, onnxruntime at the installed versions), given explicitly: left
        # out, MLflow infers the requirements by loading the model in a subprocess and scanning every
        # installed distribution (mlflow.utils.environment.infer_pip_requirements) -- 2.5 s a run here,
        # and the worker's RSS grew 0.17 MiB a logged model, never returned (benchmarks/soak.py).
        mlflow.onnx.save_model(onnx.load(str(task_dir / MODEL_ONNX)), str(folder), signature=signature,
                               pip_requirements=mlflow.onnx.get_default_pip_requirements())
        client.log_artifacts(run_id, str(folder), MODEL_ARTIFACT)
    return True
