"""SQLAlchemy 2 models of PyTrain's two tables.

The ``training_tasks`` row is PyTrain's public API: a user inserts one row (every column but
``model_name``, ``sources`` and ``classes`` has a database default) and an orchestrator trains it.
CHECK constraints reject impossible values at the database, so nothing half-valid enters the queue.
The models mirror the Alembic migrations in :mod:`pytrain.db.migrations` (the migrations, not
``metadata.create_all``, build the schema); ``tests/db`` checks that both agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Task lifecycle: queued -> running -> succeeded | failed | cancelled (running -> queued on re-queue).
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")

#: Channel of the insert/re-queue trigger: payload is the task id.
NOTIFY_CHANNEL = "pytrain_tasks"

#: Database defaults of ``training_tasks`` (also used by ``pytrain submit`` and the docs).
TASK_DEFAULTS: dict[str, Any] = {
    "architecture": "r3d_18",
    "pretrained": False,
    "num_frames": 20,
    "height": 224,
    "width": 224,
    "epochs": 50,
    "batch_size": 4,
    "shuffle_size": 300,
    "learning_rate": 0.001,
    "seed": 0,
    "train_fraction": 0.6,
    "val_fraction": 0.2,
    "test_fraction": 0.2,
    "include_other": False,
    "priority": 0,
}

#: Ranges enforced by CHECK constraints (inclusive), shared with ``pytrain submit``'s validation.
LIMITS: dict[str, tuple[float, float]] = {
    "num_frames": (1, 512),
    "height": (8, 4096),
    "width": (8, 4096),
    "epochs": (1, 100_000),
    "batch_size": (1, 4096),
    "shuffle_size": (1, 1_000_000),
}
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SOURCE_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
ARCHITECTURE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

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


def _range(column: str) -> CheckConstraint:
    low, high = LIMITS[column]
    return CheckConstraint(f"{column} BETWEEN {int(low)} AND {int(high)}", name=f"{column}_range")


class TrainingTask(Base):
    """One training task; every column is documented in README.md ("The training_tasks table") and examples/insert_task.sql."""

    __tablename__ = "training_tasks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    model_name: Mapped[str] = mapped_column(Text)
    sources: Mapped[list[str]] = mapped_column(ARRAY(Text))
    classes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    architecture: Mapped[str] = mapped_column(Text, server_default=text("'r3d_18'"))
    pretrained: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    num_frames: Mapped[int] = mapped_column(Integer, server_default=text("20"))
    height: Mapped[int] = mapped_column(Integer, server_default=text("224"))
    width: Mapped[int] = mapped_column(Integer, server_default=text("224"))
    epochs: Mapped[int] = mapped_column(Integer, server_default=text("50"))
    batch_size: Mapped[int] = mapped_column(Integer, server_default=text("4"))
    shuffle_size: Mapped[int] = mapped_column(Integer, server_default=text("300"))
    learning_rate: Mapped[float] = mapped_column(Double, server_default=text("0.001"))
    seed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    train_fraction: Mapped[float] = mapped_column(Double, server_default=text("0.6"))
    val_fraction: Mapped[float] = mapped_column(Double, server_default=text("0.2"))
    test_fraction: Mapped[float] = mapped_column(Double, server_default=text("0.2"))
    include_other: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
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

    __table_args__ = (
        CheckConstraint(f"model_name ~ '{MODEL_NAME_PATTERN}'", name="model_name_format"),
        CheckConstraint(
            "cardinality(sources) >= 1 AND array_position(sources, NULL) IS NULL AND '' <> ALL (sources)",
            name="sources_not_empty",
        ),
        CheckConstraint(
            "cardinality(classes) >= 1 AND array_position(classes, NULL) IS NULL AND '' <> ALL (classes)",
            name="classes_not_empty",
        ),
        CheckConstraint(f"architecture ~ '{ARCHITECTURE_PATTERN}'", name="architecture_format"),
        _range("num_frames"),
        _range("height"),
        _range("width"),
        _range("epochs"),
        _range("batch_size"),
        _range("shuffle_size"),
        CheckConstraint("learning_rate > 0 AND learning_rate <= 10", name="learning_rate_range"),
        CheckConstraint(
            "train_fraction > 0 AND train_fraction <= 1 AND val_fraction >= 0 AND val_fraction < 1 "
            "AND test_fraction > 0 AND test_fraction < 1",
            name="fractions_range",
        ),
        CheckConstraint("seed >= 0", name="seed_not_negative"),
        CheckConstraint("abs(train_fraction + val_fraction + test_fraction - 1) < 1e-6", name="fractions_sum_to_one"),
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
