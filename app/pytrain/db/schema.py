"""Schema management: ``pytrain db upgrade`` and the start-up check that refuses an old schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pytrain.errors import DatabaseError, SchemaOutOfDateError
from pytrain.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    """An Alembic config pointing at PyTrain's migrations (no ``alembic.ini`` needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest migration revision this PyTrain ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _engine(target: Settings | Engine | None) -> Engine:
    if isinstance(target, Engine):
        return target
    from pytrain.db.engine import get_engine

    return get_engine(target)


def current_revision(target: Settings | Engine | None = None) -> str | None:
    """The schema revision of the database (``None``: PyTrain's schema was never created).

    Raises:
        DatabaseError: the server cannot be reached.
    """
    engine = _engine(target)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot reach the database {engine.url.render_as_string()}: {exc.__class__.__name__}",
                            hint="check PYTRAIN_DATABASE_URL and that the server runs") from exc


def upgrade(target: Settings | Engine | None = None, revision: str = "head") -> str:
    """Migrate the database to ``revision`` (default: the newest); safe to run concurrently.

    Args:
        target: an engine, or settings to get one from (default: the process settings).
        revision: Alembic revision to upgrade to.

    Returns:
        The revision the database is at afterwards.

    Raises:
        DatabaseError: the server cannot be reached or a migration fails.
    """
    engine = _engine(target)
    current = current_revision(engine)
    if current is not None and not _known_revision(current):
        raise _newer_schema_error(current)
    config = alembic_config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database migration failed: {exc}") from exc
    except CommandError as exc:  # e.g. an unknown target revision
        raise DatabaseError(f"database migration failed: {exc}") from exc
    return current_revision(engine) or ""


def _known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this PyTrain's migrations."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # alembic: "Can't locate revision identified by ..."
        return False


def _newer_schema_error(current: str) -> SchemaOutOfDateError:
    return SchemaOutOfDateError(
        f"the database schema is at revision {current}, which this PyTrain (newest {head_revision()}) does not know: "
        "a newer PyTrain migrated it",
        hint="upgrade PyTrain to the version the other orchestrators run",
    )


def check_schema(target: Settings | Engine | None = None) -> None:
    """Refuse to work on a database whose schema is missing or older than this PyTrain.

    Raises:
        SchemaOutOfDateError: the schema is missing or not at :func:`head_revision`; the hint names
            ``pytrain db upgrade``.
        DatabaseError: the server cannot be reached.
    """
    current = current_revision(target)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaOutOfDateError("the database has no PyTrain schema", hint="run `pytrain db upgrade`")
    if not _known_revision(current):
        raise _newer_schema_error(current)
    raise SchemaOutOfDateError(
        f"the database schema is at revision {current}, this PyTrain needs {head}",
        hint="run `pytrain db upgrade`",
    )
