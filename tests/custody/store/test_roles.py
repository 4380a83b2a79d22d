"""Least-privilege roles, set up the documented way and then used as the pipelines use them.

The store is made exactly as the README tells a DBA: ``infra/sql/10-roles.sql`` with psql, then
``custody db upgrade`` and ``custody db roles`` connected as the owner. Role names are unique to
this session (roles are cluster-wide) and dropped, with the database, afterwards.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy import Engine, make_url, select, text

from custody.audit import AuditLog, Keyring, verify_chain
from custody.audit.partitions import ensure_partitions
from custody.chunks import Chunk, ChunkFailedError, ChunkOutcome, JobSpec, Ledger, run_chunk
from custody.cli import main
from custody.db import dispose_engines, get_engine
from custody.labs.critical import load_rules
from custody.labs.ingest import LabIngestor
from custody.reports.model import Period, ReportType
from custody.reports.output import record_failure
from custody.reports.queries import build_report
from custody.settings import reset_settings_cache
from custody.store.roles import OWNER_ONLY, POLICY, RoleNames, check_grants, grant_sql
from custody.store.tables import dead_letters
from custody.transfer.generic import CopyRangeWork
from tests.support.audit import phi_events
from tests.support.env import TEST_KEYS

# The module-scoped roles store is set up once: keep this module in one xdist worker.
pytestmark = pytest.mark.xdist_group("roles")

ROOT = Path(__file__).resolve().parents[3]
KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
CRITICAL_K = (
    b"MSH|^~\\&|LIS|CUSTODY LAB|EHR|HOSP|20261123101500-0500||ORU^R01|CRIT-0001|P|2.5.1\r"
    b"PID|1||MRN-CANARY^^^HOSP^MR||DOE^JANE||19700101|F\r"
    b"OBR|1|ORD-1|ACC-1|2823-3^Potassium^LN|||20261123100000-0500|||||||||||||||"
    b"20261123101000-0500|||F\r"
    b"OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||6.8|mmol/L|3.5-5.1|HH|||F"
    b"|||20261123100000-0500\r"
)
DENIED = "permission denied for table"


@dataclass(frozen=True)
class RoleStore:
    """A store set up with the three roles; URLs to connect as each."""

    names: RoleNames
    owner: str
    owner_url: str
    ingest_url: str
    reporting_url: str

    def ingest(self) -> Engine:
        return get_engine(self.ingest_url)

    def reporting(self) -> Engine:
        return get_engine(self.reporting_url)


def _psql() -> str:
    found = shutil.which("psql") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"), reverse=True)), None
    )
    if found is None:
        pytest.fail("psql (PostgreSQL client) is needed to run infra/sql/10-roles.sql")
    return str(found)


@pytest.fixture(scope="module")
def roles_store(pg_admin_url: str) -> Iterator[RoleStore]:
    tag = uuid.uuid4().hex[:8]
    owner, ingest, reporting = (f"ct{tag}_{r}" for r in ("owner", "ingest", "reporting"))
    database, password = f"custody_test_roles_{tag}", f"pw-{uuid.uuid4().hex}"
    admin = make_url(pg_admin_url)

    def url(role: str) -> str:
        return admin.set(username=role, password=password, database=database).render_as_string(
            hide_password=False
        )

    variables = {"owner_role": owner, "ingest_role": ingest, "reporting_role": reporting,
                 "database": database, "owner_password": password, "ingest_password": password,
                 "reporting_password": password}  # fmt: skip
    args = [_psql(), pg_admin_url, "-q", "-f", str(ROOT / "infra/sql/10-roles.sql")]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    try:
        for _ in range(2):  # the script is idempotent: a second run changes nothing and passes
            done = subprocess.run(args, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        yield RoleStore(
            RoleNames(ingest, reporting), owner, url(owner), url(ingest), url(reporting)
        )
    finally:
        dispose_engines()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for role in (ingest, reporting, owner):
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture(scope="module")
def granted(roles_store: RoleStore) -> RoleStore:
    """``custody db upgrade`` then ``custody db roles``, run as the owner through the CLI."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTODY_DATABASE_URL", roles_store.owner_url)
        reset_settings_cache()
        assert main(["db", "upgrade"]) == 0
        assert main(["db", "roles", *_role_args(roles_store)]) == 0
    reset_settings_cache()
    return roles_store


def _role_args(store: RoleStore) -> list[str]:
    return ["--ingest-role", store.names.ingest, "--reporting-role", store.names.reporting]


def _refused(url: str, statement: str, expected: str = DENIED) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")  # the grants must refuse it
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute(statement)
    assert expected in str(caught.value), str(caught.value)


