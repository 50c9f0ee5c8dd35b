"""Publishing trained models into the Triton model repository.

Public API::

    from pytrain.publish import publish_task, PublishedModel
    published = publish_task(task_dir, settings=settings, task_record=row)
    published.name, published.version, published.path

See :mod:`pytrain.publish.repository` for the layout and the atomicity guarantees and
:mod:`pytrain.publish.triton_config` for the generated configs.
"""

from pytrain.publish.repository import PublishedModel, existing_versions, publish_task
from pytrain.publish.triton_config import cpu_config_pbtxt, gpu_config_pbtxt, labels_text, pytrain_ini, read_pytrain_ini

__all__ = [
    "PublishedModel",
    "publish_task",
    "existing_versions",
    "gpu_config_pbtxt",
    "cpu_config_pbtxt",
    "labels_text",
    "pytrain_ini",
    "read_pytrain_ini",
]
