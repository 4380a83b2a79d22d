"""Ingest one lab file: parse, check, flag critical values at once, then land it in one go.

A file is the unit of idempotence and of atomicity. Its SHA-256 decides whether it was ingested
before (then nothing happens). Its good results are upserted on ``result_id``, its bad records
quarantined with their source reference and a reason, and its ``lab_files`` row written, all in
one transaction with the per-result audit events: a crash leaves the whole file or none of it.
Critical values cannot wait for that commit: each one is written to the audit log (and
announced to Prefect) as soon as the file is parsed.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal
from zoneinfo import ZoneInfo

import psycopg
from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from custody.audit import AuditEvent, AuditLog, AuditStatus, DataClassification, Severity
from custody.chunks.retry import is_transient
from custody.db import is_postgres, utc_now
from custody.errors import CustodyError, safe_error
from custody.labs import pg_landing
from custody.labs.claims import claim
from custody.labs.critical import CriticalFinding, CriticalRules
from custody.labs.history import record_replacements
from custody.labs.model import FormatMismatchError, LabResult, NotAResult, Rejected, SourceRef
from custody.labs.prefetch import prefetched
from custody.labs.sources import name_digest
from custody.labs.tables import critical_results, lab_files, lab_quarantine, lab_results
from custody.labs.validate import problems
from custody.labs.zones import ZonePolicy

Format = Literal["auto", "hl7v2", "fhir", "csv"]
CsvLayout = Literal["default", "synthea"]


class LabStoreError(CustodyError):
    """The store refused a file's results; the file left nothing behind and can be re-run.

    The message names the file and the SQLSTATE, never a value.
    """


_PROCESSED = {
    "fhir": "fhir.diagnosticreport.processed",
    "hl7v2": "hl7v2.oru.processed",
    "csv": "csv.lab_result.processed",
}


@dataclass(frozen=True)
class FileReport:
    """What happened to one file: counts and status only (safe to hand to Prefect)."""

    file: str
    sha256: str
    format: str | None
    status: Literal["ingested", "skipped", "rejected", "claimed"]
    results: int = 0
    quarantined: int = 0
    critical: int = 0
    reason: str | None = None
    parse_seconds: float = 0.0
    not_results: int = 0  # items counted as not a result (e.g. dataAbsentReason components)


@dataclass(frozen=True)
class Alert:
    """A critical finding and, when the result was quarantined, at which stage and where."""

    finding: CriticalFinding
    quarantine_stage: str | None
    position: str


def detect_format(data: bytes) -> Literal["hl7v2", "fhir", "csv"]:
    """Guess the format from the first bytes: HL7 starts with MSH/FHS/BHS, FHIR with a brace."""
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n\x0b")
    if head.startswith((b"MSH", b"FHS", b"BHS")):
        return "hl7v2"
    if head.startswith((b"{", b"[")):
        return "fhir"
    if _HL7_LATER.search(data[:4096]):  # comment lines before an MSH: HL7 that says why not
        return "hl7v2"
    return "csv"


_HL7_LATER = re.compile(rb"[\r\n](?:MSH|FHS|BHS)[|^~\\&#!]")


def parse(data: bytes, file: str, fmt: str, csv_layout: CsvLayout = "default") -> Iterator[Any]:
    """Results and rejections from the format's parser (imported on first use).

    Raises:
        FormatMismatchError: the file is not of that format at all.
    """
    if fmt == "hl7v2":
        from custody.labs.hl7v2 import parse_hl7

        return parse_hl7(data, file)
    if fmt == "fhir":
        from custody.labs.fhir import parse_fhir

        return parse_fhir(data, file)
    from custody.labs.csv_results import SYNTHEA_OBSERVATIONS, parse_csv

    return parse_csv(data, file, SYNTHEA_OBSERVATIONS if csv_layout == "synthea" else None)


@dataclass(frozen=True)
class IngestLimits:
    """How big and how slow a file may be before it is quarantined (issue 15 item 9).

    A file up to ``in_memory_bytes`` is read whole; a larger HL7 v2 file on PostgreSQL is read,
    parsed and landed in batches of ``batch_items`` (memory stays flat with the file's size);
    any other larger file, any file over ``max_bytes``, or one that takes more than
    ``max_seconds`` to parse and land, is quarantined with the reason and the others go on.
    """

    max_bytes: int = 4 << 30
    in_memory_bytes: int = 32 << 20
    max_seconds: float = 1800.0
    batch_items: int = 5_000


class FileTooSlowError(Exception):
    """A file took longer than its time budget; its transaction is rolled back."""


@dataclass
class _Sorted:
    """One batch of parser output, sorted: what lands, what is quarantined, what alerts."""

    good: list[LabResult]
    bad: list[tuple[SourceRef, str, str]]
    alerts: list[Alert]
    not_results: int = 0


class LabIngestor:
    """Ingests files into custody's store, one transaction per file."""

    def __init__(
        self,
        store: Engine,
        audit: AuditLog,
        rules: CriticalRules,
        *,
        principal: str,
        correlation_id: str | None,
        zone: ZoneInfo,
        csv_layout: CsvLayout = "default",
        zones: ZonePolicy | None = None,
        limits: IngestLimits | None = None,
    ) -> None:
        """Bind the store, audit log, critical rules and the time zones of naive times.

        ``zones`` (per sender, per source) wins over ``zone``, which is then only the default.
        """
        self.store = store
        self.audit = audit
        self.rules = rules
        self.principal = principal
        self.correlation_id = correlation_id
        self.zone = zone
        self.zones = zones or ZonePolicy(default=zone)
        self.limits = limits or IngestLimits()
        self.csv_layout = csv_layout

    def ingest(self, file: str, data: bytes, fmt: Format = "auto") -> FileReport:
        """Ingest one file (or skip it when its content was ingested before).

        Raises:
            LabStoreError: the store refused the file's results (none of them landed).
        """
        digest = hashlib.sha256(data).hexdigest()
        with claim(self.store, digest) as claimed:
            if not claimed:  # another run is ingesting this very content: it is theirs
                return FileReport(file, digest, None, "claimed")
            return self._ingest_claimed(file, data, fmt, digest)

    def _ingest_claimed(self, file: str, data: bytes, fmt: Format, digest: str) -> FileReport:
        with self.store.connect() as conn:
            seen = conn.execute(
                select(lab_files.c.status).where(lab_files.c.file_sha256 == digest)
            ).scalar()
        if seen == "ingested":
            return FileReport(file, digest, None, "skipped")
        if seen == "rejected":  # quarantined before: say so again, record nothing twice
            return FileReport(file, digest, None, "rejected", reason="rejected before")
        kind = detect_format(data) if fmt == "auto" else fmt
        if fmt == "auto" and not data.strip(b" \t\r\n\x0b\x1c\x0c\xef\xbb\xbf"):
            reason = "empty file: nothing to read as HL7 v2, FHIR or CSV"
            return self._reject_file(file, digest, kind, len(data), reason)
        started = time.perf_counter()
        try:
            records = list(parse(data, file, kind, self.csv_layout))
        except FormatMismatchError as exc:
            return self._reject_file(file, digest, kind, len(data), str(exc))
        batch = self._sort(records)
        good, bad, findings, not_results = batch.good, batch.bad, batch.alerts, batch.not_results
        parsed = time.perf_counter() - started
        if parsed > self.limits.max_seconds:
            return self._reject_file(file, digest, kind, len(data), self._too_slow())
        seqs = self._announce_all(findings, digest)  # before the commit: immediately
        try:
            with self.store.begin() as conn:
                self._land(
                    conn, file, digest, kind, len(data), good, bad, findings, seqs, not_results
                )
        except (DBAPIError, psycopg.Error) as exc:
            # The server's message may quote a value ("COPY ..., column value_numeric: ..."):
            # PHI that must not travel with the exception into Prefect's logs, states or
            # persisted results, not even as its __context__: raised below, outside this block.
            refused: LabStoreError | None = LabStoreError(
                f"file sha256 {digest[:16]}: the store refused its results ({safe_error(exc)}); "
                "none of them was stored",
                transient=is_transient(exc),
            )
        else:
            refused = None
        if refused is not None:
            raise refused
        landed = len({r.result_id for r in good})  # a result sent twice in a file counts once
        return FileReport(
            file, digest, kind, "ingested", landed, len(bad), len(findings), None, parsed,
            not_results,
        )  # fmt: skip

    def ingest_file(self, file: str, path: str, fmt: Format = "auto") -> FileReport:
        """Ingest a file by path: small ones whole, big HL7 v2 ones in bounded batches.

        The path is opened without following a symlink (the caller checked it is in an inbox).

        Raises:
            LabStoreError: the store refused the file's results (none of them landed).
        """
        size = os.stat(path, follow_symlinks=False).st_size
        if size <= self.limits.in_memory_bytes:
            with _open(path) as handle:
                return self.ingest(file, handle.read(), fmt)
        digest = _file_digest(path)
        with claim(self.store, digest) as claimed:
            if not claimed:
                return FileReport(file, digest, None, "claimed")
            with self.store.connect() as conn:
                seen = conn.execute(
                    select(lab_files.c.status).where(lab_files.c.file_sha256 == digest)
                ).scalar()
            if seen == "ingested":
                return FileReport(file, digest, None, "skipped")
            if seen is not None:
                return FileReport(file, digest, None, "rejected", reason="rejected before")
            with _open(path) as handle:
                head = handle.read(64 << 10)
            kind = detect_format(head) if fmt == "auto" else fmt
            if size > self.limits.max_bytes:
                reason = (
                    f"file too big: {size} bytes, over the limit of {self.limits.max_bytes} "
                    "(CUSTODY_LAB_MAX_FILE_BYTES)"
                )
                return self._reject_file(file, digest, kind, size, reason)
            if kind != "hl7v2" or not is_postgres(self.store.dialect):
                reason = (
                    f"file too big to read whole: {size} bytes, over "
                    f"{self.limits.in_memory_bytes} (CUSTODY_LAB_IN_MEMORY_BYTES); only HL7 v2 "
                    "files on a PostgreSQL store are read in batches: split the file"
                )
                return self._reject_file(file, digest, kind, size, reason)
            return self._ingest_in_batches(file, path, digest, size)

    def _ingest_in_batches(self, file: str, path: str, digest: str, size: int) -> FileReport:
        """Parse and land an HL7 v2 file batch by batch, all in one transaction."""
        started = time.perf_counter()
        totals = _Sorted([], [], [])
        landed = quarantined = critical = 0
        replaced: list[AuditEvent] = []
        outcome: str | None = None
        try:
            with self.store.begin() as conn, _open(path) as handle:
                conn.exec_driver_sql(_LANDED_PG)
                # Parsed and sorted in a thread, a batch or two ahead of the landing here; closed
                # (the thread stopped) before the file is, whatever ends the loop.
                with closing(prefetched(self._stream_batches(handle, file))) as batches:
                    for batch, full in batches:
                        replaced += self._land_batch(conn, file, digest, batch)
                        landed += len(batch.good)
                        quarantined += len(batch.bad)
                        critical += len(batch.alerts)
                        totals.not_results += batch.not_results
                        if full and time.perf_counter() - started > self.limits.max_seconds:
                            raise FileTooSlowError
                distinct = conn.exec_driver_sql(
                    "SELECT count(DISTINCT result_id) FROM custody_lab_landed"
                ).scalar_one()
                conn.execute(
                    insert(lab_files).values(
                        file_sha256=digest, source_file=file, format="hl7v2", status="ingested",
                        results=distinct, quarantined=quarantined, critical=critical, bytes=size,
                        not_results=totals.not_results, ingested_at=utc_now(),
                        correlation_id=self.correlation_id,
                    )
                )  # fmt: skip
                self._append_processed(conn, digest, "hl7v2", replaced)
        except FormatMismatchError as exc:
            outcome = str(exc)
        except FileTooSlowError:
            outcome = self._too_slow()
        except (DBAPIError, psycopg.Error) as exc:
            outcome = f"store:{safe_error(exc)}|{int(is_transient(exc))}"
        if outcome is not None and outcome.startswith("store:"):
            cause, transient = outcome[6:].rsplit("|", 1)
            raise LabStoreError(
                f"file sha256 {digest[:16]}: the store refused its results ({cause}); none of "
                "them was stored",
                transient=transient == "1",
            )
        if outcome is not None:
            return self._reject_file(file, digest, "hl7v2", size, outcome)
        return FileReport(
            file, digest, "hl7v2", "ingested", int(distinct), quarantined, critical, None,
            time.perf_counter() - started, totals.not_results,
        )  # fmt: skip

    def _stream_batches(self, handle: BinaryIO, file: str) -> Iterator[tuple[_Sorted, bool]]:
        """The file's records, sorted in batches of ``batch_items``; the last one is not full.

        Raises:
            FormatMismatchError: the file (or a later piece of it) is not HL7 v2.
        """
        from custody.labs.hl7v2 import parse_hl7_stream

        pending: list[Any] = []
        for item in parse_hl7_stream(handle, file):
            pending.append(item)
            if len(pending) >= self.limits.batch_items:
                yield self._sort(pending), True
                pending = []
        yield self._sort(pending), False

    def _land_batch(
        self, conn: Connection, file: str, digest: str, batch: _Sorted
    ) -> list[AuditEvent]:
        """Announce a batch's critical values, then write its rows (events come at the end).

        The per-result audit events are appended once, after the last batch: appending takes
        the audit chain's lock until the commit, and the critical announcements of later
        batches (on their own connection) must not wait for it.
        """
        seqs = self._announce_all(batch.alerts, digest)
        now = utc_now()
        replaced: list[AuditEvent] = []
        if batch.good:
            replaced = self._upsert_results(conn, batch.good, digest, now)
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(
                "COPY custody_lab_landed (result_id, position) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "text"])
                for r in batch.good:
                    copy.write_row((r.result_id, r.source.position))
        self._write_quarantine_and_alerts(conn, file, digest, batch.bad, batch.alerts, seqs, now)
        return replaced

    def _append_processed(
        self, conn: Connection, digest: str, kind: str, replaced: list[AuditEvent]
    ) -> None:
        """One audit event per landed result, read back from the run's landed list in pages."""
        if replaced:
            self.audit.append_in(conn, replaced)
        last = 0
        while True:
            page = conn.exec_driver_sql(
                "SELECT n, result_id, position FROM custody_lab_landed WHERE n > %(last)s "
                "ORDER BY n LIMIT 50000",
                {"last": last},
            ).all()
            if not page:
                return
            last = page[-1][0]
            self._append_results(conn, digest, kind, [(rid, pos) for _, rid, pos in page])

    def _append_results(
        self, conn: Connection, digest: str, kind: str, landed: list[tuple[str, str]]
    ) -> None:
        """One ``*.processed`` audit event per landed result (resource id and position)."""
        template = AuditEvent(
            principal=self.principal, action=_PROCESSED[kind], status=AuditStatus.SUCCESS,
            resource_type="lab_result", correlation_id=self.correlation_id,
            data_classification=DataClassification.PHI,
        )  # fmt: skip
        self.audit.append_uniform_in(conn, template, [
            (rid, {"file_sha256": digest, "position": position}) for rid, position in landed
        ])  # fmt: skip

    def _upsert_results(
        self, conn: Connection, good: list[LabResult], digest: str, now: Any
    ) -> list[AuditEvent]:
        """Archive what the results replace, then upsert them; events for the replacements."""
        if is_postgres(conn.dialect):
            return pg_landing.land(
                conn, good, digest, now, principal=self.principal,
                correlation_id=self.correlation_id,
            )  # fmt: skip
        rows = [_row(r, digest, now) for r in good]
        replaced = record_replacements(
            conn, rows, digest, now, principal=self.principal, correlation_id=self.correlation_id
        )
        self._upsert(conn, rows)
        return replaced

    def _too_slow(self) -> str:
        return (
            f"file took longer than {self.limits.max_seconds:g} s to parse and land "
            "(CUSTODY_LAB_MAX_FILE_SECONDS): quarantined so that the other files go on"
        )

    def _sort(self, records: list[Any]) -> _Sorted:
        """Results to land, records to quarantine (with why), alerts, and non-results."""
        batch = _Sorted([], [], [])
        for record in records:
            if isinstance(record, NotAResult):
                batch.not_results += 1
                continue
            if isinstance(record, Rejected):
                batch.bad.append((record.source, "parse", record.reason))
                if record.result is not None:  # critical even though quarantined: alert
                    batch.alerts.extend(self._alert(record.result, "parse"))
                continue
            result = self.zones.place(record)
            found = problems(result)
            if found:
                batch.bad.append((result.source, "validate", "; ".join(found)))
                batch.alerts.extend(self._alert(result, "validate"))
            else:
                batch.good.append(result)
                batch.alerts.extend(self._alert(result, None))
        return batch

    def _alert(self, result: LabResult, quarantine_stage: str | None) -> list[Alert]:
        finding = self.rules.check(result)
        if finding is None:
            return []
        return [Alert(finding, quarantine_stage, result.source.position)]

    def _announce_all(self, alerts: list[Alert], digest: str) -> list[int]:
        """Write a batch's critical events at once, in one transaction; their audit seqs.

        One commit for the batch's alerts rather than one each: they are still durable (and
        announced to the listeners) before any of the batch's results is landed.
        """
        if not alerts:
            return []
        events = [self._critical_event(a, digest) for a in alerts]
        first = self.audit.log_batch(events).first_seq
        return list(range(first, first + len(events)))

    def _critical_event(self, alert: Alert, digest: str) -> AuditEvent:
        finding = alert.finding
        details: dict[str, Any] = {
            "analyte": finding.analyte,
            "loinc_code": finding.loinc_code,
            "direction": finding.direction,
            "limit": None if finding.limit is None else str(finding.limit),
            "unit": finding.unit,
            "rule_set": self.rules.name,
            "alert_source": finding.alert_source,
            "file_sha256": digest,
        }
        if alert.quarantine_stage is not None:  # names the quarantine record, not the value
            details["quarantined"] = True
            details["quarantine_stage"] = alert.quarantine_stage
            details["quarantine_position"] = alert.position
        return AuditEvent(
            principal=self.principal,
            action="lab.critical_result.detected",
            status=AuditStatus.SUCCESS,
            severity=Severity.CRITICAL,
            resource_type="lab_result",
            resource_id=finding.result_id,
            correlation_id=self.correlation_id,
            regulation="CLIA",
            data_classification=DataClassification.PHI,
            details=details,
        )

    def _land(
        self,
        conn: Connection,
        file: str,
        digest: str,
        kind: str,
        size: int,
        good: list[LabResult],
        bad: list[tuple[SourceRef, str, str]],
        findings: list[Alert],
        seqs: list[int],
        not_results: int = 0,
    ) -> None:
        now = utc_now()
        replaced: list[AuditEvent] = []
        if good:
            replaced = self._upsert_results(conn, good, digest, now)
        self._write_quarantine_and_alerts(conn, file, digest, bad, findings, seqs, now)
        conn.execute(
            insert(lab_files).values(
                file_sha256=digest, source_file=file, format=kind, status="ingested",
                results=len({r.result_id for r in good}), quarantined=len(bad),
                critical=len(findings), bytes=size,
                not_results=not_results, ingested_at=now, correlation_id=self.correlation_id,
            )
        )  # fmt: skip
        if replaced:
            self.audit.append_in(conn, replaced)
        if good:
            self._append_results(
                conn, digest, kind, [(r.result_id, r.source.position) for r in good]
            )

    def _write_quarantine_and_alerts(
        self,
        conn: Connection,
        file: str,
        digest: str,
        bad: list[tuple[SourceRef, str, str]],
        findings: list[Alert],
        seqs: list[int],
        now: Any,
    ) -> None:
        if bad:
            conn.execute(
                insert(lab_quarantine),
                [
                    {"file_sha256": digest, "source_file": file, "source_message": ref.message_id,
                     "source_position": ref.position, "stage": stage, "reason": reason[:2000],
                     "quarantined_at": now, "correlation_id": self.correlation_id}
                    for ref, stage, reason in bad
                ],
            )  # fmt: skip
        if findings:
            conn.execute(
                insert(critical_results),
                [
                    {"result_id": a.finding.result_id, "rule_set": self.rules.name,
                     "analyte": a.finding.analyte, "loinc_code": a.finding.loinc_code,
                     "direction": a.finding.direction, "limit_value": a.finding.limit,
                     "alert_source": a.finding.alert_source,
                     "quarantine_stage": a.quarantine_stage, "audit_seq": seq,
                     "detected_at": now}
                    for a, seq in zip(findings, seqs, strict=True)
                ],
            )  # fmt: skip

    def _upsert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        statement = sqlite.insert(lab_results)
        updates = {c.name: statement.excluded[c.name] for c in _COLUMNS[1:]}
        for start in range(0, len(rows), 1000):
            conn.execute(
                statement.on_conflict_do_update(index_elements=["result_id"], set_=updates),
                rows[start : start + 1000],
            )

    def refuse(self, file: str, reason: str) -> FileReport:
        """Quarantine an inbox entry whose content is never read (a symlink), once."""
        digest = name_digest(file)
        with claim(self.store, digest) as claimed:
            if not claimed:
                return FileReport(file, digest, None, "claimed")
            return self._refuse_claimed(file, reason, digest)

    def _refuse_claimed(self, file: str, reason: str, digest: str) -> FileReport:
        with self.store.connect() as conn:
            seen = conn.execute(
                select(lab_files.c.status).where(lab_files.c.file_sha256 == digest)
            ).scalar()
        if seen is not None:
            return FileReport(file, digest, None, "rejected", reason="rejected before")
        return self._reject_file(file, digest, None, 0, reason)

    def _reject_file(
        self, file: str, digest: str, kind: str | None, size: int, reason: str
    ) -> FileReport:
        now = utc_now()
        with self.store.begin() as conn:
            conn.execute(
                insert(lab_quarantine).values(
                    file_sha256=digest, source_file=file, stage="file", reason=reason[:2000],
                    quarantined_at=now, correlation_id=self.correlation_id,
                )
            )  # fmt: skip
            conn.execute(
                insert(lab_files).values(
                    file_sha256=digest, source_file=file, format=kind, status="rejected",
                    results=0, quarantined=0, critical=0, bytes=size, ingested_at=now,
                    correlation_id=self.correlation_id,
                )
            )  # fmt: skip
            self.audit.append_in(conn, [AuditEvent(
                principal=self.principal, action="lab.file.rejected", status=AuditStatus.FAILED,
                resource_type="lab_file", resource_id=digest, correlation_id=self.correlation_id,
                data_classification=DataClassification.PHI,
                details={"format": kind, "bytes": size},
            )])  # fmt: skip
        return FileReport(file, digest, kind, "rejected", reason=reason)


def _row(result: LabResult, digest: str, now: Any) -> dict[str, Any]:
    row = result.model_dump(exclude={"source"})
    row["status"] = result.status.value
    row["source_file"] = result.source.file
    row["source_message"] = result.source.message_id
    row["source_position"] = result.source.position
    row["file_sha256"] = digest
    row["ingested_at"] = now
    return row


_LANDED_PG = (
    "CREATE TEMP TABLE custody_lab_landed (n bigserial PRIMARY KEY, result_id text NOT NULL, "
    "position text NOT NULL) ON COMMIT DROP"
)


def _open(path: str) -> BinaryIO:
    """Open for reading without following a symlink at the last component."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with _open(path) as handle:
        while block := handle.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


_COLUMNS = list(lab_results.c)
