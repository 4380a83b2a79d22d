"""Tasks that fill databases and the audit trail with synthetic data (demo, tests, benchmarks)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.synth import SynthCounts, access_events, write_ehr
from tasks.runtime import runtime


@task(
    name="generate-synthetic-ehr",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def generate_ehr(connection: str, patients: int, seed: int = 7) -> SynthCounts:
    """Write a seeded synthetic hospital (patients, encounters, lab results) to a connection."""
    return write_ehr(runtime().engine(connection), patients_n=patients, seed=seed)


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
