"""Lab ingestion tasks: find the files, ingest a group of them. Only references cross Prefect."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.labs.critical import load_rules
from custody.labs.gating import ungated_files
from custody.labs.ingest import CsvLayout, Format, IngestLimits, LabIngestor
from custody.labs.sources import (
    SymlinkRefusedError,
    check_local_source,
    inbox_path,
    inbox_roots,
    list_inbox,
)
from custody.labs.zones import ZonePolicy, source_zone, zone_named
from custody.quality import QualityResult
from custody.storage import open_store
from tasks.retry import retry_if_transient
from tasks.runtime import runtime

_NO_CACHE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
STORE_PREFIX = "store:"


@task(
    name="list-lab-files",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def list_lab_files(source: str, include: list[str]) -> list[str]:
    """File references under the source: paths relative to a local root, or object keys."""
    if source.startswith(STORE_PREFIX):
        prefix = source[len(STORE_PREFIX) :]
        store = open_store()
        if prefix and store.head(prefix) is not None:  # one staged payload
            return [prefix]
        keys = [o.key for o in store.list(prefix)]
        return sorted(k for k in keys if _matches(k.rsplit("/", 1)[-1], include))
    root = _local_root(source)
    return [ref for ref in list_inbox(root) if _matches(ref.rsplit("/", 1)[-1], include)]


@task(
    name="ingest-lab-files",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def ingest_lab_files(
    source: str,
    refs: list[str],
    fmt: Format,
    csv_layout: CsvLayout,
    rules: str,
    timezone: str,
    first: int = 1,
) -> list[dict[str, Any]]:
    """Ingest a group of files, each in its own transaction; returns per-file counts only.

    A retry after a crash is safe: files already landed are skipped by content hash. Files
    are named in the returned rows by sequence number (``first`` for the group's first) and
    digest only: a file name may carry PHI (issue 15 item 5).
    """
    rt = runtime()
    zones = ZonePolicy(
        default=ZoneInfo(timezone),
        senders={
            sender: zone_named(name, "CUSTODY_LAB_SENDER_ZONES")
            for sender, name in rt.settings.lab_sender_zones.items()
        },
        source=source_zone(rt.settings.lab_source_zones, source),
    )
    limits = IngestLimits(
        max_bytes=rt.settings.lab_max_file_bytes,
        in_memory_bytes=rt.settings.lab_in_memory_bytes,
        max_seconds=rt.settings.lab_max_file_seconds,
    )
    ingestor = LabIngestor(
        rt.store, rt.audit, load_rules(rules), principal=rt.settings.principal,
        correlation_id=rt.correlation_id, zone=ZoneInfo(timezone), csv_layout=csv_layout,
        zones=zones, limits=limits,
    )  # fmt: skip
    reports = []
    for seq, ref in enumerate(refs, first):
        try:
            if source.startswith(STORE_PREFIX):
                report = ingestor.ingest(ref, open_store().get(ref), fmt)
            else:  # by path: a big file is streamed, never read whole (issue 15 item 9)
                path = inbox_path(_local_root(source), ref)
                report = ingestor.ingest_file(ref, str(path), fmt)
        except SymlinkRefusedError as exc:
            report = ingestor.refuse(ref, str(exc))
        row = asdict(report)
        del row["file"]
        row["seq"] = seq
        row["parse_seconds"] = round(report.parse_seconds, 4)
        reports.append(row)
    return reports


@task(
    name="find-ungated-lab-files",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def find_ungated_lab_files(file_shas: list[str]) -> list[str]:
    """Skipped files that an unfinished earlier run landed but never gated (hashes only)."""
    return ungated_files(runtime().store, file_shas)


@task(
    name="check-lab-results",
    retry_condition_fn=retry_if_transient,
    retries=1,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def check_lab_results(file_shas: list[str]) -> QualityResult:
    """The GX gate over the rows this run landed (outcome only, no values)."""
    from custody.quality.labs import check_lab_results as run_suite

    return run_suite(runtime().store.url.render_as_string(hide_password=False), file_shas)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _local_root(source: str) -> Path:
    settings = runtime().settings
    return check_local_source(source, inbox_roots(settings.lab_inbox_roots, settings.work_dir))
