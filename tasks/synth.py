"""Tasks that fill databases and the audit trail with synthetic data (demo, tests, benchmarks).

Only counts, paths and opaque ids come back: the synthetic rows look like PHI and are treated so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.synth import (
    DISCLOSURE_REQUEST,
    LabDelivery,
    SynthCounts,
    access_events,
    acknowledge_critical_results,
    disclosure_events,
    drop_tables,
    record_disclosure_request,
    write_ehr,
    write_lab_delivery,
)
from tasks.runtime import runtime


@task(
    name="generate-synthetic-ehr",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def generate_ehr(connection: str, patients: int, seed: int = 7) -> SynthCounts:
    """Write a seeded synthetic hospital (patients, encounters, lab results, access log)."""
    return write_ehr(runtime().engine(connection), patients_n=patients, seed=seed)


@task(name="reset-demo-tables", cache_policy=NO_CACHE, persist_result=False)
def reset_tables(connection: str, tables: list[str]) -> list[str]:
    """Drop the named synthetic-hospital tables of a connection, so a migration starts afresh.

    The demo rebuilds its hospital on every run; its warehouse is reset with it, so that the
    warehouse is always exactly this run's verified copy (whatever the sizes of earlier runs).
    """
    return drop_tables(runtime().engine(connection), tables)


@task(
    name="simulate-phi-access",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def simulate_phi_access(count: int, patients: int, seed: int = 11) -> int:
    """Append application-style PHI access events through the buffered writer."""
    rt = runtime()
    with rt.audit.buffered(max_events=2_000) as writer:
        for event in access_events(count, patients_n=patients, seed=seed):
            writer.write(event)
    return count


@task(name="simulate-disclosures", cache_policy=NO_CACHE, persist_result=False)
def simulate_disclosures(patients: int) -> dict[str, int | str]:
    """Log disclosures of PHI as the records office would, and a patient's request to see them.

    Returns the request id (opaque) for the accounting-of-disclosures report, never the patient.
    """
    rt = runtime()
    events = disclosure_events(patients)
    rt.audit.log_batch(events)
    record_disclosure_request(rt.store, patients)
    return {"disclosures": len(events), "request_id": DISCLOSURE_REQUEST}


@task(name="deliver-lab-files", cache_policy=NO_CACHE, persist_result=False)
def deliver_lab_files(inbox: str | None, patients: int) -> LabDelivery:
    """Drop a new lab delivery (HL7 v2, FHIR, CSV and one bad file) into its own inbox folder.

    The folder is ``<inbox>/<UTC time>-<random>``, so every delivery is new content and a run
    ingests exactly its own files. Default inbox: ``<work_dir>/inbox``.
    """
    now = datetime.now(UTC)
    stamp = f"{now:%Y%m%dT%H%M%S}Z-{uuid4().hex[:6]}"
    root = Path(inbox) if inbox else runtime().settings.work_dir.resolve() / "inbox"
    return write_lab_delivery(root / stamp, stamp, patients_n=patients, now=now)


@task(name="acknowledge-critical-results", cache_policy=NO_CACHE, persist_result=False)
def acknowledge_criticals(by: str = "rn.demo") -> int:
    """A nurse acknowledges the open critical results (row and audit event, one transaction)."""
    rt = runtime()
    return acknowledge_critical_results(rt.store, rt.audit, by=by, correlation_id=rt.correlation_id)
