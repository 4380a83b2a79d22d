"""psql as a COPY source: streamed in blocks, failures named, credentials kept off argv."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from custody.pgclient import ClientToolError, libpq_env, psql_copy_out


def test_copy_out_streams_every_row_in_large_blocks(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT g AS id, repeat('é', 50) AS s "
            "FROM generate_series(1, 20000) g"
        )
    script = "COPY (SELECT id, s FROM t ORDER BY id) TO STDOUT;\n"
    with psql_copy_out(make_url(pg_url), script, block_size=64 * 1024) as blocks:
        received = list(blocks)
    data = b"".join(received)
    lines = data.decode().splitlines()
    assert len(lines) == 20000 and lines[0] == "1\t" + "é" * 50 and lines[-1].startswith("20000\t")
    assert len(received) < 40 and max(len(b) for b in received) == 64 * 1024


def test_a_failing_script_raises_and_says_why(pg_url: str) -> None:
    script = "COPY no_such_table TO STDOUT;\n"
    with (
        pytest.raises(ClientToolError, match="no_such_table") as failure,
        psql_copy_out(make_url(pg_url), script) as blocks,
    ):
        list(blocks)
    assert not failure.value.transient  # a missing table does not heal by retrying


def test_a_lost_server_is_transient(pg_url: str) -> None:
    unreachable = make_url(pg_url).set(host="127.0.0.1", port=1)
    with (
        pytest.raises(ClientToolError) as failure,
        psql_copy_out(unreachable, "COPY (SELECT 1) TO STDOUT;\n") as blocks,
    ):
        list(blocks)
    assert failure.value.transient


def test_credentials_and_ssl_settings_travel_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-the-caller")  # must not leak into the child
    url = make_url("postgresql://etl:s3cret@db.example:6543/clinical?sslmode=verify-full&x=1")
    env = libpq_env(url)
    assert env["PGPASSWORD"] == "s3cret" and env["PGSSLMODE"] == "verify-full"
    assert (env["PGHOST"], env["PGPORT"], env["PGDATABASE"]) == ("db.example", "6543", "clinical")
    assert not any(v == "1" and k.startswith("PG") for k, v in env.items())
