"""Triton Python-backend model that runs ``model.onnx`` with onnxruntime on the CPU.

Publishing copies this file as ``model_repo/<model>/<version>/model.py`` beside ``model.onnx``;
``configs/cpu.pbtxt`` (``backend: "python"``) makes the embedded ``tritonserver`` run it. It is
self-contained: Triton's Python stub imports it with the ``python3`` found first on ``PATH``
(the embedded server puts PyTrain's virtual environment there), which needs numpy and onnxruntime.

Tensors (names from the model config, the same as the ONNX graph's):
    input:  ``(N, T, H, W, 3)`` uint8 RGB frames, N <= max_batch_size.
    output: ``(N, num_classes)`` float32 probabilities.

Environment (set by :class:`pytrain.serving.TritonServer`): ``PYTRAIN_ORT_THREADS`` (onnxruntime
intra-op threads, 0 = its default) and ``PYTRAIN_ORT_SPIN`` (``1`` lets idle onnxruntime threads
spin; default ``0`` leaves the CPU to Triton's own threads).

Requests gathered by Triton's dynamic batcher are concatenated into one onnxruntime call and split
back per request, so batching behaves as with the ONNX Runtime backend.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One instance per ``instance_group`` entry; Triton calls ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        model_path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        threads = int(os.environ.get("PYTRAIN_ORT_THREADS", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        # Idle onnxruntime threads spinning would steal the CPU from Triton's gRPC threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("PYTRAIN_ORT_SPIN", "0"))
        self.session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
        onnx_inputs = [i.name for i in self.session.get_inputs()]
        onnx_outputs = [o.name for o in self.session.get_outputs()]
        if self.input_name not in onnx_inputs or self.output_name not in onnx_outputs:
            raise pb_utils.TritonModelException(
                f"{model_path}: config tensors {self.input_name}/{self.output_name} are not the ONNX "
                f"graph's inputs {onnx_inputs} / outputs {onnx_outputs}"
            )

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        try:
            (probabilities,) = self.session.run([self.output_name], {self.input_name: batch})
        except Exception as exc:  # onnxruntime raises its own exception types for bad input
            error = pb_utils.TritonError(f"onnxruntime failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            part = np.ascontiguousarray(probabilities[start : start + size], dtype=np.float32)
            start += size
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)]))
        return responses

    def finalize(self):
        self.session = None
