"""What the hospital's applications do between pipeline runs, synthetic.

Disclosures of PHI, a patient's request for an accounting of them, and a nurse acknowledging
critical results. The compliance reports read exactly these: ``phi.disclosure.made`` events
and a row in ``disclosure_requests`` (whose patient never leaves the database), and
``acknowledged_at`` on ``critical_results`` for the timeliness report.
"""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import Engine, insert, select, update

from custody.audit import AuditEvent, AuditLog, AuditStatus, DataClassification
from custody.db import utc_now, write_transaction
from custody.labs.tables import critical_results
from custody.reports.tables import disclosure_requests

DISCLOSURE_REQUEST = "DR-DEMO-0001"
"""The demo patient's request for an accounting of disclosures (an opaque id, no PHI)."""

_RECIPIENTS = (
    ("State Department of Health", "public_health", "Reportable condition notification"),
    ("Riverton County Court", "judicial", "Records produced under subpoena"),
    ("Ashford Life Insurance", "authorized", "Records released on signed authorization"),
    ("CDC NNDSS", "public_health", "Case report"),
)


def disclosure_events(
    patients_n: int, *, end: dt.datetime | None = None, seed: int = 17
) -> list[AuditEvent]:
    """Disclosures over the year before ``end``: three of the requesting patient's, two others'."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    end = end or utc_now()
    requester = requesting_patient(patients_n)
    others = [f"MRN{rng.randrange(1, patients_n + 1):07d}" for _ in range(2)]
    events = []
    for patient in (requester, requester, requester, *others):
        recipient, purpose, description = rng.choice(_RECIPIENTS)
        events.append(
            AuditEvent(
                occurred_at=end - dt.timedelta(days=rng.randrange(1, 365), hours=rng.randrange(9)),
                principal=f"him{rng.randrange(1, 4):02d}",
                action="phi.disclosure.made",
                status=AuditStatus.SUCCESS,
                resource_type="patient",
                resource_id=patient,
                regulation="HIPAA",
                data_classification=DataClassification.PHI,
                retention_days=2190,
                details={"recipient": recipient, "purpose": purpose, "description": description},
            )
        )
    return sorted(events, key=lambda e: e.occurred_at)


def requesting_patient(patients_n: int) -> str:
    """The synthetic patient behind ``DISCLOSURE_REQUEST``."""
    return f"MRN{min(42, patients_n):07d}"


def record_disclosure_request(store: Engine, patients_n: int) -> bool:
    """Add the demo patient's request to ``disclosure_requests`` once; True when added now."""
    with write_transaction(store) as conn:
        found = conn.execute(
            select(disclosure_requests.c.request_id).where(
                disclosure_requests.c.request_id == DISCLOSURE_REQUEST
            )
        ).first()
        if found is not None:
            return False
        conn.execute(
            insert(disclosure_requests).values(
                request_id=DISCLOSURE_REQUEST, patient_ref=requesting_patient(patients_n),
                requested_by="him01", requested_at=utc_now(),
            )
        )  # fmt: skip
    return True


def acknowledge_critical_results(
    store: Engine, audit: AuditLog, *, by: str, correlation_id: str | None
) -> int:
    """A nurse acknowledges every open critical result now: the row and an audit event each.

    Both are written in one transaction, so the timeliness report and the audit trail agree.
    """
    with write_transaction(store) as conn:
        open_ = conn.execute(
            select(critical_results.c.id, critical_results.c.result_id).where(
                critical_results.c.acknowledged_at.is_(None)
            )
        ).all()
        if not open_:
            return 0
        now = utc_now()
        conn.execute(
            update(critical_results)
            .where(critical_results.c.id.in_([r.id for r in open_]))
            .values(acknowledged_at=now, acknowledged_by=by)
        )
        audit.append_in(
            conn,
            [
                AuditEvent(
                    occurred_at=now, principal=by, action="lab.critical_result.acknowledged",
                    status=AuditStatus.SUCCESS, resource_type="lab_result",
                    resource_id=r.result_id, correlation_id=correlation_id, regulation="CLIA",
                    data_classification=DataClassification.PHI,
                )
                for r in open_
            ],
        )  # fmt: skip
    return len(open_)
