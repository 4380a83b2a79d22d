"""The demo: synthetic hospital data, an audited chunked copy, and a verified audit chain."""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from custody.chunks import BatchResult
from flows.copy_table import CopyTableParams, copy_table
from tasks.audit import publish_audit_artifacts, verify_audit_chain
from tasks.synth import generate_ehr, simulate_phi_access


class DemoParams(BaseModel):
    """Sizes of the demo (it runs on the embedded SQLite defaults)."""

    model_config = ConfigDict(title="Custody demo", extra="forbid")

    patients: int = Field(default=300, ge=1, le=100_000, title="Synthetic patients")
    access_events: int = Field(default=5_000, ge=0, le=1_000_000, title="PHI access events")
    chunk_size: int = Field(default=1_000, ge=1, le=1_000_000, title="Rows per chunk")
    source: str = Field(default="demo_ehr", title="Source connection")
    target: str = Field(default="demo_warehouse", title="Target connection")


@flow(name="custody-demo", description="Synthetic EHR -> audited chunked copy -> verified chain.")
def custody_demo(params: DemoParams | None = None) -> dict[str, Any]:
    """Run every building block once, end to end."""
    params = params or DemoParams()
    counts = generate_ehr(params.source, params.patients)
    simulate_phi_access(params.access_events, params.patients)
    copy_state = copy_table(
        CopyTableParams(
            source=params.source,
            target=params.target,
            table="lab_results",
            key_column="result_id",
            chunk_size=params.chunk_size,
        ),
        return_state=True,
    )
    copied = copy_state.result(raise_on_failure=False)
    chain = verify_audit_chain()
    publish_audit_artifacts("custody-demo")
    return {
        "patients": counts.patients,
        "lab_results": counts.lab_results,
        "copy": copied.model_dump() if isinstance(copied, BatchResult) else str(copied),
        "audit_chain": chain,
    }
