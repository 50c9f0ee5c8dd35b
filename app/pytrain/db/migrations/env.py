"""Alembic environment of PyTrain's schema.

Run through :func:`pytrain.db.upgrade` (``pytrain db upgrade``), which passes an open connection in
``config.attributes["connection"]``. Migrations take a transaction-level advisory lock, so two
processes upgrading the same database at once run one after the other.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from pytrain.db.models import Base

# Any constant works; it only has to be the same for every PyTrain process.
_MIGRATION_LOCK_KEY = 7_305_112_001

target_metadata = Base.metadata
config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=False)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("PyTrain migrations run online only: use `pytrain db upgrade`")
run_migrations_online()
