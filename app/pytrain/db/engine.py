"""Engines and connections: one SQLAlchemy engine per database URL, per process."""

from __future__ import annotations

import ipaddress
import logging
import threading

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url

from pytrain.errors import ConfigurationError
from pytrain.settings import Settings, get_settings

log = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def database_url(settings: Settings | None = None) -> str:
    """The SQLAlchemy URL PyTrain uses: ``PYTRAIN_DATABASE_URL``, or the embedded server's.

    Without a configured URL this starts the embedded PostgreSQL server (data under
    ``settings.data_dir/postgres``), or attaches to it when it already runs.

    Raises:
        ConfigurationError: the URL is not a PostgreSQL URL.
        DatabaseError: the embedded server cannot start.
    """
    settings = settings or get_settings()
    if settings.database_url is None:
        from pytrain.db.embedded import embedded_database_url

        return embedded_database_url(settings.data_dir)
    raw = settings.database_url.get_secret_value()
    try:
        url = make_url(raw)
    except Exception as exc:
        raise ConfigurationError("PYTRAIN_DATABASE_URL is not a valid URL", hint="postgresql+psycopg://user:password@host:5432/db") from exc
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"PYTRAIN_DATABASE_URL must point to PostgreSQL, got {url.get_backend_name()!r}",
            hint="postgresql+psycopg://user:password@host:5432/db",
        )
    if url.drivername in ("postgresql", "postgres"):  # plain libpq URLs: use psycopg 3, not psycopg2
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


#: libpq connection parameters that turn a silent network failure (a host or link gone without a
#: FIN or RST: a partition, a NAT that forgot the flow) into an error within seconds instead of the
#: kernel's ~15 minutes of retransmissions (``tcp_retries2``) or, for an idle connection, never.
#: ``connect_timeout`` s per connection attempt; a keepalive probe after ``keepalives_idle`` s of
#: silence, every ``keepalives_interval`` s, ``keepalives_count`` unanswered ones end the connection;
#: ``tcp_user_timeout`` ms that sent data may stay unacknowledged (Linux ``TCP_USER_TIMEOUT``).
#: Source: PostgreSQL's libpq documentation, "Parameter Key Words". Ignored on Unix sockets; a
#: value given in ``PYTRAIN_DATABASE_URL``'s query string wins. Well inside the default 60 s lease,
#: so a worker that lost its database fails its heartbeat, and the fence stops its run.
CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def connect_args(url: str | URL) -> dict[str, int]:
    """:data:`CONNECT_ARGS` less those ``url``'s query already sets."""
    query = make_url(url).query if isinstance(url, str) else url.query
    return {key: value for key, value in CONNECT_ARGS.items() if key not in query}


def get_engine(settings: Settings | None = None) -> Engine:
    """The process-wide SQLAlchemy engine for ``settings`` (cached per URL).

    Args:
        settings: PyTrain settings; default :func:`pytrain.settings.get_settings`.

    Returns:
        An engine with ``pool_pre_ping`` (survives server restarts) and :data:`CONNECT_ARGS`
        (a silently lost server is an error within seconds).

    Raises:
        ConfigurationError, DatabaseError: see :func:`database_url`.
    """
    url = database_url(settings)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args(url))
            _engines[url] = engine
        return engine


def libpq_url(engine: Engine) -> str:
    """The engine's URL as a plain libpq connection string for :func:`psycopg.connect` (LISTEN, the
    worker lock), with :data:`CONNECT_ARGS` in its query like the engine's connections."""
    url: URL = engine.url.set(drivername="postgresql")
    url = url.update_query_dict({key: str(value) for key, value in connect_args(url).items()})
    return url.render_as_string(hide_password=False)


def libpq_url_and_password(engine: Engine) -> tuple[str, str | None]:
    """:func:`libpq_url` without the password, and the password (``None`` when the URL has none).

    For a child process such as ``psql``: its command line is readable by every local user
    (``ps``, ``/proc/PID/cmdline``), so the URL goes there and the password into the child's own
    environment as ``PGPASSWORD`` (libpq reads it; ``/proc/PID/environ`` is the user's alone).
    """
    url = make_url(libpq_url(engine))
    password = url.password if url.password is not None else url.query.get("password")
    # URL.set(password=None) keeps the password (None means "unchanged"); an empty one would make
    # libpq ignore PGPASSWORD: build the URL anew without it.
    url = URL.create(url.drivername, username=url.username, host=url.host, port=url.port, database=url.database,
                     query={k: v for k, v in url.query.items() if k != "password"})
    return url.render_as_string(hide_password=False), (None if password is None else str(password))


#: Passwords anyone can guess: the ones of examples and images (``.env.example`` once shipped
#: ``change-me``; the postgres image's docs use ``postgres``/``example``), and none at all.
WEAK_PASSWORDS = frozenset({"", "change-me", "changeme", "postgres", "password", "example", "pytrain", "secret"})


def _is_local(host: str | None) -> bool:
    """A Unix socket (no host, or a directory), ``localhost`` or a loopback address."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name
        return False


def check_database_password(url: str | URL) -> None:
    """Refuse a guessable password for a database reached over the network.

    A URL without a password passes (``.pgpass``, ``PGPASSWORD`` or a client certificate
    supply the credentials); so does any password on a Unix socket or loopback address.

    Raises:
        ConfigurationError: the URL names a host other than this one (``postgres`` in compose,
            an address) and its password is empty or one of :data:`WEAK_PASSWORDS`; the message
            names the host (never the password) and the fix.
    """
    url = make_url(url) if isinstance(url, str) else url
    hosts = [url.host, *str(url.query.get("host") or "").split(",")]  # libpq: ?host=a,b or a socket folder
    remote = [h for h in hosts if not _is_local(h)]
    if url.password is None or not remote or url.password not in WEAK_PASSWORDS:
        return
    what = "an empty password" if url.password == "" else "a well-known password"
    raise ConfigurationError(
        f"the database URL has {what} for user {url.username!r} on {', '.join(remote)}: anyone who reaches that "
        "port can log in as that user",
        hint="set a long random one (openssl rand -hex 24): with docker-compose, POSTGRES_PASSWORD in .env (a pgdata "
             "volume that exists keeps its old password: ALTER ROLE ... PASSWORD first); else the password in "
             "PYTRAIN_DATABASE_URL; see docs/operations/security.md",
    )


def dispose_engines() -> None:
    """Close every cached engine's connections (tests, forks)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
