"""The engine's connections carry the keepalive and timeout parameters (a silently lost database
server becomes an error within seconds), on the pool's connections and on the plain psycopg ones."""

from __future__ import annotations

import psycopg
import pytest

from pytrain.db.engine import CONNECT_ARGS, check_database_password, get_engine, libpq_url
from pytrain.errors import ConfigurationError
from pytrain.settings import Settings


def _parameters(conn: psycopg.Connection) -> dict[str, str]:
    return conn.info.get_parameters()


def test_pool_and_listen_connections_carry_the_keepalive_and_timeout_parameters(database_url, tmp_path):
    engine = get_engine(Settings(database_url=database_url, data_dir=tmp_path))
    raw = engine.raw_connection()
    try:
        pooled = _parameters(raw.driver_connection)
    finally:
        raw.close()
    with psycopg.connect(libpq_url(engine)) as conn:
        plain = _parameters(conn)
    for parameters in (pooled, plain):
        assert {key: parameters.get(key) for key in CONNECT_ARGS} == {key: str(value) for key, value in CONNECT_ARGS.items()}


def test_a_parameter_in_the_database_url_wins(database_url, tmp_path):
    separator = "&" if "?" in database_url else "?"
    engine = get_engine(Settings(database_url=f"{database_url}{separator}keepalives_idle=42", data_dir=tmp_path))
    raw = engine.raw_connection()
    try:
        assert _parameters(raw.driver_connection)["keepalives_idle"] == "42"
    finally:
        raw.close()
    with psycopg.connect(libpq_url(engine)) as conn:
        assert _parameters(conn)["keepalives_idle"] == "42"


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://pytrain:change-me@postgres:5432/pytrain",
    "postgresql://pytrain:postgres@10.0.0.5/pytrain",
    "postgresql://pytrain:@db.example.internal/pytrain",
    "postgresql://pytrain:password@/pytrain?host=db1,127.0.0.1",
])
def test_a_guessable_password_for_a_network_host_is_refused(url):
    with pytest.raises(ConfigurationError, match=r"password for user 'pytrain' on .*openssl rand"):
        check_database_password(url)


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://postgres:@/pytrain?host=/tmp/pytrain-pg-x/data",  # the embedded server's socket
    "postgresql://pytrain:change-me@localhost/pytrain",
    "postgresql://pytrain:postgres@127.0.0.1:5433/pytrain",
    "postgresql://pytrain:postgres@[::1]:5432/pytrain",
    "postgresql://pytrain@postgres/pytrain",  # no password: .pgpass, PGPASSWORD or a client certificate
    "postgresql://pytrain:3f9a1c0e5b7d2a64c8e1f0b9@postgres/pytrain",
])
def test_a_local_server_or_a_strong_or_absent_password_passes(url):
    check_database_password(url)
