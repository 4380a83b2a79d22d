"""The ``custody`` command: store migrations, audit checks, archive retention, the demo."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from custody.errors import CustodyError

if TYPE_CHECKING:
    from sqlalchemy import Engine


#: The checkout's critical-result automation (custody is installed from the checkout).
CRITICAL_AUTOMATION = (
    Path(__file__).resolve().parents[2] / "infra/automations/critical-lab-result.yaml"
)


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
    roles = db.add_parser(
        "roles", help="grant the ingest and reporting roles their privileges (run as the owner)"
    )
    roles.add_argument("--ingest-role", default="custody_ingest", help="pipelines' login role")
    roles.add_argument("--reporting-role", default="custody_reporting", help="read-only role")
    roles.add_argument("--sql", action="store_true", help="print the grants as SQL; no database")
    roles.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 naming every difference"
    )
    roles.set_defaults(handler=_db_roles)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        title="audit commands"
    )
    verify = audit.add_parser("verify", help="walk the chain; exit 1 naming the first bad event")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.add_argument(
        "--anchors",
        action="store_true",
        help="also compare the chain with every anchor in the object store; fail if none",
    )
    verify.add_argument("--store", default=None, help="anchors' object store (default: settings)")
    verify.add_argument("--prefix", default="audit-anchors", help="anchors' key prefix")
    verify.set_defaults(handler=_audit_verify)
    anchor = audit.add_parser(
        "anchor", help="sign the chain head into the object store under Object Lock"
    )
    anchor.add_argument("--store", default=None, help="object store URL (default: settings)")
    anchor.add_argument("--prefix", default="audit-anchors", help="key prefix")
    anchor.add_argument(
        "--lock", default="compliance", choices=["none", "governance", "compliance"]
    )
    anchor.add_argument("--keep-days", type=int, default=2190, help="retention (default 6 years)")
    anchor.set_defaults(handler=_audit_anchor)
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

    store = commands.add_parser("store", help="the object store").add_subparsers(
        title="store commands"
    )
    get = store.add_parser(
        "get", help="copy one object out by the location an artifact names, checksum checked"
    )
    get.add_argument("location", help="file:///path or s3://bucket/key, as the artifact says")
    get.add_argument("-o", "--output", type=Path, default=None, help="default: the object's name")
    get.set_defaults(handler=_store_get)

    labs = commands.add_parser("labs", help="lab results").add_subparsers(title="labs commands")
    stage = labs.add_parser(
        "stage", help="put lab files in the object store's inbox; print each run's source"
    )
    stage.add_argument("files", nargs="*", type=Path, help="HL7 v2, FHIR JSON/NDJSON or CSV")
    stage.add_argument("--prefix", default="inbox", help="key prefix (default: inbox)")
    stage.add_argument(
        "--example",
        choices=["critical"],
        help="stage a synthetic HL7 result instead: 'critical' is a potassium of 6.8 mmol/L "
        "(a new message each time, so a run ingests it and raises a critical-result event)",
    )

    automations = commands.add_parser("automations", help="Prefect automations").add_subparsers(
        title="automations commands"
    )
    install = automations.add_parser(
        "install",
        help="create the notification block (optional) and the critical-result automation on "
        "the server PREFECT_API_URL names",
    )
    install.add_argument("--block", required=True, help="notification block name to notify")
    install.add_argument(
        "--webhook-url", default=None, help="save a Custom Webhook block posting here as --block"
    )
    install.add_argument(
        "--file", type=Path, default=None,
        help="automation YAML (default: infra/automations/critical-lab-result.yaml)",
    )  # fmt: skip
    install.set_defaults(handler=_automations_install)
    stage.set_defaults(handler=_labs_stage)

    serve = commands.add_parser(
        "serve", help="run prefect.yaml's deployments in this process (local use, no work pool)"
    )
    serve.add_argument("names", nargs="*", help="deployment names (default: all of them)")
    serve.add_argument(
        "--no-schedules", action="store_true", help="schedules off: on-demand runs only"
    )
    serve.add_argument("--limit", type=int, default=None, help="flow runs at once (default: any)")
    serve.add_argument(
        "--prefect-file", type=Path, default=None, help="default: the checkout's prefect.yaml"
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser(
        "worker",
        help="hardened worker: run only the installed flows, as the shipped prefect.yaml says",
    )
    worker.add_argument("--pool", default="custody", help="work pool (default: custody)")
    worker.add_argument("--name", default=None, help="worker name (default: generated)")
    worker.add_argument("--limit", type=int, default=None, help="flow runs at once")
    worker.add_argument(
        "--work-queue", action="append", default=None, help="poll only this queue (repeatable)"
    )
    worker.add_argument(
        "--run-once", action="store_true", help="take the runs scheduled now, finish, exit"
    )
    worker.add_argument(
        "--with-healthcheck", action="store_true", help="serve /health (PREFECT_WORKER_WEBSERVER_*)"
    )
    worker.set_defaults(handler=_worker)

    demo = commands.add_parser("demo", help="run everything end to end on embedded defaults")
    demo.add_argument(
        "--work-dir",
        type=Path,
        default=Path("custody-demo"),
        help="where the demo keeps its databases, objects and key",
    )
    demo.add_argument("--patients", type=int, default=300, help="synthetic patients (300)")
    demo.add_argument(
        "--access-events", type=int, default=5_000, help="PHI access events per run (5000)"
    )
    demo.add_argument("--verbose", action="store_true", help="also show Prefect's own log lines")
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


def _db_roles(args: argparse.Namespace) -> int:
    from custody.store.roles import RoleNames, apply_grants, check_grants, grant_sql

    try:
        names = RoleNames(ingest=args.ingest_role, reporting=args.reporting_role)
    except ValueError as exc:
        raise CustodyError(str(exc)) from None
    if args.sql:
        print(grant_sql(names), end="")
        return 0
    engine = _store()
    if not args.check:
        done = apply_grants(engine, names)
        print(f"granted {names.ingest} and {names.reporting} on {len(done.tables)} tables "
              f"in schema {done.schema}")  # fmt: skip
        for table in done.unknown:
            print(f"  {table}: not in custody's role policy, no access for either role")
    problems = check_grants(engine, names)
    for problem in problems:
        print(f"  {problem}")
    print("roles match the policy" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


def _audit_verify(args: argparse.Namespace) -> int:
    from custody.audit import Keyring, verify_chain
    from custody.settings import get_settings

    active, keys = get_settings().require_hmac_keys()
    keyring = Keyring(active, keys)
    started = time.monotonic()
    result = verify_chain(_store(), keyring)
    output: dict[str, object] = {**result.__dict__}
    lines = [result.describe()]
    ok = result.ok
    from custody.audit.anchors import witness
    from custody.storage import open_store

    objects = open_store(args.store)
    if result.ok:
        # Always: only a copy outside the database tells an earlier head put back (issue 15.3).
        seen = witness(result, keyring, objects, args.prefix)
        output["witness"] = seen.__dict__
        lines.append(seen.describe())
        ok = ok and seen.ok
    if getattr(args, "anchors", False):
        from custody.audit.anchors import check_anchors

        anchors = check_anchors(_store(), keyring, objects, args.prefix)
        output["anchors"] = anchors.__dict__
        lines.append(anchors.describe())
        # Asked to check anchors and found none: that must not read as a pass.
        ok = ok and anchors.ok and anchors.anchors_checked > 0
    if args.json:
        print(json.dumps({**output, "seconds": round(time.monotonic() - started, 3)}, default=str))
    else:
        print("\n".join(lines))
    return 0 if ok else 1


def _audit_anchor(args: argparse.Namespace) -> int:
    from custody.audit import Keyring, verify_chain
    from custody.audit.anchors import check_anchors, write_anchor
    from custody.settings import get_settings
    from custody.storage import LockMode, open_store

    active, keys = get_settings().require_hmac_keys()
    keyring = Keyring(active, keys)
    store = open_store(args.store)
    chain = verify_chain(_store(), keyring)
    earlier = check_anchors(_store(), keyring, store, args.prefix)
    if not (chain.ok and earlier.ok):
        print(f"not anchored: {chain.describe()}; {earlier.describe()}", file=sys.stderr)
        return 1
    anchor, key = write_anchor(
        _store(), keyring, store, args.prefix, LockMode(args.lock), args.keep_days
    )
    print(f"anchored seq {anchor.seq} at {store.location(key)}")
    return 0


def _audit_partitions(args: argparse.Namespace) -> int:
    from custody.audit.partitions import ensure_partitions

    start = args.start or dt.datetime.now(dt.UTC).date().replace(day=1)
    created = ensure_partitions(_store(), start, args.months)
    print(f"{created} partition(s) created from {start:%Y-%m} for {args.months} month(s)")
    return 0


def _store_get(args: argparse.Namespace) -> int:
    from custody.storage.fetch import fetch_verified

    data = fetch_verified(args.location)
    output = args.output or Path(args.location.rstrip("/").rsplit("/", 1)[-1])
    output.write_bytes(data)
    print(f"{output}: {len(data)} bytes, SHA-256 matches the store's record")
    return 0


def _labs_stage(args: argparse.Namespace) -> int:
    from custody.labs.inbox import stage_payload
    from custody.storage import open_store

    if bool(args.files) == bool(args.example):
        raise CustodyError("give lab files to stage, or --example critical (not both)")
    store = open_store()
    if args.example:
        from custody.labs.examples import critical_potassium

        print(stage_payload(store, critical_potassium(), args.prefix))
        print("staged a synthetic critical potassium (no real patient); the next "
              "ingest-lab-results run with source store:inbox (its default) raises "
              "custody.lab.critical_result.detected", file=sys.stderr)  # fmt: skip
        return 0
    for path in args.files:
        print(stage_payload(store, path.read_bytes(), args.prefix))
    return 0


def _automations_install(args: argparse.Namespace) -> int:
    import yaml  # type: ignore[import-untyped]

    from custody.prefect_glue import configured_api_url, install_automation
    from custody.quiet_prefect import apply_prefect_defaults

    apply_prefect_defaults()
    api = configured_api_url()
    if not api:
        raise CustodyError(
            "PREFECT_API_URL is not set: set it to your server's API (e.g. "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api); without it Prefect would start a "
            "temporary server and the automation would vanish with it"
        )
    path = args.file or CRITICAL_AUTOMATION
    specs = (yaml.safe_load(path.read_text()) or {}).get("automations") or []
    if not specs:
        raise CustodyError(f"{path} has no automations")
    for spec in specs:
        block_id, automation_id = install_automation(spec, args.block, args.webhook_url)
        print(f"automation {spec['name']!r} ({automation_id}) notifies block {args.block!r} "
              f"({block_id}) on {api}")  # fmt: skip
    print("test it: custody labs stage --example critical, then run ingest-lab-results")
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


def _serve(args: argparse.Namespace) -> int:
    from custody.quiet_prefect import apply_prefect_defaults

    apply_prefect_defaults()
    # The composition root reaches the flows: the deployments are built from prefect.yaml.
    from flows.deployments import PROJECT_FILE, serve_all

    try:
        serve_all(
            args.prefect_file or PROJECT_FILE,
            only=args.names or None,
            schedules_active=False if args.no_schedules else None,
            limit=args.limit,
        )
    except ValueError as exc:
        raise CustodyError(str(exc)) from None
    return 0


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from custody.quiet_prefect import apply_prefect_defaults

    apply_prefect_defaults()
    # The composition root reaches the flows: the worker checks deployments against prefect.yaml.
    from flows.hardened import HardenedWorker

    worker = HardenedWorker(
        work_pool_name=args.pool, work_queues=args.work_queue, name=args.name, limit=args.limit
    )
    asyncio.run(worker.start(run_once=args.run_once, with_healthcheck=args.with_healthcheck))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import os

    from custody.demo_setup import prepare_demo_environment, render_summary, say
    from custody.quiet_prefect import apply_prefect_defaults

    apply_prefect_defaults()
    if not args.verbose:  # progress lines instead; the Prefect server still gets every log
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    where = prepare_demo_environment(args.work_dir)
    print(f"custody demo in {where['work_dir']} (synthetic data only)", flush=True)
    say("loading Prefect")
    server = _start_local_prefect()
    from custody.store import upgrade

    upgrade(_store())
    say("custody's store is ready (SQLite)")
    # The composition root: the CLI is the one place in the library that reaches the flows.
    from custody.quality import preload
    from flows.demo import DemoParams, custody_demo

    preload()  # Great Expectations imports (seconds of CPU) while the first steps wait on I/O
    if server is not None:
        server.join()
    say(f"Prefect server ready at {_prefect_api()}")
    summary = custody_demo(DemoParams(patients=args.patients, access_events=args.access_events))
    from custody.audit import Keyring, verify_chain
    from custody.settings import get_settings

    active, keys = get_settings().require_hmac_keys()
    chain = verify_chain(_store(), Keyring(active, keys))  # again, outside Prefect altogether
    say(f"custody audit verify: {chain.describe()}")
    print(render_summary(summary, where, _prefect_ui(summary.flow_run_id)))
    failed = summary.failed_steps + ([] if chain.ok else ["audit verify"])
    from custody.db import dispose_engines

    dispose_engines()  # the last connection out folds SQLite's WAL back into each file
    say(f"done: {'all steps succeeded' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 0 if not failed else 1


def _start_local_prefect() -> threading.Thread | None:
    """Start Prefect's local server in the background while the demo gets ready.

    It takes 10-20 s to come up on two cores; the flow's client finds it already running (the
    same one it would have started). None when PREFECT_API_URL names a server.
    """
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    from prefect.server.api.server import SubprocessASGIServer

    from custody.demo_setup import say

    say("starting Prefect's local server in the background (10-20 s on two cores)")
    thread = threading.Thread(target=SubprocessASGIServer().start, name="prefect-server")
    thread.start()
    return thread


def _prefect_api() -> str:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or SubprocessASGIServer().api_url


def _prefect_ui(flow_run_id: str | None) -> str:
    """Where to see the run: the configured server's UI, or how to open the local one."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    path = f"/runs/flow-run/{flow_run_id}" if flow_run_id else "/runs"
    if settings.api.url:
        ui = settings.ui_url or settings.api.url.removesuffix("/api")
        return f"{ui}{path}"
    prefect = Path(sys.prefix) / "bin" / "prefect"
    return (
        f"the runs are kept in {settings.home}; start the UI with `{prefect} server start`,\n"
        f"  then open http://127.0.0.1:4200{path}"
    )


if __name__ == "__main__":
    sys.exit(main())
