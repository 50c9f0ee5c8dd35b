"""The task queue's job manager: one method per database operation on ``training_tasks``.

The SQL lives in :mod:`pytrain.db.queries`; the worker loop that calls these methods lives in
:mod:`pytrain.orchestrator`. Every method runs in its own short transaction. Task rows come back as
:class:`TaskRow` (typed, read-only; also readable as a mapping).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from pytrain.db import queries
from pytrain.db.models import TrainingTask
from pytrain.errors import ConfigurationError, DatabaseError, PublishError, PyTrainError, TaskNotFoundError, printable
from pytrain.outcome import Outcome
from pytrain.task_columns import TASK_COLUMNS, columns_dataclass

log = logging.getLogger(__name__)


#: The fields of :class:`TaskRow` that are the user-settable columns, one per entry of
#: :data:`pytrain.task_columns.TASK_COLUMNS` (all required: a row read back has every column).
TaskRowColumns = columns_dataclass(
    "TaskRowColumns", TASK_COLUMNS, defaults=False, module=__name__,
    doc="The user-settable columns of a training_tasks row (pytrain.task_columns.TASK_COLUMNS).",
)


@dataclass(frozen=True, kw_only=True)
class TaskRow(TaskRowColumns, Mapping[str, Any]):  # type: ignore[misc,valid-type]  # a base made from the column table
    """One ``training_tasks`` row, typed and read-only.

    The user-settable columns (``model_name``, ``sources``, ``classes``, ``epochs``, ...) are
    fields made from the column table (:class:`TaskRowColumns`); the fields below are the
    columns the queue keeps (``tests/db`` checks that together they are the model's columns). A
    row also reads as a mapping (``row["status"]``, ``row.get("error")``, ``dict(row)``), its
    keys in the table's column order, for code that serialises it. Timestamps are timezone-aware
    :class:`datetime`; ``progress`` and ``metrics`` are the JSON columns as dicts.
    """

    id: int
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: str | None
    progress: dict[str, Any]
    metrics: dict[str, Any] | None
    version: int | None
    worker_id: str | None
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    task_dir: str | None
    uid: uuid.UUID
    run_id: int | None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> "TaskRow":
        """Build from a result row (``SELECT *``); columns the dataclass does not know are ignored.

        Raises:
            KeyError: a column is missing (the query did not select ``*``).
        """
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def __getitem__(self, key: str) -> Any:
        if key not in _TASK_ROW_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_TASK_ROW_FIELDS)

    def __len__(self) -> int:
        return len(_TASK_ROW_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (column -> value)."""
        return {name: getattr(self, name) for name in _TASK_ROW_FIELDS}


#: The row's keys in the table's column order (``pytrain show`` prints them in this order).
_TASK_ROW_FIELDS = tuple(TrainingTask.__table__.columns.keys())


@dataclass(frozen=True)
class RunRow:
    """One ``task_runs`` row: a run of a task from its claim to its end.

    Attributes:
        id: the run id (the task row's ``run_id`` while it holds the task).
        task_id: the task.
        worker_id: the worker that claimed it.
        started_at, finished_at: database clock, timezone-aware; ``finished_at`` is ``None`` while
            the run goes on.
        outcome: ``None`` while it goes on, else one of :data:`pytrain.outcome.RECORDED`.
        error: why it ended that way (``None`` on success).
        version: the version a successful run published.
    """

    id: int
    task_id: int
    worker_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: Outcome | None
    error: str | None
    version: int | None


@dataclass(frozen=True)
class Claim:
    """One claimed run of a task: the row as claimed, plus the key that identifies the run.

    A run is keyed by its ``task_runs`` id (``run_id``), stored in the task row at the claim: a
    worker whose lease expired and whose task was re-queued or claimed again can no longer renew,
    finish or publish it (the run id is the fencing token; see :mod:`pytrain.db.queries`).
    """

    task: TaskRow
    worker_id: str

    @property
    def task_id(self) -> int:
        """The ``training_tasks`` row id."""
        return self.task.id

    @property
    def run_id(self) -> int:
        """This run's ``task_runs`` id: the fencing token of every write the run makes."""
        assert self.task.run_id is not None  # a claimed row always has one (the CLAIM query sets it)
        return self.task.run_id

    @property
    def started_at(self) -> datetime:
        """When this claim was made, on the database clock."""
        assert self.task.started_at is not None  # a claimed row always has one (the CLAIM query sets it)
        return self.task.started_at

    def key(self) -> dict[str, Any]:
        """The query parameters that identify this run (``task_id``, ``run_id``)."""
        return {"task_id": self.task_id, "run_id": self.run_id}


class RunEnded(PyTrainError):
    """A run's success cannot be recorded: the task was cancelled (recorded as such) or the run no
    longer holds it (``lost``: re-queued or claimed by another run; nothing written).

    Attributes:
        status: ``Outcome.CANCELLED`` or ``Outcome.LOST``.
    """

    def __init__(self, task_id: int, status: Outcome) -> None:
        what = "was cancelled before publishing" if status is Outcome.CANCELLED else "is no longer held by this run"
        super().__init__(f"task {task_id} {what}: nothing published")
        self.status = status


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


class Repository:
    """One method per database operation, each in its own short transaction.

    Driver errors are translated where they enter PyTrain: a constraint violation becomes a
    :class:`~pytrain.errors.ConfigurationError` naming the constraint and what was rejected, any
    other failure a :class:`~pytrain.errors.DatabaseError`.

    Args:
        engine: a SQLAlchemy engine on a database migrated with :func:`pytrain.db.upgrade`.
    """

    #: What a constraint violation rejected, for its message ("the task", "the dataset").
    subject = "the row"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _execute(self, statement, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        with self._transaction() as conn:
            result = conn.execute(statement, params or {})
            return [dict(row) for row in result.mappings()] if result.returns_rows else []

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction (``engine.begin()``) whose driver errors are translated (see the class)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except IntegrityError as exc:
            raise ConfigurationError(f"the database rejected {self.subject}: {_first_line(exc.orig)}") from exc
        except (DBAPIError, SQLAlchemyError) as exc:
            raise DatabaseError(f"database operation failed: {_reason(exc)}") from exc


class TaskQueue(Repository):
    """Database operations of the task queue on ``training_tasks``.

    Args:
        engine: a SQLAlchemy engine on a database migrated with :func:`pytrain.db.upgrade`.

    Every method raises :class:`pytrain.errors.DatabaseError` when the database cannot be reached.
    """

    subject = "the task"

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._notifications = Notifications(engine)

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

    def get(self, task_id: int) -> TaskRow:
        """The task row ``task_id``.

        Raises:
            TaskNotFoundError: no such task.
        """
        rows = self._execute(queries.GET_TASK, {"task_id": task_id})
        if not rows:
            raise TaskNotFoundError(f"no training task with id {task_id}", hint="`pytrain tasks` lists them")
        return TaskRow.from_mapping(rows[0])

    def list(self, *, status: str | None = None, model: str | None = None, limit: int = 50, before: int | None = None,
             sweep: str | None = None) -> list[TaskRow]:
        """The newest ``limit`` tasks (optionally only those in ``status``, of ``model``, of the
        sweep named ``sweep`` (task option ``sweep``), and with an id below ``before``: the next
        page), newest first."""
        params = {"status": status, "model": model, "limit": limit, "before": before, "sweep": sweep}
        return [TaskRow.from_mapping(row) for row in self._execute(queries.LIST_TASKS, params)]

    def states(self, task_ids: list[int]) -> list[dict[str, Any]]:
        """``id, status, progress, epochs, version, worker_id, error`` of the tasks ``task_ids`` that
        exist, newest first (the console's live view; no ``metrics``)."""
        return self._execute(queries.TASK_STATES, {"ids": [int(i) for i in task_ids]})

    def workers(self) -> dict[str, list[dict[str, Any]]]:
        """What the database knows of the workers: ``{"live": [...], "known": [...], "running": [...]}``:
        the sessions holding a worker-id lock (``application_name``, ``client_addr``,
        ``backend_start``, ``lock_key``), every worker id that ran a task (``worker_id``,
        ``lock_key``, ``last_run``), and the running tasks (``id``, ``model_name``, ``worker_id``,
        ``heartbeat_at``, ``lease_expires_at``, ``progress``, ``epochs``)."""
        return {"live": self._execute(queries.LIVE_WORKERS), "known": self._execute(queries.WORKER_KEYS),
                "running": self._execute(queries.RUNNING_TASKS)}

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
    def claim(self, worker_id: str, lease_seconds: float) -> Claim | None:
        """Claim the next queued task (highest priority, then oldest) and mark it running.

        A claimed row that cannot be read (its values do not decode, e.g. a JSON value nested
        deeper than Python's decoder recurses, written while the CHECKs of migration 0006 were
        dropped) is failed with the reason, and the next task is claimed: one bad row never stops
        the queue.

        Args:
            worker_id: this worker's id, stored in the row.
            lease_seconds: the run's lease; renew it with :meth:`heartbeat` before it expires.

        Returns:
            The claimed run, or ``None`` when no task is queued.
        """
        params = {"worker_id": worker_id, "lease_seconds": float(lease_seconds)}
        while True:
            rows = self._execute(queries.CLAIM, params)
            if not rows:
                return None
            key = {"task_id": int(rows[0]["id"]), "run_id": int(rows[0]["run_id"])}
            try:
                row = self._execute(queries.GET_TASK, {"task_id": key["task_id"]})[0]
                return Claim(task=TaskRow.from_mapping(row), worker_id=worker_id)
            except (DatabaseError, ConfigurationError):
                raise  # the database, not the row: the lease brings the task back
            except Exception as exc:  # whatever the row's values make the driver raise
                self._fail_unreadable(key, exc)

    def _fail_unreadable(self, key: dict[str, int], exc: Exception) -> None:
        """Fail a claimed run whose row cannot be read, naming the cause (:meth:`claim`)."""
        reason = (f"the task row cannot be read ({type(exc).__name__}: {_first_line(exc)}): a value is nested too deep "
                  f"or cannot be decoded; insert the task again with values the CHECKs of migration 0006 accept")
        log.error("task %s: %s", key["task_id"], reason)
        self._execute(queries.FINISH, {**key, "status": Outcome.FAILED.value, "error": reason, "metrics": None, "version": None,
                                       "progress": None})

    def heartbeat(self, run: Claim, lease_seconds: float, progress: dict[str, Any] | None = None) -> Outcome:
        """Renew a run's lease and store its latest ``progress``.

        Returns:
            ``Outcome.OK``; ``Outcome.CANCELLED`` when a user cancelled the task; ``Outcome.LOST``
            when the run is no longer this worker's (its lease expired and the task was re-queued
            or claimed again).
        """
        params = {**run.key(), "lease_seconds": float(lease_seconds), "progress": _json(progress)}
        if self._execute(queries.HEARTBEAT, params):
            return Outcome.OK
        rows = self._execute(queries.RUN_STATE, {"task_id": run.task_id})
        if rows and rows[0]["status"] == "cancelled" and rows[0]["run_id"] == run.run_id:
            return Outcome.CANCELLED
        return Outcome.LOST

    def status(self, task_id: int) -> str:
        """The task's current status."""
        return str(self.get(task_id)["status"])

    def finish(
        self,
        run: Claim,
        status: Outcome,
        *,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
        version: int | None = None,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """Record how a run ended, in the task row and the run's ``task_runs`` row.

        Args:
            status: one of :data:`pytrain.outcome.FINISHED` (its value is the task's status and
                the run's outcome).

        Returns:
            ``False`` when the run was no longer this worker's (nothing was written), or when the
            task was cancelled meanwhile and ``status`` is not ``cancelled``.
        """
        params = {
            **run.key(),
            "status": Outcome(status).value,
            "error": None if error is None else printable(error),  # a message may quote a file name
            "metrics": _json(metrics),
            "version": version,
            "progress": _json(progress),
        }
        return bool(self._execute(queries.FINISH, params))

    @contextmanager
    def success_transaction(
        self,
        run: Claim,
        *,
        metrics: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
    ) -> Iterator[Callable[[int, dict[str, Any] | None], None]]:
        """``with queue.success_transaction(run) as record:`` place the version, ``record(version)``.

        One transaction holds the task row's lock (``SELECT ... FOR UPDATE``: a concurrent re-queue,
        claim or cancel waits) from the check that ``run`` still holds the task to the commit, so a
        version is placed only by the run that holds the task and its success is recorded with it.
        The block should be short (a rename, not a copy): ``pytrain cancel`` waits for it. On entry:

        - the run no longer holds the task (``run_id`` changed, or the status is neither
          ``running`` nor ``cancelled``): nothing is written; raises :class:`RunEnded` ``lost``;
        - the task was cancelled: the run is recorded cancelled ("cancelled before publishing"),
          committed; raises :class:`RunEnded` ``cancelled``.

        Otherwise it yields ``record(version, metrics=None)``, which writes the success (with
        ``metrics`` in place of the run's when given); the commit follows the block. An exception
        in the block rolls everything back. If the commit fails (the server restarted), nothing was
        recorded: the caller tries again, and placing the version must then find the one this run
        placed already (:func:`pytrain.publish.publish_task` does, by task uid and run id).

        Args:
            run: the run that trained the task.
            metrics, progress: the run's metrics and last progress record.

        Raises:
            RunEnded: see above (before the block runs).
            DatabaseError: the database failed (nothing recorded; retry).
            PublishError: the block ended without calling ``record`` (rolled back).
        """
        state = Outcome.LOST
        try:
            with self.engine.begin() as conn:
                state = _held_state(conn, run)
                params = {**run.key(), "error": None, "metrics": _json(metrics), "version": None, "progress": _json(progress)}
                if state is Outcome.CANCELLED:
                    conn.execute(queries.FINISH, {**params, "status": Outcome.CANCELLED.value, "error": "cancelled before publishing"})
                if state is Outcome.OK:
                    recorded: list[int] = []

                    def record(version: int, published_metrics: dict[str, Any] | None = None) -> None:
                        values = {**params, "status": Outcome.SUCCEEDED.value, "version": int(version)}
                        if published_metrics is not None:
                            values["metrics"] = _json(published_metrics)
                        written = conn.execute(queries.FINISH, values).first()
                        assert written is not None  # the row is locked and was checked: FINISH matches it
                        recorded.append(int(version))

                    yield record
                    if not recorded:
                        raise PublishError(f"task {run.task_id}: the publisher placed no version and recorded nothing")
        except (DBAPIError, SQLAlchemyError) as exc:
            raise DatabaseError(f"recording task {run.task_id}'s success failed: {_reason(exc)}") from exc
        if state is not Outcome.OK:
            raise RunEnded(run.task_id, state)

    def finish_succeeded(
        self,
        run: Claim,
        publish: Callable[[], tuple[int, dict[str, Any] | None]],
        *,
        metrics: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
    ) -> Outcome:
        """Publish and record a successful run in one locked transaction (:meth:`success_transaction`).

        Args:
            run: the run that trained the task.
            publish: ``() -> (version, metrics or None)``: places the version (quickly: the row is
                locked meanwhile), returns it and the metrics to record (``None``: ``metrics``).
            metrics, progress: the run's metrics and last progress record.

        Returns:
            ``Outcome.SUCCEEDED``; ``Outcome.CANCELLED`` (cancelled before publishing);
            ``Outcome.LOST`` (the run no longer holds the task: nothing published, nothing written).

        Raises:
            DatabaseError: the database failed (nothing recorded; retry).
            Exception: whatever ``publish`` raises (nothing recorded; the lock is released).
        """
        try:
            with self.success_transaction(run, metrics=metrics, progress=progress) as record:
                record(*publish())
        except RunEnded as ended:
            return ended.status
        return Outcome.SUCCEEDED

    def requeue(self, run: Claim, reason: str, *, backoff_seconds: float = 0.0) -> bool:
        """Put a running task back in the queue without counting a lost attempt (a clean shutdown, a
        run the cluster lost, a run that found its folder held by another run).

        Args:
            run: the run giving the task back.
            reason: the task row's ``error`` (and the run's).
            backoff_seconds: no worker claims the task for this long (0: at once).

        Returns:
            ``False`` when the run no longer holds the task (nothing written).
        """
        return bool(self._execute(queries.REQUEUE, {**run.key(), "reason": reason, "backoff_seconds": float(backoff_seconds)}))

    def requeue_lost(self, max_attempts: int, *, own_worker_id: str | None = None) -> list[dict[str, Any]]:
        """Re-queue runs whose lease expired (and, with ``own_worker_id``, that worker's runs).

        Each re-queue increments ``attempts``; a task reaching ``max_attempts`` fails with a message
        saying so. The lost run's ``task_runs`` row ends as ``requeued`` (``failed`` when the task
        gives up). A row locked by a worker recording its success is skipped (looked at next time).
        A task cancelled while running whose worker's lease expired (the worker never recorded the
        cancel) keeps ``cancelled``; its run ends as ``cancelled`` and it gets its ``finished_at``.

        Returns:
            ``[{"id", "status", "attempts", "error"}]`` for every task touched.
        """
        rows = self._execute(queries.REQUEUE_LOST, {"max_attempts": int(max_attempts), "own_worker_id": own_worker_id})
        for row in rows:
            log.warning("task %s: %s", row["id"], row["error"])
        for row in self._execute(queries.END_ABANDONED_CANCELS):
            log.warning("task %s: cancelled while running; its worker stopped renewing the lease: run ended", row["id"])
        return rows

    def set_task_dir(self, run: Claim, task_dir: str) -> bool:
        """Record where the run prepared the task's folder.

        Returns:
            ``False`` when the run no longer holds the task (nothing written).
        """
        return bool(self._execute(queries.SET_TASK_DIR, {**run.key(), "task_dir": task_dir}))

    def retry(self, task_id: int) -> None:
        """Put a failed or cancelled task back in the queue as a new run (``pytrain retry``).

        ``attempts`` starts again at 0 and ``error`` is cleared; the earlier runs stay in
        ``task_runs`` (:meth:`runs`).

        Raises:
            TaskNotFoundError: no such task.
            ConfigurationError: the task is queued, running or succeeded (the message says which),
                or it was cancelled and its run is still stopping (try again in a few seconds).
        """
        self._execute(queries.END_ABANDONED_CANCELS)  # a cancelled run whose worker is gone ends here, not never
        if self._execute(queries.RETRY, {"task_id": task_id}):
            return
        status = self.get(task_id).status  # raises TaskNotFoundError
        stopping = self._execute(queries.RUN_STILL_STOPPING, {"task_id": task_id})
        if status in ("failed", "cancelled") and stopping:
            lease = stopping[0]["lease_expires_at"]
            raise ConfigurationError(
                f"task {task_id} is {status}, but its run on worker {stopping[0]['worker_id']} is still stopping: "
                "try again in a few seconds",
                hint="a retry now would start a second run beside it; its worker records the end within seconds"
                     + (f", or the run ends when its lease expires ({lease:%Y-%m-%d %H:%M:%S %Z})" if lease else ""),
            )
        hint = {
            "succeeded": "submit a new task to train the model again",
            "queued": "it is waiting for a worker already",
            "running": "cancel it first (`pytrain cancel ID`), or wait for it to end",
        }.get(status, "only failed or cancelled tasks can be retried")
        raise ConfigurationError(f"task {task_id} is {status}: only a failed or cancelled task can be retried", hint=hint)

    def runs(self, task_id: int) -> list[RunRow]:
        """The runs of task ``task_id`` (``task_runs``), oldest first; ``[]`` for a task never claimed."""
        return [RunRow(**{**row, "outcome": None if row["outcome"] is None else Outcome(row["outcome"])})
                for row in self._execute(queries.LIST_RUNS, {"task_id": task_id})]

    def listen(self) -> bool:
        """Start listening for queued-task notifications; returns whether ``LISTEN`` works (else: poll)."""
        return self._notifications.listen()

    def wait_for_notify(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a task to enter the queue; returns whether one did.

        Returns ``False`` at once when not listening (see :class:`Notifications`).
        """
        return self._notifications.wait(timeout)

    @property
    def listening(self) -> bool:
        """Whether :meth:`listen` holds an open ``LISTEN`` connection."""
        return self._notifications.listening

    def unlisten(self) -> None:
        """Stop listening (idempotent)."""
        self._notifications.close()

    def running_elsewhere(self, worker_id: str) -> set[int]:
        """Ids of tasks running under any worker other than ``worker_id``."""
        return {int(row["id"]) for row in self._execute(queries.RUNNING_ELSEWHERE, {"worker_id": worker_id})}

    def running_here(self, worker_id: str) -> set[int]:
        """Ids of tasks running under ``worker_id`` (at a worker's start: its crashed predecessor's)."""
        return {int(row["id"]) for row in self._execute(queries.RUNNING_HERE, {"worker_id": worker_id})}


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The first line of what the database said: the driver's error an SQLAlchemy exception wraps
    (``exc.orig``), else ``exc`` itself."""
    return _first_line(getattr(exc, "orig", None) or exc)


def _held_state(conn: Connection, run: Claim) -> Outcome:
    """Lock ``run``'s task row (``SELECT ... FOR UPDATE``) and say where the run stands:
    ``Outcome.OK`` (the row is ``running``) or ``Outcome.CANCELLED`` while the run still holds
    the task, else ``Outcome.LOST``."""
    row = conn.execute(queries.LOCK_TASK, {"task_id": run.task_id}).mappings().first()
    if row is not None and row["run_id"] == run.run_id and row["status"] in ("running", "cancelled"):
        return Outcome.OK if row["status"] == "running" else Outcome.CANCELLED
    return Outcome.LOST


class SourceRegistry(Repository):
    """The registered datasets (table ``sources``): ``pytrain sources sync`` fills it.

    Args:
        engine: a SQLAlchemy engine on a migrated database.

    Every method raises :class:`pytrain.errors.DatabaseError` when the database cannot be reached,
    and :class:`pytrain.errors.ConfigurationError` when the database rejects a name.
    """

    subject = "the dataset"

    def register(self, names: list[str]) -> list[str]:
        """Register datasets by name (their folder is the same name); returns the newly added ones."""
        added: list[str] = []
        for name in names:
            added += [row["name"] for row in self._execute(queries.REGISTER_SOURCE, {"name": name})]
        return added

    def names(self) -> list[str]:
        """Names of all registered datasets, sorted."""
        return [row["name"] for row in self._execute(queries.LIST_SOURCES)]


class Notifications:
    """``LISTEN`` on the queue's channel: wakes an idle worker when a task enters the queue.

    The connection is a separate autocommit psycopg connection (a pooled SQLAlchemy connection
    would deliver notifications only between transactions). Losing it is not an error: the worker
    falls back to polling, so a lost notification only delays a task by the polling interval.

    Args:
        engine: the database whose ``pytrain_tasks`` channel to listen on.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Any = None

    def listen(self) -> bool:
        """Open the connection and ``LISTEN``; returns whether it worked (else: poll)."""
        import psycopg
        from psycopg import sql

        from pytrain.db.engine import libpq_url
        from pytrain.db.models import NOTIFY_CHANNEL

        try:
            conn = psycopg.connect(libpq_url(self.engine), autocommit=True)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        except psycopg.Error as exc:
            log.warning("cannot LISTEN on %s (%s); polling", NOTIFY_CHANNEL, exc)
            return False
        self._conn = conn
        return True

    @property
    def listening(self) -> bool:
        """Whether the ``LISTEN`` connection is open."""
        return self._conn is not None

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notification; returns whether one arrived.

        Without a connection it returns ``False`` at once (the caller sleeps instead). A broken
        connection is closed and logged, and the worker polls from then on.
        """
        import psycopg

        if self._conn is None:
            return False
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.Error as exc:
            log.warning("lost the LISTEN connection (%s); polling", exc)
            self.close()
        return False

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class WorkerLock:
    """One live orchestrator per worker id: a session-level advisory lock on the worker id.

    The lock (``pg_try_advisory_lock`` on PostgreSQL's 64-bit hash of the id, see
    :data:`pytrain.db.queries.WORKER_LOCK`) is held on a dedicated autocommit connection whose
    ``application_name`` names this host and pid, so a second orchestrator with the same id can
    say who holds it. The server drops the lock with the connection: an orchestrator that crashed
    (or whose connection broke) does not block its successor.

    With ``runner`` given, taking the lock also records the runner and ``gpus`` in the ``workers``
    table on the lock's connection (:data:`pytrain.db.queries.REGISTER_WORKER`), where the console's
    Workers page reads them.

    Args:
        engine: the queue's database.
        worker_id: the id to hold.
        runner: the orchestrator's runner's name (``local``, ``docker``, ``slurm``, ``ray``).
        gpus: its GPU selection (``"0,1"``, ``"all"``; ``None``: none given).
    """

    def __init__(self, engine: Engine, worker_id: str, *, runner: str | None = None, gpus: str | None = None) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.runner, self.gpus = runner, gpus
        self._conn: Any = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (as far as it knows: a broken connection is found by :meth:`ensure`)."""
        return self._conn is not None

    def acquire(self) -> None:
        """Take the lock, or refuse.

        Raises:
            ConfigurationError: another live orchestrator holds this worker id (the message names
                its host and pid, and the fix).
            DatabaseError: the database cannot be reached.
        """
        if self._conn is not None:
            return
        name = f"pytrain worker {socket.gethostname()} pid {os.getpid()}"[:63]  # NAMEDATALEN - 1
        key = {"worker_id": self.worker_id}
        conn = None
        try:
            conn = self.engine.execution_options(isolation_level="AUTOCOMMIT").connect()
            conn.detach()  # a connection of its own: closing it really closes it (and drops the lock)
            conn.execute(queries.SET_APPLICATION_NAME, {"name": name})
            locked = bool(conn.execute(queries.WORKER_LOCK, key).scalar())
            holder = None if locked else conn.execute(queries.WORKER_LOCK_HOLDER, key).mappings().first()
            if locked and self.runner is not None:
                conn.execute(queries.REGISTER_WORKER, {**key, "runner": self.runner, "gpus": self.gpus})
        except (DBAPIError, SQLAlchemyError) as exc:
            if conn is not None:
                conn.close()
            raise DatabaseError(f"cannot lock worker id {self.worker_id!r}: {_reason(exc)}") from exc
        if not locked:
            conn.close()
            who = "another orchestrator"
            if holder is not None:
                who = (f"{holder['application_name'] or 'another session'} (from {holder['client_addr'] or 'a local socket'}, "
                       f"connected since {holder['backend_start']:%Y-%m-%d %H:%M:%S %Z})")
            raise ConfigurationError(
                f"worker id {self.worker_id!r} is already in use by a running orchestrator: {who}",
                hint="give each orchestrator its own id (PYTRAIN_WORKER_ID or --worker-id), or stop the other one first",
            )
        self._conn = conn
        log.info("worker id %s locked (%s)", self.worker_id, name)

    def ensure(self) -> None:
        """Check the lock's connection; after it broke (server restart), take the lock again.

        Raises:
            ConfigurationError: another orchestrator took the id while the connection was down.
            DatabaseError: the database cannot be reached (the lock is not held).
        """
        if self._conn is not None:
            try:
                self._conn.execute(queries.PING)
                return
            except (DBAPIError, SQLAlchemyError) as exc:
                log.warning("lost the connection holding worker id %s (%s); locking it again", self.worker_id,
                            _reason(exc))
                self.release()
        self.acquire()

    def release(self) -> None:
        """Release the lock (close its connection); idempotent."""
        if self._conn is not None:
            try:
                self._conn.close()
            except (DBAPIError, SQLAlchemyError):
                pass  # a broken connection: the server dropped the lock with it
            finally:
                self._conn = None
