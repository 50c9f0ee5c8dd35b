"""Experiment tracking: every run an MLflow run, logged from the orchestrator (a side channel).

- :mod:`pytrain.tracking.store`: where the tracking store is (``PYTRAIN_MLFLOW_TRACKING_URI``, or
  database ``mlflow`` on PyTrain's PostgreSQL server) and the bounded HTTP timeouts.
- :mod:`pytrain.tracking.logged`: what a run logs (params, tags, per-epoch and final metrics,
  artifacts), from the task row, ``progress.jsonl`` and ``metrics.json``.
- :mod:`pytrain.tracking.tracker`: :class:`RunTracker`, the worker's background logger, and
  :func:`sync_run`, the idempotent catch-up it and ``pytrain tracking sync`` use.

MLflow is imported only when tracking is on (``PYTRAIN_MLFLOW=on``, the default) and first used.
See docs/user-guide/tracking.md and docs/adr/0013-experiment-tracking.md.
"""

from pytrain.tracking.tracker import RunTracker, TrackedRun, sync_run

__all__ = ["RunTracker", "TrackedRun", "sync_run"]
