from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg

from pytrain.db.embedded import embedded_database_url, stop_server, to_sqlalchemy_url
from pytrain.db.engine import database_url


def test_embedded_server_keeps_data_across_restarts():
    # Outside /tmp/pytest-of-root, which other pytest sessions reset to mode 0700 (see fixtures.db).
    base = Path(tempfile.mkdtemp(prefix="pytrain-embedded-test-"))
    data_dir = base / "state"
    url = embedded_database_url(data_dir)
    assert url.startswith("postgresql+psycopg://postgres:@/pytrain?host=%2F")  # Unix socket only
    libpq = url.replace("postgresql+psycopg", "postgresql")
    try:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        stop_server(data_dir / "postgres")
        assert not (data_dir / "postgres" / "postmaster.pid").exists()  # really stopped
        assert embedded_database_url(data_dir) == url  # restarted on the same data
        with psycopg.connect(libpq) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]
    finally:
        stop_server(data_dir / "postgres")
        shutil.rmtree(base, ignore_errors=True)


def test_configured_url_is_used_as_given_with_psycopg_driver():
    from pytrain.settings import Settings

    settings = Settings(database_url="postgresql://u:pw@db.example:5432/pytrain")
    assert database_url(settings) == "postgresql+psycopg://u:pw@db.example:5432/pytrain"


def test_to_sqlalchemy_url_switches_database():
    assert to_sqlalchemy_url("postgresql://postgres:@/postgres?host=/tmp/x", database="other") == (
        "postgresql+psycopg://postgres:@/other?host=%2Ftmp%2Fx"
    )
