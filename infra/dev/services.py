"""Start, stop and inspect the local services custody's tests and a developer's flows use.

PostgreSQL: the machine's own server at 127.0.0.1:5432 when it answers, otherwise (or with
``--private-pg``) a private cluster made with the local ``initdb``. S3: a SeaweedFS ``weed mini``
on loopback with a versioned, lock-enabled bucket. Both are started with the same code the test
fixtures use (``tests/support``), and both keep their data between ``stop`` and ``start``.

State lives in ``$CUSTODY_DEV_SERVICES_DIR`` (default ``.custody/dev-services``): ports, process
ids and a generated development HMAC key (``dev.env``, mode 0600). ``env`` prints the variables
to use: ``eval "$(infra/dev/services env)"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.support is the one implementation of both services

import psycopg  # noqa: E402

from tests.support.postgres import DEFAULT_URL, _reachable, start_cluster, stop_cluster  # noqa: E402
from tests.support.seaweed import (  # noqa: E402
    ACCESS_KEY,
    SECRET_KEY,
    launch_seaweed,
    pick_base,
    stop_seaweed,
)

BUCKET = "custody-dev"
DATABASE = "custody_dev"


def state_dir() -> Path:
    """Where the services keep their data and the state file."""
    return Path(os.environ.get("CUSTODY_DEV_SERVICES_DIR", ROOT / ".custody" / "dev-services"))


def _load(where: Path) -> dict[str, Any]:
    path = where / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(where: Path, state: dict[str, Any]) -> None:
    (where / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A pid can be reused: it is ours only if it is still a weed under our state directory.
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"weed" in cmdline and str(state_dir()).encode() in cmdline
    return True


def start(private_pg: bool) -> int:
    """Start whatever is not running yet, then print the environment."""
    where = state_dir()
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o755)  # a private cluster runs as the postgres user when we are root
    state = _load(where)

    pg = state.get("pg", {})
    if pg.get("private") or private_pg or not _reachable(DEFAULT_URL):
        if not (pg.get("private") and _reachable(pg["url"])):
            print(
                "==> starting a private PostgreSQL cluster (initdb on first use)", file=sys.stderr
            )
            url = start_cluster(where / "pg", pg.get("port"))
            pg = {"private": True, "url": url, "port": urlparse(url).port}
    else:
        pg = {"private": False, "url": DEFAULT_URL}
    with psycopg.connect(pg["url"], autocommit=True) as conn:
        if (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            is None
        ):
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    state["pg"] = pg

    s3 = state.get("s3", {})
    if not _alive(s3.get("pid")):
        base = s3.get("base") or pick_base()
        print(f"==> starting SeaweedFS on 127.0.0.1:{base + 3}", file=sys.stderr)
        server = launch_seaweed(where / "s3", base)
        from custody.storage.s3 import ensure_bucket

        ensure_bucket(server.client(), BUCKET, object_lock=True)
        s3 = {"pid": server.process.pid, "base": base, "endpoint": server.endpoint_url}
    state["s3"] = s3
    _save(where, state)
    _ensure_key(where)
    print(_env(where, state))
    return 0


def _ensure_key(where: Path) -> Path:
    path = where / "dev.env"
    if not path.exists():
        key = secrets.token_urlsafe(48)
        path.write_text(f"CUSTODY_HMAC_KEYS={json.dumps({'dev': key})}\n")
        path.chmod(0o600)
    return path


def _env(where: Path, state: dict[str, Any]) -> str:
    pg_url, endpoint = state["pg"]["url"], state["s3"]["endpoint"]
    hmac = (where / "dev.env").read_text().strip().split("=", 1)[1]
    values = {
        "CUSTODY_TEST_PG_URL": pg_url,
        "CUSTODY_DATABASE_URL": pg_url.rsplit("/", 1)[0] + f"/{DATABASE}",
        "CUSTODY_OBJECT_STORE_URL": f"s3://{BUCKET}/dev",
        "CUSTODY_S3_ENDPOINT_URL": endpoint,
        "CUSTODY_S3_REGION": "us-east-1",
        "CUSTODY_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "CUSTODY_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "CUSTODY_HMAC_KEYS": hmac,
    }
    return "\n".join(f"export {k}='{v}'" for k, v in values.items())


def status() -> int:
    """Print what runs; exit 1 unless both services answer."""
    where = state_dir()
    state = _load(where)
    pg, s3 = state.get("pg", {}), state.get("s3", {})
    pg_up = "url" in pg and _reachable(pg["url"])
    s3_up = _alive(s3.get("pid"))
    kind = "private cluster" if pg.get("private") else "machine's server"
    print(f"postgresql  {'up' if pg_up else 'down'}  {pg.get('url', '-')} ({kind})")
    where_s3 = f"{s3.get('endpoint', '-')} pid {s3.get('pid', '-')}"
    print(f"seaweedfs   {'up' if s3_up else 'down'}  {where_s3}")
    return 0 if pg_up and s3_up else 1


def stop() -> int:
    """Stop what this script started (never the machine's own PostgreSQL); data are kept."""
    where = state_dir()
    state = _load(where)
    s3 = state.get("s3", {})
    if _alive(s3.get("pid")):
        stop_seaweed(int(s3["pid"]), int(s3["base"]))
        print("==> SeaweedFS stopped", file=sys.stderr)
    if state.get("pg", {}).get("private") and (where / "pg" / "data").exists():
        stop_cluster(where / "pg")
        print("==> private PostgreSQL stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: start | stop | status | env."""
    parser = argparse.ArgumentParser(prog="infra/dev/services", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start PostgreSQL and SeaweedFS; print the env")
    begin.add_argument(
        "--private-pg", action="store_true", help="a private cluster even if 5432 answers"
    )
    commands.add_parser("stop", help="stop what `start` started (data are kept)")
    commands.add_parser("status", help="what runs; exit 1 unless both answer")
    commands.add_parser("env", help="print the variables to export (after `start`)")
    args = parser.parse_args(argv)
    if args.command == "start":
        return start(args.private_pg)
    if args.command == "stop":
        return stop()
    if args.command == "status":
        return status()
    state = _load(state_dir())
    if "pg" not in state or "s3" not in state:
        print("nothing started yet: run infra/dev/services start", file=sys.stderr)
        return 1
    print(_env(state_dir(), state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
