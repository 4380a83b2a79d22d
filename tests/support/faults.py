"""Fault injection against real services: dropped database connections, a full disk.

Every fault here is made deterministic by holding a lock the flow must wait for, so a test
knows *where* the flow is when the fault strikes instead of hoping a poll lands in time:

* ``hold_lock`` takes a table lock (or a row lock) in a transaction of its own and keeps it
  until released. The flow's statement then waits, visibly, in ``pg_stat_activity``.
* ``wait_for_backends`` finds those waiting backends; ``terminate`` drops them with
  ``pg_terminate_backend``, which is what a failover, a restart or an idle-session killer does
  to a client.
* ``pause_chunk`` row-locks one chunk's ledger row, so the chunk cannot even start until the
  test has set up the next fault.
* ``Tmpfs`` mounts a small tmpfs for a ``file://`` object store: a real ENOSPC, not a mock.
* ``FaultThread`` runs a fault script next to an in-process flow and re-raises its error in
  the test, so a script that could not do its job fails the test instead of passing silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

DEADLINE_S = 60.0


def dbname(url: str) -> str:
    """The database name of a PostgreSQL URL."""
    name = make_url(url).database
    assert name, f"no database in {url!r}"
    return name


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def backends(
    url: str, query_like: str, *, waiting: bool = True, state: str | None = None
) -> list[int]:
    """Pids of the backends of ``url``'s database whose current query matches ``query_like``.

    Args:
        url: any URL of the database (the lookup itself runs there).
        query_like: an ``ILIKE`` pattern for ``pg_stat_activity.query``.
        waiting: only backends waiting for a lock.
        state: only backends in this state (e.g. ``idle in transaction``).
    """
    sql = (
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
        "AND query ILIKE %s"
    )
    args: list[Any] = [dbname(url), query_like]
    if waiting:
        sql += " AND wait_event_type = 'Lock'"
    if state is not None:
        sql += " AND state = %s"
        args.append(state)
    with psycopg.connect(url, autocommit=True) as conn:
        return [int(r[0]) for r in conn.execute(sql, args).fetchall()]


def wait_for_backends(
    url: str, query_like: str, count: int = 1, *, waiting: bool = True, state: str | None = None
) -> list[int]:
    """Wait until at least ``count`` backends match (see ``backends``); return their pids."""
    found: list[int] = []

    def enough() -> bool:
        found[:] = backends(url, query_like, waiting=waiting, state=state)
        return len(found) >= count

    wait_until(enough, f"{count} backend(s) of {dbname(url)} running {query_like!r}")
    return found


def terminate(url: str, pids: list[int]) -> int:
    """``pg_terminate_backend`` each pid; returns how many were terminated."""
    with psycopg.connect(url, autocommit=True) as conn:
        done = [conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() for pid in pids]
    return sum(1 for row in done if row and row[0])


class HeldLock:
    """A lock held by a transaction of the test's own until ``release()``."""

    def __init__(self, url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
        """Open a connection, begin, run ``statement`` (``LOCK TABLE``, ``... FOR UPDATE``)."""
        self.conn = psycopg.connect(url)
        self.conn.execute(statement, params)
        self.released = False

    def release(self) -> None:
        """Roll back (releasing the lock) and close; safe to call twice."""
        if not self.released:
            self.released = True
            self.conn.rollback()
            self.conn.close()


@contextlib.contextmanager
def hold_lock(url: str, statement: str, params: tuple[Any, ...] = ()) -> Iterator[HeldLock]:
    """``HeldLock`` as a context manager: released at the end whatever happens."""
    lock = HeldLock(url, statement, params)
    try:
        yield lock
    finally:
        lock.release()


def job_planned(store_url: str, job_id: str) -> bool:
    """The ledger has the job's chunk rows."""
    with psycopg.connect(store_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM job_chunks WHERE job_id = %s", (job_id,))
        found = row.fetchone()
    return bool(found and found[0])


def pause_chunk(store_url: str, job_id: str, chunk_no: int) -> HeldLock:
    """Row-lock a chunk's ledger row: the chunk waits in ``Ledger.start`` until released.

    Waits for the job to be planned first (the row must exist to be locked).
    """
    wait_until(lambda: job_planned(store_url, job_id), f"job {job_id} to be planned")
    return HeldLock(
        store_url,
        "SELECT 1 FROM job_chunks WHERE job_id = %s AND chunk_no = %s FOR UPDATE",
        (job_id, chunk_no),
    )


def chunk_waiting(store_url: str) -> list[int]:
    """Backends of the store waiting to update a ledger row (a chunk held by ``pause_chunk``)."""
    return wait_for_backends(store_url, "UPDATE job_chunks%")


class FaultThread:
    """Run a fault script beside an in-process flow; ``join()`` re-raises what it raised."""

    def __init__(self, script: Callable[[], None]) -> None:
        """Start ``script`` in a daemon thread at once."""
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                script()
            except BaseException as exc:  # surfaced by join()
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True, name="fault-script")
        self.thread.start()

    def join(self, timeout: float = DEADLINE_S) -> None:
        """Wait for the script; fail the test if it raised or never finished."""
        self.thread.join(timeout)
        if self.error is not None:
            raise AssertionError(f"the fault script failed: {self.error!r}") from self.error
        assert self.done.is_set(), "the fault script did not finish"


ROOT_NEEDED = (
    "the disk-full tests mount a small tmpfs and need root (or CAP_SYS_ADMIN): run them as "
    "root, e.g. in the CI container, where `mount -t tmpfs` works"
)


class Tmpfs:
    """A tmpfs of a given size at ``path``: a disk that really fills up (ENOSPC)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        """Mount it (fails with what is needed when this process may not mount)."""
        if os.geteuid() != 0 or shutil.which("mount") is None:
            raise RuntimeError(ROOT_NEEDED)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._mount("-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path))

    @staticmethod
    def _mount(*args: str) -> None:
        done = subprocess.run(["mount", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{ROOT_NEEDED} (mount said: {done.stderr.strip()})")

    def free_bytes(self) -> int:
        """Bytes still free for an ordinary file."""
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave_bytes: int) -> Path:
        """Write a filler file leaving about ``leave_bytes`` free (page granularity)."""
        filler = self.path / ".filler"
        size = self.free_bytes() - leave_bytes
        assert size > 0, f"tmpfs too small to leave {leave_bytes} bytes free"
        filler.write_bytes(b"\0" * size)
        return filler

    def grow(self, size_bytes: int) -> None:
        """Remount bigger, keeping the files (the operator's fix for a full disk)."""
        self._mount("-o", f"remount,size={size_bytes}", str(self.path))

    def unmount(self) -> None:
        """Unmount (lazily, so a straggling open file cannot keep it mounted)."""
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Tmpfs]:
    """Mount a tmpfs for the block and unmount it after, whatever happens."""
    disk = Tmpfs(path, size_bytes)
    try:
        yield disk
    finally:
        disk.unmount()


def stray_files(root: Path) -> list[str]:
    """Files under ``root`` that are not a finished object or its checksum sidecar."""
    out = []
    for path in root.rglob("*"):
        if path.is_file() and path.name != ".filler":
            if path.name.endswith(".tmp"):
                out.append(str(path.relative_to(root)))
            elif (
                not path.name.endswith(".meta.json") and not Path(str(path) + ".meta.json").exists()
            ):
                out.append(str(path.relative_to(root)))  # bytes without their checksum
            elif (
                path.name.endswith(".meta.json")
                and not Path(str(path)[: -len(".meta.json")]).exists()
            ):
                out.append(str(path.relative_to(root)))  # a checksum without its bytes
    return sorted(out)
