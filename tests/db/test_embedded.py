from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

from pytrain.db.embedded import HANDLES_FILE, embedded_database_url, stop_server, to_sqlalchemy_url
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


def test_a_user_killed_without_detaching_does_not_keep_the_server_running():
    """A pytrain process killed by a signal never removes its pid from the server's users; the
    next process to attach forgets it, so the last real user still stops the server."""
    base = Path(tempfile.mkdtemp(prefix="pytrain-embedded-test-"))
    data_dir = base / "state"
    pgdata = data_dir / "postgres"
    try:
        embedded_database_url(data_dir)
        killed = subprocess.Popen([sys.executable, "-c", "pass"])
        killed.wait()
        handles = pgdata / HANDLES_FILE
        handles.write_text(json.dumps([*json.loads(handles.read_text()), killed.pid]))
        embedded_database_url(data_dir)  # attaching again forgets the dead user
        assert json.loads(handles.read_text()) == [os.getpid()]
        stop_server(pgdata)
        assert not (pgdata / "postmaster.pid").exists()  # the last user stopped it
    finally:
        stop_server(pgdata)
        shutil.rmtree(base, ignore_errors=True)


def test_configured_url_is_used_as_given_with_psycopg_driver():
    from pytrain.settings import Settings

    settings = Settings(database_url="postgresql://u:pw@db.example:5432/pytrain")
    assert database_url(settings) == "postgresql+psycopg://u:pw@db.example:5432/pytrain"


def test_to_sqlalchemy_url_switches_database():
    assert to_sqlalchemy_url("postgresql://postgres:@/postgres?host=/tmp/x", database="other") == (
        "postgresql+psycopg://postgres:@/other?host=%2Ftmp%2Fx"
    )


def test_a_data_dir_that_cannot_be_created_is_one_clear_error(tmp_path):
    import pytest

    from pytrain.errors import DatabaseError

    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    with pytest.raises(DatabaseError) as caught:
        embedded_database_url(not_a_folder)
    assert str(caught.value) == (
        f"cannot create the embedded PostgreSQL folder {not_a_folder}: File exists "
        "(hint: set PYTRAIN_DATA_DIR to a writable folder, or PYTRAIN_DATABASE_URL to use another server)"
    )