def test_every_table_of_the_store_has_a_policy_and_the_roles_match_it(granted: RoleStore) -> None:
    with granted.ingest().connect() as c:
        tables = set(
            c.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                    "AND relkind IN ('r', 'p') AND NOT relispartition"
                )
            ).scalars()
        )
    assert tables - OWNER_ONLY == set(POLICY), "add new tables to custody.store.roles.POLICY"
    assert check_grants(get_engine(granted.owner_url), granted.names) == []


def test_ingest_appends_through_auditlog_and_the_chain_verifies(granted: RoleStore) -> None:
    audit = AuditLog(granted.ingest(), KEYRING)
    audit.log_batch(list(phi_events(500)))  # COPY into the partitioned parent
    with audit.buffered(max_events=100) as writer:
        for event in phi_events(250, start=500):
            writer.write(event)
    result = verify_chain(granted.reporting(), KEYRING)
    assert result.ok and result.events_checked >= 750, result.describe()


def test_ingest_cannot_rewrite_the_audit_trail_by_privilege(granted: RoleStore) -> None:
    AuditLog(granted.ingest(), KEYRING).log_batch(list(phi_events(3)))
    url = granted.ingest_url
    # Refused with "permission denied", before the append-only trigger is ever reached.
    _refused(url, "UPDATE audit_log SET principal = 'someone-else'")
    _refused(url, "DELETE FROM audit_log")
    _refused(url, "TRUNCATE audit_log")
    _refused(url, "UPDATE audit_log_default SET principal = 'x'")
    _refused(url, "TRUNCATE audit_log_default")
    _refused(url, "DELETE FROM audit_chain_head")
    _refused(url, "INSERT INTO audit_chain_head (id, seq, row_hash, updated_at) "
                  "VALUES (2, 0, 'x', now())")  # fmt: skip
    _refused(url, "UPDATE jobs SET chunk_size = 1")
    _refused(url, "DELETE FROM job_chunks")
    _refused(url, "ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner")
    _refused(url, "DROP TABLE audit_log", "must be owner")
    assert verify_chain(granted.reporting(), KEYRING).ok


def test_partitions_created_later_by_the_ingest_role_are_covered(granted: RoleStore) -> None:
    ingest = granted.ingest()
    assert ensure_partitions(ingest, dt.date(2019, 1, 1), 1) == 1  # runs with the owner's rights
    event = next(phi_events(1)).model_copy(
        update={"occurred_at": dt.datetime(2019, 1, 15, 12, tzinfo=dt.UTC)}
    )
    seq = AuditLog(ingest, KEYRING).log(event).last_seq
    with granted.reporting().connect() as c:
        where, owner = c.execute(
            text(
                "SELECT a.tableoid::regclass::text, pg_get_userbyid(p.relowner) FROM audit_log a "
                "JOIN pg_class p ON p.oid = a.tableoid WHERE a.seq = :seq"
            ),
            {"seq": seq},
        ).one()
    assert (where, owner) == ("audit_log_y2019m01", granted.owner)
    _refused(granted.ingest_url, "TRUNCATE audit_log_y2019m01")
    _refused(granted.ingest_url, f"DELETE FROM audit_log WHERE seq = {seq}")
    _refused(granted.reporting_url, "SELECT 1 FROM audit_log_y2019m01")  # only via the parent
    _refused(granted.reporting_url, "SELECT custody_audit_ensure_partitions('2032-01-01', 1)",
             "permission denied for function")  # fmt: skip
    assert check_grants(get_engine(granted.owner_url), granted.names) == []
    assert verify_chain(granted.reporting(), KEYRING).ok


def test_pipelines_write_what_they_need_as_ingest(granted: RoleStore) -> None:
    ingest = granted.ingest()
    audit = AuditLog(ingest, KEYRING)
    labs = LabIngestor(ingest, audit, load_rules("default"), principal="lab-feed",
                       correlation_id=None, zone=ZoneInfo("UTC"))  # fmt: skip
    ok = labs.ingest("crit.hl7", CRITICAL_K)  # temp-table upsert, critical result, audit
    assert (ok.status, ok.results, ok.critical) == ("ingested", 1, 1)
    assert labs.ingest("crit.hl7", CRITICAL_K).status == "skipped"
    assert labs.ingest("bad.hl7", b'{"resourceType": "Observation"}', "hl7v2").status == "rejected"

    ledger = Ledger(ingest)
    spec = JobSpec(job_id=f"roles-{uuid.uuid4().hex[:6]}", kind="copy", subject="a->b.t",
                   key_column="id", chunk_size=10)  # fmt: skip
    plan = ledger.plan(spec, lambda: [(None, 10), (10, 20)])
    assert ledger.remember_work(spec, CopyRangeWork("a", "b", "t", "id"))  # UPDATE jobs (work)

    def works(chunk: Chunk) -> ChunkOutcome:
        return ChunkOutcome(source_count=10, source_hash="h", target_count=10, target_hash="h")

    def breaks(chunk: Chunk) -> ChunkOutcome:
        raise ValueError("bad value")

    run = {"ledger": ledger, "audit": audit, "principal": "p", "correlation_id": None}
    assert run_chunk(plan.chunks[0], works, final_attempt=True, **run) is not None
    with pytest.raises(ChunkFailedError):
        run_chunk(plan.chunks[1], breaks, final_attempt=True, **run)  # files a dead letter
    with ingest.connect() as c:
        assert c.execute(select(dead_letters.c.item_ref)).scalars().all() == [plan.chunks[1].ref]
    record_failure(ingest, "r-roles-1", "phi_access", "HIPAA",
                   (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC)),
                   "TestError", None)  # fmt: skip
    assert verify_chain(granted.reporting(), KEYRING).ok


