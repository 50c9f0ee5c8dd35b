"""SQLAlchemy 2 models of PyTrain's tables.

The ``training_tasks`` row is PyTrain's public API: a user inserts one row (every column but
``model_name``, ``sources`` and ``classes`` has a database default) and an orchestrator trains it.
CHECK constraints reject impossible values at the database, so nothing half-valid enters the queue.
The models mirror the Alembic migrations in :mod:`pytrain.db.migrations` (the migrations, not
``metadata.create_all``, build the schema); ``tests/db`` checks that both agree.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pytrain.outcome import FINISHED, RECORDED
from pytrain.sweeps.vocabulary import METRICS, PRUNERS, PUBLISH_MODES, SAMPLERS, SWEEP_STATUSES, sql_in
from pytrain.task_columns import (
    FRACTION_SUM_TOLERANCE, MODEL_NAME_PATTERN, SOURCE_NAME_PATTERN, TASK_COLUMNS, TaskColumn, check_constraints, size_constraints, task_defaults,
)

# Task lifecycle: queued -> running -> succeeded | failed | cancelled | pruned (running -> queued on re-queue;
# pruned: a sweep's trial its pruner stopped, migration 0008).
FINAL_STATUSES = tuple(outcome.value for outcome in FINISHED)
STATUSES = ("queued", "running", *FINAL_STATUSES)

#: ``task_runs.outcome`` of an ended run (``NULL`` while it runs): the values of
#: :data:`pytrain.outcome.RECORDED` (a final status, or ``requeued``: the run was lost or
#: interrupted and the task went back to the queue).
RUN_OUTCOMES = tuple(outcome.value for outcome in RECORDED)

#: Channel of the insert/re-queue trigger: payload is the task id.
NOTIFY_CHANNEL = "pytrain_tasks"

#: Database defaults of ``training_tasks`` (derived from :data:`pytrain.task_columns.TASK_COLUMNS`).
TASK_DEFAULTS: dict[str, Any] = task_defaults()

naming = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming)


class Source(Base):
    """A registered dataset: ``<sources root>/<folder>/<class_subclass>/*.mp4``.

    ``pytrain sources sync`` registers every folder of the sources root. The folder name must equal
    the source name (checked by the database).
    """

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    folder: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))

    __table_args__ = (
        CheckConstraint(f"name ~ '{SOURCE_NAME_PATTERN}'", name="name_format"),
        CheckConstraint("folder = name", name="folder_is_name"),
    )


#: Values of ``videos.status``: the file decodes (``ok``) or not (``bad``, with a reason).
VIDEO_STATUSES = ("ok", "bad")


class Video(Base):
    """One video file of a registered dataset in the catalog (``pytrain sources sync``).

    ``path`` is relative to the dataset folder (``cooking_x/clip_000.mp4``); ``(size_bytes,
    mtime_ns)`` is the stamp under which the probe result holds. Units: bytes, nanoseconds since
    the epoch, seconds, frames, frames per second, pixels.
    """

    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    dataset: Mapped[str] = mapped_column(Text, ForeignKey("sources.name", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Double, nullable=True)
    frame_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fps: Mapped[float | None] = mapped_column(Double, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    codec: Mapped[str | None] = mapped_column(Text, nullable=True)
    pixel_format: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    probed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))

    __table_args__ = (
        UniqueConstraint("dataset", "path"),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in VIDEO_STATUSES)})", name="status_known"),
        CheckConstraint("(status = 'bad') = (reason IS NOT NULL)", name="bad_has_reason"),
        CheckConstraint("size_bytes >= 0", name="size_not_negative"),
    )


class VideoProxy(Base):
    """A training proxy of a catalogued video (``pytrain sources sync --proxies``; migration 0007).

    ``source_hash`` is the video's ``content_hash`` when the proxy was made: when they differ, the
    proxy is stale. Units: pixels (``short_side``), frames (``gop``), frames per second, bytes.
    """

    __tablename__ = "video_proxies"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    dataset: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    short_side: Mapped[int] = mapped_column(Integer)
    source_hash: Mapped[str] = mapped_column(Text)
    gop: Mapped[int] = mapped_column(Integer)
    fps: Mapped[float | None] = mapped_column(Double, nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    made_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))

    __table_args__ = (
        UniqueConstraint("dataset", "path", "short_side"),
        ForeignKeyConstraint(["dataset", "path"], ["videos.dataset", "videos.path"], ondelete="CASCADE"),
        CheckConstraint("short_side > 0", name="short_side_positive"),
        CheckConstraint("size_bytes >= 0", name="size_not_negative"),
    )


_SQL_TYPES = {
    "text": Text,
    "text[]": lambda: ARRAY(Text),
    "boolean": Boolean,
    "integer": Integer,
    "bigint": BigInteger,
    "double precision": Double,
    "jsonb": JSONB,
}


def _task_column(spec: TaskColumn) -> Any:
    """``mapped_column`` of a user-settable column: its SQL type and server default from the column
    table, ``NOT NULL`` (every one has a value: given or the default); ``sort_order`` puts the
    table's columns right after ``id``, in table order."""
    default = spec.sql_default()
    return mapped_column(_SQL_TYPES[spec.sql_type](), nullable=False, server_default=None if default is None else text(default),
                         sort_order=-1)


#: The user-settable columns of ``training_tasks`` as a declarative mixin: one ``mapped_column``
#: per entry of :data:`pytrain.task_columns.TASK_COLUMNS` (so a new column there is a column of
#: :class:`TrainingTask` with no line here; its migration adds it to the database).
TaskColumnsMixin = type("TaskColumnsMixin", (), {c.name: _task_column(c) for c in TASK_COLUMNS})


class TrainingTask(TaskColumnsMixin, Base):
    """One training task; every column is documented in docs/user-guide/tasks.md ("The training_tasks table") and examples/insert_task.sql.

    The user-settable columns (``model_name``, ``sources``, ``classes``, ``epochs``, ...) come from
    the column table through :data:`TaskColumnsMixin`; the columns below are the queue's own.
    """

    __tablename__ = "training_tasks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, sort_order=-2)
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    task_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Random per row: names the task folder, so no later row (after a database reset) reuses it.
    uid: Mapped[uuid.UUID] = mapped_column(Uuid, server_default=text("gen_random_uuid()"), unique=True)
    #: The current (or last) run, ``task_runs.id``: the fencing token of every write a run makes.
    run_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("task_runs.id", ondelete="SET NULL", use_alter=True), nullable=True
    )

    __table_args__ = (
        # The bounds and patterns of the user-settable columns, from the column table.
        *(CheckConstraint(condition, name=name) for name, condition in check_constraints().items()),
        # Migration 0006: the size and nesting of the JSON and array columns (a claim decodes them).
        *(CheckConstraint(condition, name=name) for name, condition in size_constraints().items()),
        CheckConstraint(
            "cardinality(sources) >= 1 AND array_position(sources, NULL) IS NULL AND '' <> ALL (sources)",
            name="sources_not_empty",
        ),
        CheckConstraint(
            "cardinality(classes) >= 1 AND array_position(classes, NULL) IS NULL AND '' <> ALL (classes)",
            name="classes_not_empty",
        ),
        CheckConstraint(
            f"abs(train_fraction + val_fraction + test_fraction - 1) < {FRACTION_SUM_TOLERANCE:g}", name="fractions_sum_to_one"
        ),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="status_known"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        CheckConstraint("version IS NULL OR version >= 1", name="version_positive"),
        CheckConstraint(
            "status <> 'running' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL)",
            name="running_has_lease",
        ),
        Index("ix_training_tasks_queue", text("priority DESC"), "created_at", "id", postgresql_where=text("status = 'queued'")),
        Index("ix_training_tasks_lease", "lease_expires_at", postgresql_where=text("status = 'running'")),
    )


class TaskRun(Base):
    """One run of a task: from a worker's claim to its end (migration 0005).

    A task that is re-queued (worker lost, interrupted) or retried (``pytrain retry``) gets a new
    run; the row keeps them all. ``outcome`` is ``NULL`` while the run is going, else one of
    :data:`RUN_OUTCOMES`; ``version`` is the version a successful run published.
    """

    __tablename__ = "task_runs"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("training_tasks.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        CheckConstraint(f"outcome IN ({', '.join(repr(s) for s in RUN_OUTCOMES)})", name="outcome_known"),
        CheckConstraint("(finished_at IS NULL) = (outcome IS NULL)", name="finished_has_outcome"),
    )


class Sweep(Base):
    """A hyper-parameter sweep (migration 0008; ``pytrain sweep create``, :mod:`pytrain.sweeps`).

    Its study lives in Optuna's tables (schema :data:`~pytrain.sweeps.vocabulary.OPTUNA_SCHEMA`,
    study name = ``name``); each trial is an ordinary ``training_tasks`` row, linked by
    :class:`SweepTrial`. ``base`` holds the task columns every trial shares; ``params`` the
    parameter specs (``[{"name", "kind", ...}]``, :class:`pytrain.sweeps.params.ParamSpec`).
    ``published_task_id``/``published_version``: the trial published when the sweep ended.
    """

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    base: Mapped[dict[str, Any]] = mapped_column(JSONB)
    params: Mapped[list[Any]] = mapped_column(JSONB)
    trials: Mapped[int] = mapped_column(Integer)
    parallel: Mapped[int] = mapped_column(Integer)
    sampler: Mapped[str] = mapped_column(Text)
    pruner: Mapped[str] = mapped_column(Text)
    metric: Mapped[str] = mapped_column(Text)
    publish: Mapped[str] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(Text, server_default=text("'running'"))
    published_task_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    published_version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        CheckConstraint(f"name ~ '{MODEL_NAME_PATTERN}'", name="name_format"),
        CheckConstraint("trials >= 1", name="trials_positive"),
        CheckConstraint("parallel >= 1", name="parallel_positive"),
        CheckConstraint(sql_in("sampler", SAMPLERS), name="sampler_known"),
        CheckConstraint(sql_in("pruner", PRUNERS), name="pruner_known"),
        CheckConstraint(sql_in("metric", METRICS), name="metric_known"),
        CheckConstraint(sql_in("publish", PUBLISH_MODES), name="publish_known"),
        CheckConstraint(sql_in("status", SWEEP_STATUSES), name="status_known"),
    )


class SweepTrial(Base):
    """One trial of a sweep: its Optuna trial and the task that trains it (migration 0008).

    ``number`` is Optuna's trial number (0, 1, ...); ``told`` is the state told to Optuna when the
    task ended (``COMPLETE``, ``PRUNED``, ``FAIL``), ``NULL`` while it runs: the guard that tells
    each trial once (a trial whose task is re-claimed after a crash goes on as the same trial).
    """

    __tablename__ = "sweep_trials"

    sweep_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("training_tasks.id", ondelete="CASCADE"), unique=True)
    optuna_trial_id: Mapped[int] = mapped_column(BigInteger)
    told: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))

    __table_args__ = (CheckConstraint("told IN ('COMPLETE', 'PRUNED', 'FAIL')", name="told_known"),)


class Worker(Base):
    """An orchestrator's runner and GPU selection, written as it takes its worker id's lock
    (migration 0009; :class:`pytrain.db.queue.WorkerLock`). ``backend_pid`` is the lock
    connection's server process: the row describes a live orchestrator only while that session
    holds the id's lock (:data:`pytrain.db.queries.LIVE_WORKERS`)."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    runner: Mapped[str] = mapped_column(Text)
    gpus: Mapped[str | None] = mapped_column(Text, nullable=True)
    backend_pid: Mapped[int] = mapped_column(Integer)
    locked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
