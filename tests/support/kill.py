"""Killing a flow process mid-run and reading what the ledger and audit trail say afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from custody.store.tables import audit_log, job_chunks

ROOT = Path(__file__).resolve().parents[2]


def flow_command(module: str, flow: str, params_class: str, params: dict[str, Any]) -> list[str]:
    """A python command that runs one flow with JSON parameters and prints RESULT <json>."""
    code = (
        f"import json, sys; from {module} import {params_class}, {flow}; "
        f"r = {flow}({params_class}(**json.loads(sys.argv[1]))); "
        "print('RESULT', r.model_dump_json())"
    )
    return [sys.executable, "-c", code, json.dumps(params)]


def verified_chunks(store: Engine) -> int:
    with store.connect() as c:
        return int(
            c.execute(select(func.count()).where(job_chunks.c.status == "verified")).scalar_one()
        )


def kill_after_verified(args: list[str], env: dict[str, str], store: Engine, chunks: int) -> None:
    """Start the flow and SIGKILL it as soon as the ledger shows ``chunks`` verified chunks."""
    kill_when(args, env, lambda: verified_chunks(store) >= chunks)


def kill_when(args: list[str], env: dict[str, str], condition: Callable[[], bool]) -> None:
    """Start the flow and SIGKILL it as soon as ``condition()`` holds (polled every 20 ms)."""
    victim = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not condition():
        assert victim.poll() is None, "the flow finished before it could be killed"
        assert time.monotonic() < deadline, "the flow made no progress"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def run_to_end(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run the flow to completion and return its printed result."""
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.split("RESULT", 1)[1])
    return result


def ledger(store: Engine) -> dict[int, tuple[str, int, object]]:
    """Chunk number -> (status, attempts, finished_at)."""
    with store.connect() as c:
        return {
            r.chunk_no: (r.status, r.attempts, r.finished_at) for r in c.execute(select(job_chunks))
        }


def processed_per_chunk(store: Engine, action: str) -> dict[int, int]:
    """How many ``action`` audit events each chunk number has."""
    chunk_no = audit_log.c.details["chunk_no"].as_integer()
    with store.connect() as c:
        rows = c.execute(
            select(chunk_no, func.count()).where(audit_log.c.action == action).group_by(chunk_no)
        )
        return {int(n): int(count) for n, count in rows}
