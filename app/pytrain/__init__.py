"""PyTrain: train video clip classifiers from a PostgreSQL task row and serve them with Triton.

The pipeline, one sub-package per part:

- :mod:`pytrain.db`            -- SQLAlchemy models, Alembic migrations, the task queue, embedded PostgreSQL
- :mod:`pytrain.sources`       -- dataset folders, class resolution and the split manifest
- :mod:`pytrain.orchestrator`  -- the worker loop that claims tasks and hands them to a runner
- :mod:`pytrain.runners`       -- ``local`` (subprocess) and ``docker`` (NGC container) runners
- :mod:`pytrain.training`      -- the training entrypoint (``python -m pytrain.training``) and ONNX export
- :mod:`pytrain.publish`       -- publishing into the Triton model repository
- :mod:`pytrain.serving`       -- the embedded ``tritonserver``
- :mod:`pytrain.client`        -- the gRPC client
- :mod:`pytrain.cli`           -- the ``pytrain`` command
"""

from pytrain.errors import PyTrainError

__all__ = ["PyTrainError"]
__version__ = "0.1.0"
