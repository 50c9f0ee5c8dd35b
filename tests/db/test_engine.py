"""The engine's connections carry the keepalive and timeout parameters (a silently lost database
server becomes an error within seconds), on the pool's connections and on the plain psycopg ones."""

from __future__ import annotations

import psycopg

from pytrain.db.engine import CONNECT_ARGS, get_engine, libpq_url
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