def test_reporting_reads_and_writes_nothing(granted: RoleStore) -> None:
    AuditLog(granted.ingest(), KEYRING).log_batch(list(phi_events(20)))
    now = dt.datetime.now(dt.UTC)
    period = Period(now - dt.timedelta(days=1), now + dt.timedelta(days=1))
    report = build_report(granted.reporting(), ReportType.PHI_ACCESS, period)
    rows = sum(1 for table in report.tables for _ in table.rows())
    assert rows > 0
    integrity = build_report(granted.reporting(), ReportType.AUDIT_INTEGRITY, period,
                             keyring=KEYRING)  # fmt: skip
    assert sum(1 for table in integrity.tables for _ in table.rows()) > 0

    with (
        psycopg.connect(granted.reporting_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        conn.execute("INSERT INTO jobs DEFAULT VALUES")  # the read-only default comes first
    url = granted.reporting_url
    for table in POLICY:
        _refused(url, f"INSERT INTO {table} DEFAULT VALUES")
        _refused(url, f"DELETE FROM {table}")
        _refused(url, f"TRUNCATE {table}")
        with psycopg.connect(granted.owner_url) as conn:
            column = conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = 1",
                (table,),
            ).fetchone()
        assert column is not None
        _refused(url, f"UPDATE {table} SET {column[0]} = {column[0]}")
    _refused(url, "CREATE TABLE scratch (x int)", "permission denied for schema")


def test_check_names_drift_and_reapplying_undoes_it(
    granted: RoleStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(granted.owner_url, autocommit=True) as conn:
        conn.execute(f'GRANT UPDATE, DELETE ON audit_log TO "{granted.names.ingest}"')
        conn.execute(f'GRANT INSERT ON compliance_reports TO "{granted.names.reporting}"')
        conn.execute(f'GRANT UPDATE ON jobs TO "{granted.names.ingest}"')
    monkeypatch.setenv("CUSTODY_DATABASE_URL", granted.owner_url)
    reset_settings_cache()
    assert main(["db", "roles", "--check", *_role_args(granted)]) == 1
    out = capsys.readouterr().out
    assert f"{granted.names.ingest} may UPDATE audit_log (policy: SELECT, INSERT)" in out
    assert f"{granted.names.ingest} may DELETE audit_log" in out
    assert f"{granted.names.reporting} may INSERT compliance_reports" in out
    assert "UPDATE columns chunk_size, job_id, key_column, kind" in out
    assert main(["db", "roles", *_role_args(granted)]) == 0
    assert "roles match the policy" in capsys.readouterr().out
    _refused(granted.ingest_url, "DELETE FROM audit_log")
    _refused(granted.ingest_url, "UPDATE jobs SET chunk_size = 1")


def test_the_sql_file_for_dbas_is_what_the_command_prints() -> None:
    assert (ROOT / "infra/sql/20-grants.sql").read_text() == grant_sql(RoleNames())


def test_roles_on_sqlite_or_with_bad_names_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTODY_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    reset_settings_cache()
    assert main(["db", "roles"]) == 2
    assert "need PostgreSQL" in capsys.readouterr().err
    assert main(["db", "roles", "--ingest-role", "x\x00y"]) == 2
    assert "NUL" in capsys.readouterr().err
    assert main(["db", "roles", "--ingest-role", "same", "--reporting-role", "same"]) == 2
    assert "must be different" in capsys.readouterr().err


@pytest.mark.slow
def test_the_flows_run_as_ingest_and_the_chain_verifies_as_reporting(
    granted: RoleStore, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real flow runs, connected the way a production worker is: as the ingest role only."""
    from flows.compliance_report import ReportParams, compliance_report
    from flows.ingest_lab_results import IngestParams, ingest_lab_results
    from tests.support.env import set_custody_env

    set_custody_env(monkeypatch, store_url=granted.ingest_url)
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", (tmp_path / "objects").as_uri())
    monkeypatch.setenv("CUSTODY_LAB_INBOX_ROOTS", f'["{tmp_path / "inbox"}"]')
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "k.hl7").write_bytes(CRITICAL_K.replace(b"CRIT-0001", b"CRIT-ROLE"))
    ingested = ingest_lab_results(IngestParams(source=str(tmp_path / "inbox")))
    assert (ingested.ingested, ingested.critical, ingested.quality) == (1, 1, "pass")
    reported = compliance_report(
        ReportParams(report_types=[ReportType.PHI_ACCESS, ReportType.AUDIT_INTEGRITY],
                     period="this_month")
    )  # fmt: skip
    assert not reported.failed, reported.reports
    monkeypatch.setenv("CUSTODY_DATABASE_URL", granted.reporting_url)
    reset_settings_cache()
    assert main(["audit", "verify"]) == 0  # an auditor's read-only connection is enough


def test_issue_15_item_6_a_moved_detected_at_is_refused_or_reported(
    granted: RoleStore, pg_admin_url: str
) -> None:
    """Issue 15 item 6: a 180-minute-late notification cannot be made to look on time unseen.

    Written the way production writes it, as the ingest role: the detected event and the row
    (its ``audit_seq``), then the acknowledgement 180 minutes later with its event. The attack:
    move ``detected_at`` 150 minutes later. As ingest it is refused by privilege (ingest may
    update only the acknowledgement columns, which it still can). Done by a superuser, the row
    moves, and the CLIA report names the result as disagreeing with its audit events.
    """
    from custody.audit import AuditEvent, DataClassification
    from custody.labs.tables import critical_results

    ingest = granted.ingest()
    detected_at = dt.datetime(2026, 6, 10, 8, 0, tzinfo=dt.UTC)
    acknowledged_at = detected_at + dt.timedelta(minutes=180)
    result_id = f"R-ITEM6-{uuid.uuid4().hex[:8]}"
    period = Period(dt.datetime(2026, 6, 1, tzinfo=dt.UTC), dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    ensure_partitions(ingest, dt.date(2026, 6, 1), 1)
    audit = AuditLog(ingest, KEYRING)

    def event(action: str, at: dt.datetime) -> AuditEvent:
        return AuditEvent(occurred_at=at, principal="lab-feed", action=action,
                          resource_type="lab_result", resource_id=result_id, regulation="CLIA",
                          data_classification=DataClassification.PHI)  # fmt: skip

    seq = audit.log(event("lab.critical_result.detected", detected_at)).last_seq
    with ingest.begin() as conn:
        conn.execute(
            critical_results.insert().values(
                result_id=result_id, rule_set="default", analyte="Potassium",
                loinc_code="2823-3", direction="high", limit_value=6.2, audit_seq=seq,
                detected_at=detected_at,
            )
        )  # fmt: skip
    audit.log(event("lab.critical_result.acknowledged", acknowledged_at))
    with ingest.begin() as conn:  # the acknowledgement columns stay writable for ingest
        conn.execute(
            critical_results.update()
            .where(critical_results.c.result_id == result_id)
            .values(acknowledged_at=acknowledged_at, acknowledged_by="rn01")
        )

    def report() -> tuple[dict[str, object], list[str], tuple[object, ...]]:
        built = build_report(granted.reporting(), ReportType.CRITICAL_TIMELINESS, period)
        (row,) = [r for r in built.tables[0].rows() if r[0] == result_id]
        return built.summary, built.findings, row

    summary, findings, row = report()
    assert (summary["late"], summary["on_time"], summary["audit_disagreements"]) == (1, 0, 0)
    assert findings == [] and row[4:] == (180.0, False, "agrees")

    move = "UPDATE critical_results SET detected_at = detected_at + interval '150 minutes'"
    _refused(granted.ingest_url, move)
    _refused(granted.ingest_url, "UPDATE critical_results SET audit_seq = NULL")
    assert report()[2][4:] == (180.0, False, "agrees")  # nothing moved

    database = make_url(granted.owner_url).database
    superuser = make_url(pg_admin_url).set(database=database).render_as_string(hide_password=False)
    with psycopg.connect(superuser, autocommit=True) as admin:
        admin.execute(f"{move} WHERE result_id = %s", (result_id,))
    summary, findings, row = report()
    assert (summary["late"], summary["on_time"]) == (0, 1)  # the numbers were fooled ...
    assert summary["audit_disagreements"] == 1  # ... the cross-check was not
    assert row[4:6] == (30.0, True)
    assert row[6] == "detected_at is +150.0 min from its detected audit event"
    assert findings == [f"critical result {result_id}: {row[6]}"]
