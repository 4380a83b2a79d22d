"""Realistic synthetic EHR data (no real person in it) for the demo, tests and benchmarks."""

from custody.synth.ehr import LABS, SynthCounts, access_events, create_ehr_tables, write_ehr

__all__ = ["LABS", "SynthCounts", "access_events", "create_ehr_tables", "write_ehr"]
