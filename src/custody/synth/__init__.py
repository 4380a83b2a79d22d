"""Realistic synthetic EHR data (no real person in it) for the demo, tests and benchmarks."""

from custody.synth.activity import (
    DISCLOSURE_REQUEST,
    acknowledge_critical_results,
    disclosure_events,
    record_disclosure_request,
)
from custody.synth.ehr import (
    ANCHOR,
    LABS,
    SynthCounts,
    access_events,
    create_ehr_tables,
    drop_tables,
    write_ehr,
)
from custody.synth.labfiles import LabDelivery, write_lab_delivery

__all__ = [
    "ANCHOR",
    "DISCLOSURE_REQUEST",
    "LABS",
    "LabDelivery",
    "SynthCounts",
    "access_events",
    "acknowledge_critical_results",
    "create_ehr_tables",
    "disclosure_events",
    "drop_tables",
    "record_disclosure_request",
    "write_ehr",
    "write_lab_delivery",
]
