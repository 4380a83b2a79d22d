"""Prepare a Prefect server for custody's deployments; safe to run again and again.

Creates (or brings back in line) what ``prefect.yaml`` declares under ``definitions``:

- the ``custody`` process work pool and its queues with their priorities (urgent first; the
  pool's ``default`` queue goes last),
- one global concurrency limit ``custody-archive-<database>`` (limit 1) per listed database,
  which ``archive-to-s3`` holds while it archives (the flow creates missing ones itself),
- the Prefect variable ``custody_schedules_active`` that every schedule in ``prefect.yaml``
  reads at deploy time: ``--schedules off`` on a staging or test server deploys everything with
  its schedules switched off.

Run it from the checkout with the Prefect API of the target server configured:

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python infra/prefect/setup_server.py
    .venv/bin/python infra/prefect/setup_server.py --schedules off      # deploy without schedules

It changes nothing it does not own: existing limits keep the value an operator gave them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere: flows/ and tasks/ importable
    sys.path.insert(0, str(ROOT))

from flows.deployments import PROJECT_FILE, SCHEDULES_VARIABLE, load_project  # noqa: E402
from tasks.concurrency import archive_limit_name  # noqa: E402


def definitions(project: dict[str, Any]) -> dict[str, Any]:
    """The ``definitions`` section custody relies on, checked against the deployments."""
    found = project.get("definitions") or {}
    pool = found.get("work_pool") or {}
    queues = pool.get("queues") or []
    if not pool.get("name") or not queues:
        raise ValueError("prefect.yaml: definitions.work_pool needs a name and queues")
    names = {q["name"] for q in queues}
    for deployment in project["deployments"]:
        wp = deployment.get("work_pool") or {}
        if wp.get("name") != pool["name"] or wp.get("work_queue_name") not in names:
            raise ValueError(
                f"prefect.yaml: deployment {deployment.get('name')!r} must use work pool "
                f"{pool['name']!r} and one of the queues {sorted(names)}"
            )
    return {
        "pool": pool,
        "queues": sorted(queues, key=lambda q: int(q["priority"])),
        "archive_databases": list(found.get("archive_databases") or []),
    }


async def apply(project: dict[str, Any], schedules_active: bool) -> list[str]:
    """Create or update the pool, queues, limits and schedule switch; return what was done."""
    from prefect.client.orchestration import get_client

    wanted = definitions(project)
    done: list[str] = []
    async with get_client() as client:
        done += await _pool(client, wanted["pool"])
        done += await _queues(client, wanted["pool"]["name"], wanted["queues"])
        for database in wanted["archive_databases"]:
            done += await _limit(client, archive_limit_name(database), 1)
        done += await _variable(client, SCHEDULES_VARIABLE, schedules_active)
    return done


async def _pool(client: Any, pool: dict[str, Any]) -> list[str]:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    kind = pool.get("type", "process")
    try:
        existing = await client.read_work_pool(pool["name"])
    except ObjectNotFound:
        template = ProcessWorker.get_default_base_job_template() if kind == "process" else {}
        await client.create_work_pool(
            WorkPoolCreate(
                name=pool["name"],
                type=kind,
                description=pool.get("description"),
                base_job_template=template,
            )
        )
        return [f"work pool {pool['name']!r} ({kind}) created"]
    if existing.type != kind:
        raise ValueError(
            f"work pool {pool['name']!r} exists with type {existing.type!r}, not {kind!r}"
        )
    return [f"work pool {pool['name']!r} ({kind}) exists"]


async def _queues(client: Any, pool: str, queues: list[dict[str, Any]]) -> list[str]:
    """Create or update the queues, then put any other queue (``default``) after them.

    Priorities are unique per pool: setting one shifts those at or below it. Set in ascending
    order, they end exactly as declared; the read-back below proves it.
    """
    existing = {q.name: q for q in await client.read_work_queues(work_pool_name=pool)}
    done = []
    for queue in queues:
        name, priority = queue["name"], int(queue["priority"])
        if name not in existing:
            await client.create_work_queue(
                name=name,
                work_pool_name=pool,
                priority=priority,
                description=queue.get("description"),
            )
            done.append(f"queue {name!r} created (priority {priority})")
            continue
        current = existing[name]
        if current.priority != priority or current.description != queue.get("description"):
            await client.update_work_queue(
                current.id, priority=priority, description=queue.get("description")
            )
            done.append(f"queue {name!r} updated (priority {priority})")
        else:
            done.append(f"queue {name!r} unchanged (priority {priority})")
    declared = {q["name"] for q in queues}
    last = max(int(q["priority"]) for q in queues)
    for extra in [q for q in existing.values() if q.name not in declared]:
        last += 1  # the pool's `default` queue, or one an operator added: after ours
        if extra.priority != last:
            await client.update_work_queue(extra.id, priority=last)
    final = {q.name: q.priority for q in await client.read_work_queues(work_pool_name=pool)}
    wanted = {q["name"]: int(q["priority"]) for q in queues}
    wrong = {
        name: final.get(name) for name, priority in wanted.items() if final.get(name) != priority
    }
    if wrong:
        raise RuntimeError(f"queue priorities did not take: {wrong}")
    return done


async def _limit(client: Any, name: str, limit: int) -> list[str]:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    try:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit)
        )
    except ObjectAlreadyExists:
        return [f"concurrency limit {name!r} exists (left as it is)"]
    return [f"concurrency limit {name!r} created (limit {limit})"]


async def _variable(client: Any, name: str, value: bool) -> list[str]:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    existing = await client.read_variable_by_name(name)
    if existing is None:
        await client.create_variable(VariableCreate(name=name, value=value))
    elif existing.value != value:
        await client.update_variable(VariableUpdate(name=name, value=value))
    return [f"variable {name!r} = {str(value).lower()} (schedules {'on' if value else 'off'})"]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prefect-file", type=Path, default=PROJECT_FILE)
    parser.add_argument(
        "--schedules",
        choices=["on", "off"],
        default="on",
        help="whether `prefect deploy` creates the schedules active (default: on)",
    )
    args = parser.parse_args(argv)
    try:
        done = asyncio.run(apply(load_project(args.prefect_file), args.schedules == "on"))
    except (ValueError, RuntimeError) as exc:
        print(f"setup: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
