"""The ``custody`` command: store migrations, audit checks, archive retention, the demo."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from custody.errors import CustodyError

if TYPE_CHECKING:
    from sqlalchemy import Engine


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except CustodyError as exc:
        print(f"custody: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="custody", description="Audited healthcare data pipelines on Prefect."
    )
    commands = parser.add_subparsers(title="commands")

    db = commands.add_parser("db", help="custody's own store").add_subparsers(title="db commands")
    upgrade = db.add_parser("upgrade", help="create or migrate the store (CUSTODY_DATABASE_URL)")
    upgrade.set_defaults(handler=_db_upgrade)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        title="audit commands"
    )
    verify = audit.add_parser("verify", help="walk the chain; exit 1 naming the first bad event")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(handler=_audit_verify)
    parts = audit.add_parser("partitions", help="create monthly audit_log partitions ahead")
    parts.add_argument(
        "--from",
        dest="start",
        type=_month,
        default=None,
        help="first month, YYYY-MM (default: this month)",
    )
    parts.add_argument("--months", type=int, default=3, help="how many months (default 3)")
    parts.set_defaults(handler=_audit_partitions)

    archive = commands.add_parser("archive", help="archived objects").add_subparsers(
        title="archive commands"
    )
    retention = archive.add_parser(
        "retention", help="list archives locked for less time than required; exit 1 if any"
    )
    retention.add_argument("--database", required=True, help="connection name of the source")
    retention.add_argument(
        "--keep-days", type=int, default=2190, help="required retention (default: 6 years)"
    )
    retention.add_argument("--store", default=None, help="object store URL (default: settings)")
    retention.set_defaults(handler=_archive_retention)

    demo = commands.add_parser("demo", help="run everything end to end on embedded defaults")
    demo.add_argument(
        "--work-dir",
        type=Path,
        default=Path("custody-demo"),
        help="where the demo keeps its databases, objects and key",
    )
    demo.add_argument("--patients", type=int, default=300)
    demo.add_argument("--access-events", type=int, default=5_000)
    demo.set_defaults(handler=_demo)
    return parser


def _month(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM, got {text!r}") from None


def _store() -> Engine:
    from custody.db import get_engine
    from custody.settings import get_settings

    return get_engine(get_settings().store_url())


def _db_upgrade(_args: argparse.Namespace) -> int:
    from custody.store import upgrade

    engine = _store()
    upgrade(engine)
    print(f"custody store is up to date ({engine.dialect.name})")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from custody.audit import Keyring, verify_chain
    from custody.settings import get_settings

    active, keys = get_settings().require_hmac_keys()
    started = time.monotonic()
    result = verify_chain(_store(), Keyring(active, keys))
    if args.json:
        print(json.dumps({**result.__dict__, "seconds": round(time.monotonic() - started, 3)}))
    else:
        print(result.describe())
    return 0 if result.ok else 1


def _audit_partitions(args: argparse.Namespace) -> int:
    from custody.audit.partitions import ensure_partitions

    start = args.start or dt.datetime.now(dt.UTC).date().replace(day=1)
    created = ensure_partitions(_store(), start, args.months)
    print(f"{created} partition(s) created from {start:%Y-%m} for {args.months} month(s)")
    return 0


def _archive_retention(args: argparse.Namespace) -> int:
    import psycopg

    from custody.archive.retention import check_retention
    from custody.db import get_engine
    from custody.pgclient import libpq_dsn
    from custody.settings import get_settings
    from custody.storage import open_store

    url = get_engine(get_settings().connection_url(args.database)).url
    with psycopg.connect(libpq_dsn(url)) as conn:
        checked, short = check_retention(conn, open_store(args.store), args.keep_days)
    for s in short:
        until = s.retain_until.isoformat() if s.retain_until else "-"
        print(f"{s.archive_id}  {s.object_key}  {s.problem}: locked until {until}, "
              f"required until {s.required_until.isoformat()}")  # fmt: skip
    print(f"{checked} archive(s) checked, {len(short)} short of {args.keep_days} days")
    return 1 if short else 0


def _demo(args: argparse.Namespace) -> int:
    from custody.demo_setup import prepare_demo_environment
    from custody.quiet_prefect import apply_prefect_defaults

    apply_prefect_defaults()
    where = prepare_demo_environment(args.work_dir)
    started = time.monotonic()
    print(f"==> custody demo in {where['work_dir']}")
    print("==> [1/4] preparing custody's store (SQLite)")
    _db_upgrade(args)
    print("==> [2/4] starting Prefect and running the demo flow (progress below)")
    # The composition root: the CLI is the one place in the library that reaches the flows.
    from flows.demo import DemoParams, custody_demo

    summary = custody_demo(DemoParams(patients=args.patients, access_events=args.access_events))
    print("==> [3/4] verifying the audit chain independently of the flow")
    verified = _audit_verify(argparse.Namespace(json=False))
    print("==> [4/4] done in", f"{time.monotonic() - started:.0f} s")
    copy = summary["copy"]
    print(
        f"""
  synthetic patients        {summary["patients"]}
  lab results copied        {copy.get("rows") if isinstance(copy, dict) else copy}
  copy status               {copy.get("status") if isinstance(copy, dict) else "see Prefect"}
  audit chain               {"intact" if verified == 0 else "BROKEN"}, \
{summary["audit_chain"]["events_checked"]} events
  store (audit_log, ledger) {where["store"]}
  source / target           {where["source"]}
                            {where["target"]}
  object store              {where["objects"]}
  artifacts                 run `prefect server start`, open http://127.0.0.1:4200/artifacts
"""
    )
    ok = verified == 0 and isinstance(copy, dict) and copy.get("failed") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
