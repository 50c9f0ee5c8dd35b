"""The embedded Triton server (``pytrain serve``).

Public API::

    from pytrain.serving import TritonServer
    with TritonServer.from_settings(settings) as server:   # starts, waits until ready
        server.grpc_url                                      # "127.0.0.1:8001"

``python_model.py`` in this package is the Python-backend ``model.py`` that publishing copies
next to each ``model.onnx``; it is not imported by PyTrain itself.
"""

from pytrain.serving.server import (
    TritonInstallation,
    TritonServer,
    default_ort_threads,
    free_port,
    locate_tritonserver,
    prepare_backend_dir,
)

__all__ = ["TritonServer", "TritonInstallation", "locate_tritonserver", "prepare_backend_dir", "free_port", "default_ort_threads"]
