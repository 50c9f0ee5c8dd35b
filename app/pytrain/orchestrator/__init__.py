"""The orchestrator: the worker loop that claims queued tasks and hands them to a runner.

``pytrain orchestrate`` runs :class:`Orchestrator`; ``Orchestrator(settings).run(exit_when_idle=True)``
works the queue until it is empty (the demo).
"""

from pytrain.orchestrator.prepare import prepare_task, read_progress
from pytrain.orchestrator.worker import Orchestrator, default_worker_id

__all__ = ["Orchestrator", "default_worker_id", "prepare_task", "read_progress"]
