"""Issue 16: lab ingestion on real-feed-shaped messages (written for these tests, not copied).

Each test ingests into a real PostgreSQL store and reads the outcome back with its own SQL.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from custody.audit import AuditLog, Keyring
from custody.labs.critical import load_rules
from custody.labs.ingest import LabIngestor
from custody.labs.zones import ZonePolicy
from tests.support.env import TEST_KEYS

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
UTC = dt.UTC


def hl7(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


def ingestor(store: Engine, zones: ZonePolicy | None = None) -> LabIngestor:
    return LabIngestor(
        store, AuditLog(store, KEYRING), load_rules("default"), principal="test",
        correlation_id="run-1", zone=ZoneInfo("UTC"), zones=zones,
    )  # fmt: skip


def rows(store: Engine, sql: str) -> list[tuple[object, ...]]:
    with store.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


# --- item 1: time zones -----------------------------------------------------------------------

NEWBORN_SCREEN = hl7(
    "MSH|^~\\&|NBS LIS|STATE NBS LAB|EHR|HOSP|202208061230-0600||ORU^R01^ORU_R01|NBS-77|P|2.5.1",
    "PID|1||NB-100^^^HOSP^MR||BABY^GIRL||20220804|F",
    "OBR|1|PL-9|FL-9|57128-1^Newborn screening panel^LN|||20220806050000|||||||||||||||"
    "202208061100|||F",
    "OBX|1|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||92|mg/dL|70-99|N|||F",
    "OBX|2|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||4.4|mmol/L|3.5-5.1|N|||F"
    "|||20220806051500+0000",
)


def test_issue_16_item_1_msh7_offset_places_naive_obr_and_obx_times(pg_store: Engine) -> None:
    report = ingestor(pg_store).ingest("nbs.hl7", NEWBORN_SCREEN)
    assert (report.status, report.results) == ("ingested", 2)
    got = rows(
        pg_store,
        "SELECT loinc_code, collected_at, resulted_at, time_zone_source FROM lab_results "
        "ORDER BY loinc_code",
    )
    # 05:00 at -0600 is 11:00Z (not 05:00Z); 11:00 at -0600 is 17:00Z.
    assert got[0] == (
        "2345-7", dt.datetime(2022, 8, 6, 11, 0, tzinfo=UTC),
        dt.datetime(2022, 8, 6, 17, 0, tzinfo=UTC), "msh7",
    )  # fmt: skip
    # OBX-14 has its own offset (kept); OBR-22 is naive and takes MSH-7's: still "msh7".
    assert got[1] == (
        "2823-3", dt.datetime(2022, 8, 6, 5, 15, tzinfo=UTC),
        dt.datetime(2022, 8, 6, 17, 0, tzinfo=UTC), "msh7",
    )  # fmt: skip


def _analyser(control: str, when: str) -> str:
    """An analyser interface message: MSH-7 without an offset, times local to the sender."""
    return "\r".join([
        f"MSH|^~\\&|COBAS|RIVERSIDE LAB|LIS|HOSP|{when}||ORU^R01|{control}|P|2.3.1",
        "PID|1||RV-{control}^^^RIV^MR",
        f"OBR|1||ACC-{control}|CHEM7^Chem 7^L|||{when}",
        "OBX|1|NM|2951-2^Sodium [Moles/volume] in Serum or Plasma^LN||140|mmol/L|135-145||||F",
    ]) + "\r"  # fmt: skip


def test_issue_16_item_1_per_sender_zone_follows_dst_and_is_recorded(pg_store: Engine) -> None:
    # America/New_York: EST (-05:00) on 2026-03-07, EDT (-04:00) from 2026-03-08 03:00 local.
    data = (_analyser("A1", "202603070900") + _analyser("A2", "202603090900")).encode()
    zones = ZonePolicy(
        default=ZoneInfo("UTC"), senders={"RIVERSIDE LAB": ZoneInfo("America/New_York")}
    )
    assert ingestor(pg_store, zones).ingest("riverside.hl7", data).results == 2
    got = rows(
        pg_store,
        "SELECT order_ref, collected_at, time_zone_source, sender FROM lab_results ORDER BY 1",
    )
    assert got == [
        ("ACC-A1", dt.datetime(2026, 3, 7, 14, 0, tzinfo=UTC), "sender", "RIVERSIDE LAB"),
        ("ACC-A2", dt.datetime(2026, 3, 9, 13, 0, tzinfo=UTC), "sender", "RIVERSIDE LAB"),
    ]


def test_issue_16_item_1_default_zone_applies_last_and_says_so(pg_store: Engine) -> None:
    data = _analyser("B1", "202601150900").encode()
    zones = ZonePolicy(default=ZoneInfo("Europe/Berlin"), senders={"OTHER LAB": ZoneInfo("UTC")})
    assert ingestor(pg_store, zones).ingest("other.hl7", data).results == 1
    assert rows(pg_store, "SELECT collected_at, time_zone_source FROM lab_results") == [
        (dt.datetime(2026, 1, 15, 8, 0, tzinfo=UTC), "default")
    ]


def test_issue_16_item_1_colon_offsets_are_read(pg_store: Engine) -> None:
    data = hl7(
        "MSH|^~\\&|EPIC|CLINIC|LIS|HOSP|20260704101500-04:00||ORU^R01|C-1|P|2.5.1",
        "PID|1||CL-1^^^CL^MR",
        "OBR|1||ACC-C1|24323-8^CMP^LN|||20260704093000-04:00",
        "OBX|1|NM|2345-7^Glucose^LN||101|mg/dL|70-99|H|||F",
    )
    assert ingestor(pg_store).ingest("colon.hl7", data).results == 1
    assert rows(pg_store, "SELECT collected_at, time_zone_source FROM lab_results") == [
        (dt.datetime(2026, 7, 4, 13, 30, tzinfo=UTC), "field")
    ]


FHIR_NAIVE = b"""{"resourceType": "Observation", "id": "ob-tz-1", "status": "final",
 "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
 "subject": {"reference": "Patient/p1"},
 "effectiveDateTime": "2026-11-01T01:30:00",
 "issued": "2026-11-01T09:00:00-05:00",
 "valueQuantity": {"value": 88, "unit": "mg/dL"}}"""


def test_issue_16_item_1_fhir_naive_datetime_takes_the_source_zone(pg_store: Engine) -> None:
    # 2026-11-01 01:30 in Chicago is ambiguous (DST ends at 02:00): the first, CDT, is taken.
    zones = ZonePolicy(default=ZoneInfo("UTC"), source=ZoneInfo("America/Chicago"))
    assert ingestor(pg_store, zones).ingest("obs.json", FHIR_NAIVE).results == 1
    assert rows(
        pg_store, "SELECT collected_at, resulted_at, time_zone_source FROM lab_results"
    ) == [
        (
            dt.datetime(2026, 11, 1, 6, 30, tzinfo=UTC),
            dt.datetime(2026, 11, 1, 14, 0, tzinfo=UTC),
            "source",
        )
    ]


# --- items 2 and 3: the sender's critical flags, and critical results in quarantine -----------


def _flagged(control: str, *obx: str) -> bytes:
    return hl7(
        f"MSH|^~\\&|SUNQUEST|COUNTY LAB|EHR|HOSP|20261105083000-0500||ORU^R01|{control}|P|2.4",
        "PID|1||CL-{control}^^^CNTY^MR||ROE^RICHARD",
        f"OBR|1||ACC-{control}|BMP^Basic panel^L|||20261105080000-0500",
        *obx,
    )


def _alerts(store: Engine) -> list[tuple[object, ...]]:
    return rows(
        store,
        "SELECT c.loinc_code, c.direction, c.alert_source, c.quarantine_stage, "
        "c.limit_value IS NULL, a.details->>'alert_source', a.severity "
        "FROM critical_results c JOIN audit_log a ON a.seq = c.audit_seq ORDER BY c.loinc_code",
    )


def test_issue_16_item_2_hl7_sender_flags_hh_ll_aa_alert_with_their_source(
    pg_store: Engine,
) -> None:
    data = _flagged(
        "F1",
        # Inside custody's rule limits, but the performing lab flagged them critical.
        "OBX|1|NM|2345-7^Glucose^LN||48|mg/dL|70-99|LL|||F",
        "OBX|2|NM|6690-2^WBC^LN||31.0|10*3/uL|4.0-11.0|HH|||F",
        "OBX|3|ST|600-7^Blood culture^LN||Gram positive cocci||NEG|AA|||F",
        # Past the rule table's potassium limit and flagged HH: one alert, both sources.
        "OBX|4|NM|2823-3^Potassium^LN||6.9|mmol/L|3.5-5.1|HH|||F",
        # Flag H (merely high) is not a critical flag.
        "OBX|5|NM|2951-2^Sodium^LN||147|mmol/L|135-145|H|||F",
    )
    report = ingestor(pg_store).ingest("county.hl7", data)
    assert (report.results, report.critical) == (5, 4)
    assert _alerts(pg_store) == [
        ("2345-7", "low", "sender_flag", None, True, "sender_flag", "critical"),
        ("2823-3", "high", "rule_table+sender_flag", None, False, "rule_table+sender_flag",
         "critical"),
        ("600-7", "abnormal", "sender_flag", None, True, "sender_flag", "critical"),
        ("6690-2", "high", "sender_flag", None, True, "sender_flag", "critical"),
    ]  # fmt: skip


FHIR_FLAGGED = b"""{"resourceType": "Bundle", "type": "collection", "entry": [
 {"resource": {"resourceType": "Observation", "id": "hb-1", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
  "effectiveDateTime": "2026-11-05T08:00:00Z",
  "valueQuantity": {"value": 7.9, "unit": "g/dL"},
  "interpretation": [{"coding": [{"system":
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "LL"}]}]}},
 {"resource": {"resourceType": "Observation", "id": "trop-1", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "10839-9"}]},
  "effectiveDateTime": "2026-11-05T08:00:00Z",
  "valueQuantity": {"value": 0.09, "unit": "ng/mL"},
  "interpretation": [{"coding": [{"code": "critical"}]}]}},
 {"resource": {"resourceType": "Observation", "id": "na-1", "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
  "effectiveDateTime": "2026-11-05T08:00:00Z",
  "valueQuantity": {"value": 139, "unit": "mmol/L"},
  "interpretation": [{"coding": [{"code": "N"}]}]}}]}"""


def test_issue_16_item_2_fhir_interpretation_hh_ll_aa_critical_alerts(pg_store: Engine) -> None:
    report = ingestor(pg_store).ingest("bundle.json", FHIR_FLAGGED)
    assert (report.results, report.critical) == (3, 2)
    got = _alerts(pg_store)
    assert [(g[0], g[1], g[2]) for g in got] == [
        ("10839-9", "abnormal", "sender_flag"),
        ("718-7", "low", "sender_flag"),
    ]


def test_issue_16_item_3_a_critical_result_quarantined_for_its_date_still_alerts(
    pg_store: Engine,
) -> None:
    from custody.prefect_glue import critical_event_payload

    payloads: list[dict[str, object]] = []
    audit = AuditLog(
        pg_store, KEYRING,
        critical_listeners=[lambda e, seq: payloads.append(critical_event_payload(e, seq))],
    )  # fmt: skip
    labs = LabIngestor(
        pg_store, audit, load_rules("default"), principal="test", correlation_id=None,
        zone=ZoneInfo("UTC"),
    )  # fmt: skip
    data = _flagged(
        "Q1",
        "OBX|1|NM|2345-7^Glucose^LN||52|mg/dL|70-99|AA|||F|||20170229061500",  # no such day
        "OBX|2|NM|2823-3^Potassium^LN||7.4|mmol/L|3.5-5.1||||F|||20170229061500",
        "OBX|3|NM|2951-2^Sodium^LN||140|mmol/L|135-145|N|||F|||20170229061500",
    )
    report = labs.ingest("leap.hl7", data)
    assert (report.results, report.quarantined, report.critical) == (0, 3, 2)
    assert rows(pg_store, "SELECT count(*) FROM lab_results") == [(0,)]
    assert [(g[0], g[2], g[3]) for g in _alerts(pg_store)] == [
        ("2345-7", "sender_flag", "parse"),
        ("2823-3", "rule_table", "parse"),
    ]
    quarantine = rows(pg_store, "SELECT source_position, reason FROM lab_quarantine ORDER BY 1")
    assert all("OBX-14: bad timestamp" in str(reason) for _, reason in quarantine)
    # What Prefect receives names the quarantine record (stage, position), never the value.
    assert [
        (p["quarantined"], p["quarantine_stage"], p["quarantine_position"]) for p in payloads
    ] == [
        (True, "parse", "message 1/OBR 1/OBX 1"),
        (True, "parse", "message 1/OBR 1/OBX 2"),
    ]
    for payload in payloads:
        shown = str({k: v for k, v in payload.items() if k not in ("audit_seq", "occurred_at")})
        assert "52" not in shown and "7.4" not in shown and "2017" not in shown
        assert "CL-Q1" not in shown and "ROE" not in shown
