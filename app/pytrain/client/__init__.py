"""The gRPC client of PyTrain models served by Triton (``pytrain predict``).

Public API::

    from pytrain.client import TritonClient, Prediction, ModelInfo
    with TritonClient("127.0.0.1:8001", ready_timeout_s=30, load_timeout_s=120, inference_timeout_s=60) as c:
        c.predict("kitchen", ["a.mp4", "b.mp4"], top_k=3)   # -> [[Prediction(label, probability), ...], ...]
        c.predict_frames("kitchen", frames)                   # (N, T, H, W, 3) uint8
        c.infer("kitchen", frames)                            # (N, C) float32 probabilities
        c.model_info("kitchen")                               # ModelInfo: T, H, W, tensor names

    from pytrain.client import StreamClassifier               # live streams (pytrain stream)
    with StreamClassifier(["srt://127.0.0.1:9999?mode=listener"], model="kitchen") as windows:
        for w in windows: print(w.stream, w.label, w.probability, w.latency_ms)

Errors are :class:`pytrain.errors.ClientError`: server unreachable (naming the address), model not
ready (with Triton's state), an undecodable video (naming the file).
"""

from pytrain.client.client import ModelInfo, Prediction, TritonClient
from pytrain.client.sources import StreamSource
from pytrain.client.stream import StreamClassifier, StreamPrediction

__all__ = ["TritonClient", "Prediction", "ModelInfo", "StreamClassifier", "StreamSource", "StreamPrediction"]
