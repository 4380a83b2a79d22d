"""One run at a time per resource, across workers and servers: Prefect global concurrency limits.

A deployment's own ``concurrency_limit`` counts the runs of that deployment whatever their
parameters: with 1, tonight's archival of ``ehr`` would wait for ``lims``; with 2, two
archivals of ``ehr`` could overlap. "At most one archival per database" is keyed by a
parameter, so the flow takes a slot of a global concurrency limit named after the database
(``custody-archive-<database>``, limit 1) for as long as it archives.

The guarantee covers the runs Prefect orchestrates: every run of a deployment (schedule, UI,
``run_deployment``, the REST API), on any worker. A direct Python call of the flow (a test, a
notebook) takes no slot. The slot is a lease the client renews while the run lives; a worker
killed outright keeps it until the lease expires (5 minutes), then the next run goes ahead.
That is why direct calls stay out: the tests kill archival processes on purpose and resume at
once, which is the normal path for a chunked job, and must not wait out a lease each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

#: How long a run waits for the running archival of the same database before it fails.
ARCHIVE_WAIT_SECONDS = 6 * 3600


def archive_limit_name(database: str) -> str:
    """The global concurrency limit that serialises archival runs on one database."""
    return f"custody-archive-{database}"


def ensure_limit(name: str, limit: int = 1) -> bool:
    """Create the global concurrency limit unless it exists; True when this call created it.

    An existing limit is left as the operator set it (raised, or disabled on purpose).
    """
    with get_client(sync_client=True) as client:
        try:  # read first: a refused create makes the server log an IntegrityError traceback
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
        except ObjectAlreadyExists:
            return False
    return True


@contextmanager
def exclusive(name: str, wait_seconds: float) -> Iterator[None]:
    """Hold one slot of the limit ``name`` (created with limit 1 if missing) while inside.

    Raises:
        TimeoutError: no slot within ``wait_seconds`` (another run holds it); the message names
            the limit, so whoever reads the failed run knows what it waited for.
    """
    ensure_limit(name)
    with ExitStack() as stack:
        try:  # only the acquisition: a timeout raised by the body is the body's own
            stack.enter_context(
                concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True)
            )
        except TimeoutError as exc:
            raise TimeoutError(
                f"another run held the concurrency limit {name!r} for {wait_seconds:.0f} s"
            ) from exc
        yield


def in_deployment_run() -> bool:
    """True inside a flow run that a deployment created (what the limits are for)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


@contextmanager
def one_archival_per_database(database: str) -> Iterator[None]:
    """Serialise deployment runs of the archival per database (not per deployment)."""
    if not in_deployment_run():
        yield
        return
    with exclusive(archive_limit_name(database), ARCHIVE_WAIT_SECONDS):
        yield
