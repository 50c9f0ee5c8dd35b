"""The task queue's job manager: one method per database operation on ``training_tasks``.

The SQL lives in :mod:`pytrain.db.queries`; the worker loop that calls these methods lives in
:mod:`pytrain.orchestrator`. Every method runs in its own short transaction. Rows come back as
plain dicts (column name -> value).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine, insert
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from pytrain.db import queries
from pytrain.db.models import TrainingTask
from pytrain.errors import ConfigurationError, DatabaseError, TaskNotFoundError

log = logging.getLogger(__name__)

HeartbeatState = Literal["ok", "cancelled", "lost"]


@dataclass(frozen=True)
class Run:
    """One claimed run of a task: the row as claimed, plus the key that identifies the run."""

    task: dict[str, Any]
    worker_id: str

    @property
    def task_id(self) -> int:
        return int(self.task["id"])

    @property
    def started_at(self) -> datetime:
        return self.task["started_at"]

    def key(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "worker_id": self.worker_id, "started_at": self.started_at}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


class TaskQueue:
    """Database operations of the task queue.

    Args:
        engine: a SQLAlchemy engine on a database migrated with :func:`pytrain.db.upgrade`.

    Every method raises :class:`pytrain.errors.DatabaseError` when the database cannot be reached.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- helpers ---------------------------------------------------------------------------
    def _execute(self, statement, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            with self.engine.begin() as conn:
                result = conn.execute(statement, params or {})
                return [dict(row) for row in result.mappings()] if result.returns_rows else []
        except IntegrityError as exc:
            raise ConfigurationError(f"the database rejected the task: {_first_line(exc.orig)}") from exc
        except (DBAPIError, SQLAlchemyError) as exc:
            raise DatabaseError(f"database operation failed: {_first_line(getattr(exc, 'orig', None) or exc)}") from exc

    # -- users -----------------------------------------------------------------------------
    def submit(self, fields: dict[str, Any]) -> int:
        """Insert a task with ``fields`` (column -> value); missing columns take database defaults.

        Returns:
            The new task's id.

        Raises:
            ConfigurationError: a CHECK constraint rejected a value (the message names it).
        """
        table = TrainingTask.__table__
        unknown = sorted(set(fields) - set(table.columns.keys()))
        if unknown:
            raise ConfigurationError(f"unknown task field(s) {unknown}")
        rows = self._execute(insert(table).values(**fields).returning(table.c.id))
        return int(rows[0]["id"])

    def get(self, task_id: int) -> dict[str, Any]:
        """The task row ``task_id``.

        Raises:
            TaskNotFoundError: no such task.
        """
        rows = self._execute(queries.GET_TASK, {"task_id": task_id})
        if not rows:
            raise TaskNotFoundError(f"no training task with id {task_id}", hint="`pytrain tasks` lists them")
        return rows[0]

    def list(self, *, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` tasks (optionally only those in ``status``), newest first."""
        return self._execute(queries.LIST_TASKS, {"status": status, "limit": limit})

    def counts(self) -> dict[str, int]:
        """Number of tasks per status (statuses with no task are absent)."""
        return {row["status"]: int(row["n"]) for row in self._execute(queries.COUNT_BY_STATUS)}

    def cancel(self, task_id: int) -> bool:
        """Cancel a queued or running task. A running task is stopped by its worker within seconds.

        Returns:
            ``True`` if the task was cancelled now, ``False`` if it had already ended.

        Raises:
            TaskNotFoundError: no such task.
        """
        if self._execute(queries.CANCEL, {"task_id": task_id}):
            return True
        self.get(task_id)  # raises TaskNotFoundError
        return False

    # -- workers ---------------------------------------------------------------------------
    def claim(self, worker_id: str, lease_seconds: float) -> Run | None:
        """Claim the next queued task (highest priority, then oldest) and mark it running.

        Args:
            worker_id: this worker's id, stored in the row.
            lease_seconds: the run's lease; renew it with :meth:`heartbeat` before it expires.

        Returns:
            The claimed run, or ``None`` when no task is queued.
        """
        rows = self._execute(queries.CLAIM, {"worker_id": worker_id, "lease_seconds": float(lease_seconds)})
        return Run(task=rows[0], worker_id=worker_id) if rows else None

    def heartbeat(self, run: Run, lease_seconds: float, progress: dict[str, Any] | None = None) -> HeartbeatState:
        """Renew a run's lease and store its latest ``progress``.

        Returns:
            ``"ok"``; ``"cancelled"`` when a user cancelled the task; ``"lost"`` when the run is no
            longer this worker's (its lease expired and the task was re-queued or claimed again).
        """
        params = {**run.key(), "lease_seconds": float(lease_seconds), "progress": _json(progress)}
        if self._execute(queries.HEARTBEAT, params):
            return "ok"
        rows = self._execute(queries.RUN_STATE, {"task_id": run.task_id})
        if rows and rows[0]["status"] == "cancelled" and rows[0]["worker_id"] == run.worker_id \
                and rows[0]["started_at"] == run.started_at:
            return "cancelled"
        return "lost"

    def status(self, task_id: int) -> str:
        """The task's current status."""
        return str(self.get(task_id)["status"])

    def finish(
        self,
        run: Run,
        status: Literal["succeeded", "failed", "cancelled"],
        *,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
        version: int | None = None,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Record how a run ended.

        Returns:
            ``False`` when the run was no longer this worker's (nothing was written), or when the
            task was cancelled meanwhile and ``status`` is not ``cancelled``.
        """
        params = {
            **run.key(),
            "status": status,
            "error": error,
            "metrics": _json(metrics),
            "version": version,
            "progress": _json(progress),
        }
        return bool(self._execute(queries.FINISH, params))

    def requeue(self, run: Run, reason: str) -> bool:
        """Put a running task back in the queue without counting a lost attempt (clean shutdown)."""
        return bool(self._execute(queries.REQUEUE, {**run.key(), "reason": reason}))

    def requeue_lost(self, max_attempts: int, *, own_worker_id: str | None = None) -> list[dict[str, Any]]:
        """Re-queue runs whose lease expired (and, with ``own_worker_id``, that worker's runs).

        Each re-queue increments ``attempts``; a task reaching ``max_attempts`` fails with a message
        saying so.

        Returns:
            ``[{"id", "status", "attempts", "error"}]`` for every task touched.
        """
        rows = self._execute(queries.REQUEUE_LOST, {"max_attempts": int(max_attempts), "own_worker_id": own_worker_id})
        for row in rows:
            log.warning("task %s: %s", row["id"], row["error"])
        return rows

    def set_task_dir(self, task_id: int, task_dir: str) -> None:
        """Record where the task's folder is."""
        self._execute(queries.SET_TASK_DIR, {"task_id": task_id, "task_dir": task_dir})

    def running_elsewhere(self, worker_id: str) -> set[int]:
        """Ids of tasks running under any worker other than ``worker_id``."""
        return {int(row["id"]) for row in self._execute(queries.RUNNING_ELSEWHERE, {"worker_id": worker_id})}

    # -- sources ---------------------------------------------------------------------------
    def register_sources(self, names: list[str]) -> list[str]:
        """Register datasets by name (their folder is the same name); returns the newly added ones."""
        added: list[str] = []
        for name in names:
            added += [row["name"] for row in self._execute(queries.REGISTER_SOURCE, {"name": name})]
        return added

    def registered_sources(self) -> list[str]:
        """Names of all registered datasets, sorted."""
        return [row["name"] for row in self._execute(queries.LIST_SOURCES)]


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
