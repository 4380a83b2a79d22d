"""PostgreSQL client programs (psql, pg_dump) and connection parameters for them.

Credentials go to client programs through the libpq environment, never on a command line where
``ps`` would show them; SQL goes through stdin for the same reason (key bounds can be PHI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from custody.errors import CustodyError

# URL query parameters that libpq also reads from the environment.
_QUERY_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


class ClientToolError(CustodyError):
    """A PostgreSQL client program is missing or failed (its error output is in the message).

    ``transient`` is set when the program lost its connection, so that a retry may help.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        """Keep whether a retry may help next to the message."""
        super().__init__(message)
        self.transient = transient


def libpq_dsn(url: URL) -> str:
    """A libpq connection string from a SQLAlchemy URL, for direct psycopg connections."""
    parts = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        # Text crosses between databases as bytes: always UTF-8, whatever each server holds.
        "client_encoding": "UTF8",
        **{k: v for k, v in url.query.items() if isinstance(v, str)},
    }
    return psycopg.conninfo.make_conninfo(
        "", **{k: str(v) for k, v in parts.items() if v is not None}
    )


def libpq_env(url: URL) -> dict[str, str]:
    """This process's environment without PG* variables, plus the URL's as PG* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    values = {
        "PGHOST": url.host,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,
        "PGDATABASE": url.database,
        "PGCLIENTENCODING": "UTF8",  # psql and pg_dump speak UTF-8, like every connection
        **{_QUERY_ENV[k]: v for k, v in url.query.items() if k in _QUERY_ENV},
    }
    env.update({k: str(v) for k, v in values.items() if v})
    return env


def client_tool(name: str) -> str:
    """Path of a PostgreSQL client program, or an error saying what to install."""
    found = shutil.which(name)
    if found is None:
        raise ClientToolError(
            f"{name} is needed for PostgreSQL to PostgreSQL work; install the PostgreSQL client "
            "(Debian: apt-get install postgresql-client)"
        )
    return found


def has_client_tool(name: str) -> bool:
    """Whether ``name`` is on PATH (the fast paths use it; slower in-process paths do not)."""
    return shutil.which(name) is not None


_LOST_CONNECTION = (
    "server closed the connection",
    "connection to server",
    "terminating connection",
)


@contextlib.contextmanager
def psql_copy_out(url: URL, script: str, *, block_size: int = 1 << 20) -> Iterator[Iterator[bytes]]:
    """Run ``script`` (ending in a COPY ... TO STDOUT) in psql and stream its output in blocks.

    psql moves the rows in C, so the data never passes through a per-row Python loop; the caller
    gets about ``block_size`` bytes at a time.

    Raises:
        ClientToolError: psql failed (``transient`` when it lost its connection).
    """
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, SQL on stdin
        [client_tool("psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=libpq_env(url),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(script.encode())
    proc.stdin.close()
    stdout = proc.stdout

    def blocks() -> Iterator[bytes]:
        while block := stdout.read(block_size):
            yield block

    try:
        yield blocks()
        stdout.read()  # drain what the caller left, so psql can exit
    except BaseException:
        proc.kill()
        raise
    finally:
        stderr = proc.stderr.read().decode(errors="replace")
        code = proc.wait()
        stdout.close()
        proc.stderr.close()
    if code != 0:
        raise ClientToolError(
            f"psql failed (exit {code}): {stderr.strip()[-2000:]}",
            transient=any(s in stderr for s in _LOST_CONNECTION),
        )


def rechunk(
    blocks: Iterable[bytes | bytearray | memoryview], size: int = 1 << 20
) -> Iterator[bytes]:
    """COPY data in pieces of about ``size`` bytes (libpq hands it over one row at a time)."""
    pending: list[bytes | bytearray | memoryview] = []
    filled = 0
    for block in blocks:
        pending.append(block)
        filled += len(block)
        if filled >= size:
            yield b"".join(pending)
            pending, filled = [], 0
    if pending:
        yield b"".join(pending)


def snapshot_copy_out(
    conn: psycopg.Connection[Any],
    url: URL,
    copy_out: sql.Composed,
    settings: Sequence[str],
    *,
    block_size: int = 1 << 20,
) -> contextlib.AbstractContextManager[Iterable[bytes | bytearray | memoryview]]:
    """``copy_out``'s data in ``conn``'s transaction snapshot, moved by psql when it is on PATH.

    A psql process joins the snapshot (``SET TRANSACTION SNAPSHOT``), applies ``settings``
    (plain ``SET`` statements) and moves the rows in C: about twice the rows per second of
    reading them through libpq here. Without psql, ``conn`` reads them itself.
    """
    if not has_client_tool("psql"):
        return conn.cursor().copy(copy_out)
    snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert snapshot is not None
    script = ";\n".join([
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot[0])).as_string(conn),
        *settings,
        copy_out.as_string(conn),
        "COMMIT;\n",
    ])  # fmt: skip
    return psql_copy_out(url, script, block_size=block_size)
