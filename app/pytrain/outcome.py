"""How a run stands or ended: the one vocabulary of the runners, the worker and the queue.

A runner reports how its run ended (:attr:`pytrain.runners.RunResult.outcome`); the worker's
heartbeat says whether the run still holds its task (:meth:`pytrain.db.TaskQueue.heartbeat`, the
heartbeat's ``state``); the worker maps both to what it records (:meth:`pytrain.db.TaskQueue.finish`,
``requeue``) and to what :meth:`pytrain.orchestrator.Orchestrator.process` returns; the database keeps
the recorded ones in ``task_runs.outcome`` (:data:`RECORDED`, the column's CHECK). Every layer
uses :class:`Outcome`; its values are the strings the database and the logs have always held.

This module imports nothing of PyTrain, so :mod:`pytrain.db` and :mod:`pytrain.runners` both
import it without a cycle.
"""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    """How a run stands (``OK``) or ended. A ``str``: ``Outcome.FAILED == "failed"``.

    Who says which:

    - the heartbeat (the run is still this worker's?): ``OK``, ``CANCELLED`` (a user cancelled the
      task), ``PRUNED`` (the task is a sweep's trial whose pruner stopped it after an epoch), ``LOST`` (the run no longer holds the task: re-queued or claimed by another run),
      ``FENCED`` (the worker stopped its own run: the lease went unrenewed too long);
    - a runner (how the training process ended): ``SUCCEEDED``, ``FAILED``, ``CANCELLED``,
      ``TIMED_OUT``, ``OUT_OF_MEMORY``, ``INTERRUPTED`` (the worker is shutting down),
      ``REQUEUED`` (the cluster lost the run: node failure, preemption), ``LOCKED`` (another run
      still holds the task folder);
    - the worker, once the run is recorded: ``SUCCEEDED``, ``FAILED``, ``CANCELLED``, ``PRUNED``, ``REQUEUED``
      (the task went back to the queue), ``LOST``;
    - ``task_runs.outcome``: :data:`RECORDED`.
    """

    OK = "ok"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    OUT_OF_MEMORY = "out_of_memory"
    INTERRUPTED = "interrupted"
    REQUEUED = "requeued"
    LOCKED = "locked"
    LOST = "lost"
    FENCED = "fenced"
    PRUNED = "pruned"

    def __str__(self) -> str:
        return self.value


#: What :meth:`pytrain.db.TaskQueue.finish` records: the task's final statuses, and its run's outcome.
#: ``pruned``: a sweep's trial stopped early by its pruner (migration 0008; :mod:`pytrain.sweeps`).
FINISHED: tuple[Outcome, ...] = (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.CANCELLED, Outcome.PRUNED)

#: ``task_runs.outcome`` of an ended run (``NULL`` while it runs): a final status, or ``requeued``
#: (the run was lost or interrupted and the task went back to the queue).
RECORDED: tuple[Outcome, ...] = (*FINISHED, Outcome.REQUEUED)
