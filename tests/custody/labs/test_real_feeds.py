"""Issue 16: lab ingestion on real-feed-shaped messages (written for these tests, not copied).

Each test ingests into a real PostgreSQL store and reads the outcome back with its own SQL.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
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


# --- items 4, 5, 6: nothing dropped, empty finals quarantined, what real feeds send ----------

FHIR_PANEL = b"""{"resourceType": "Observation", "id": "bp-panel-1", "status": "final",
 "code": {"coding": [{"system": "http://loinc.org", "code": "24362-6"}]},
 "effectiveDateTime": "2026-10-02T07:45:00-04:00",
 "component": [
  {"code": {"coding": [{"system": "http://loinc.org", "code": "2947-0"}]},
   "valueQuantity": {"value": 141, "unit": "mmol/L"}},
  {"code": {"coding": [{"system": "http://loinc.org", "code": "6298-4"}]},
   "dataAbsentReason": {"coding": [{"code": "not-performed"}], "text": "Not performed"}},
  {"code": {"coding": [{"system": "http://loinc.org", "code": "2069-3"}]},
   "valueQuantity": {"value": 104, "unit": "mmol/L"}}]}"""


def test_issue_16_item_4_data_absent_component_is_counted_in_the_file_summary(
    pg_store: Engine,
) -> None:
    report = ingestor(pg_store).ingest("panel.json", FHIR_PANEL)
    assert (report.results, report.quarantined, report.not_results) == (2, 0, 1)
    assert rows(pg_store, "SELECT results, quarantined, not_results FROM lab_files") == [(2, 0, 1)]
    assert rows(pg_store, "SELECT loinc_code FROM lab_results ORDER BY 1") == [
        ("2069-3",), ("2947-0",)
    ]  # fmt: skip


def test_issue_16_item_5_empty_final_value_is_quarantined_but_x_and_n_are_stored(
    pg_store: Engine,
) -> None:
    data = _flagged(
        "E1",
        "OBX|1|NM|2345-7^Glucose^LN|||mg/dL|70-99||||F",  # final, no value: quarantined
        "OBX|2|NM|2823-3^Potassium^LN|||mmol/L|3.5-5.1||||X",  # specimen hemolysed: no value
        "OBX|3|NM|2951-2^Sodium^LN|||mmol/L|135-145||||N",  # not asked
        "OBX|4|ST|5778-6^Color of Urine^LN||||||||C",  # a correction without a value
    )
    report = ingestor(pg_store).ingest("empties.hl7", data)
    assert (report.results, report.quarantined) == (2, 2)
    assert rows(
        pg_store, "SELECT loinc_code, status, value_numeric, value_text FROM lab_results ORDER BY 1"
    ) == [("2823-3", "cancelled", None, None), ("2951-2", "cancelled", None, None)]
    reasons = rows(pg_store, "SELECT source_position, reason FROM lab_quarantine ORDER BY 1")
    assert reasons == [
        ("message 1/OBR 1/OBX 1", "OBX-5 (value) empty with OBX-11 result status F: only X, N, "
         "D, W, I or O may come without a value"),
        ("message 1/OBR 1/OBX 4", "OBX-5 (value) empty with OBX-11 result status C: only X, N, "
         "D, W, I or O may come without a value"),
    ]  # fmt: skip


OUL_R22 = hl7(
    "MSH|^~\\&|ANALYZER|CORE LAB|LIS|HOSP|20261201094500-0500||OUL^R22^OUL_R22|OUL-1|P|2.5.1",
    "PID|1||UL-1^^^HOSP^MR",
    "SPM|1|SP-88||BLD^Whole blood^HL70487|||||||||||||20261201090000-0500",
    "OBR|1||ACC-OUL1|718-7^Hemoglobin^LN",
    "ORC|SC|ACC-OUL1",
    "OBX|1|NM|718-7^Hemoglobin^LN||12.9|g/dL|12.0-16.0|N|||F",
)
ORU_R30 = hl7(
    "MSH|^~\\&|POC|ICU METER|LIS|HOSP|20261201100000-0500||ORU^R30^ORU_R30|POC-1|P|2.5.1",
    "PID|1||UL-2^^^HOSP^MR",
    "ORC|NW|POC-ORD-1",
    "OBR|1|POC-ORD-1||2345-7^Glucose^LN|||20261201095500-0500",
    "OBX|1|NM|2345-7^Glucose^LN||118|mg/dL|70-99|H|||F",
)


def test_issue_16_item_6_oul_r22_and_oru_r30_are_ingested(pg_store: Engine) -> None:
    labs = ingestor(pg_store)
    assert labs.ingest("oul.hl7", OUL_R22).results == 1
    assert labs.ingest("poc.hl7", ORU_R30).results == 1
    assert rows(pg_store, "SELECT order_ref, collected_at FROM lab_results ORDER BY 1") == [
        ("ACC-OUL1", dt.datetime(2026, 12, 1, 14, 0, tzinfo=UTC)),  # SPM-17, no OBR-7
        ("POC-ORD-1", dt.datetime(2026, 12, 1, 14, 55, tzinfo=UTC)),
    ]


def test_issue_16_item_6_a_malformed_obr22_quarantines_with_a_reason_like_obx19(
    pg_store: Engine,
) -> None:
    data = hl7(
        "MSH|^~\\&|LIS|NORTH LAB|EHR|HOSP|20261202080000-0500||ORU^R01|M-1|P|2.5.1",
        "PID|1||NL-1^^^HOSP^MR",
        "OBR|1||ACC-M1|BMP^BMP^L|||20261202070000-0500|||||||||||||||2026-12-02|||F",
        "OBX|1|NM|2345-7^Glucose^LN||90|mg/dL|70-99|N|||F",
        "OBR|2||ACC-M2|BMP^BMP^L|||20261202070000-0500",
        "OBX|1|NM|2345-7^Glucose^LN||91|mg/dL|70-99|N|||F||||||||2026-12-02",
    )
    report = ingestor(pg_store).ingest("bad-times.hl7", data)
    assert (report.results, report.quarantined) == (0, 2)
    assert rows(pg_store, "SELECT reason FROM lab_quarantine ORDER BY source_position") == [
        ("OBR-22: bad timestamp '2026-12-02'",), ("OBX-19: bad timestamp '2026-12-02'",)
    ]  # fmt: skip


def test_issue_16_item_6_comment_lines_or_an_empty_file_are_rejected_naming_hl7(
    pg_store: Engine,
) -> None:
    labs = ingestor(pg_store)
    commented = b"# export from LIS\r# 2026-12-02\r" + ORU_R30
    report = labs.ingest("export.hl7", commented)
    assert report.status == "rejected" and report.reason is not None
    assert report.reason.startswith("not HL7 v2: 2 line(s) before the first MSH"), report.reason
    empty = labs.ingest("empty.hl7", b"\r\n")
    assert empty.status == "rejected" and empty.reason is not None
    assert "HL7 v2" in empty.reason and "CSV columns" not in empty.reason
    assert rows(pg_store, "SELECT stage, count(*) FROM lab_quarantine GROUP BY 1") == [("file", 2)]


# --- item 7: counts that add up, and the history of what a correction replaced ---------------


def _potassium(control: str, value: str, status: str) -> bytes:
    return hl7(
        f"MSH|^~\\&|LIS|WEST LAB|EHR|HOSP|20261203091500-0500||ORU^R01|{control}|P|2.5.1",
        "PID|1||WL-7^^^HOSP^MR",
        "OBR|1||ACC-W7|BMP^BMP^L|||20261203080000-0500",
        f"OBX|1|NM|2823-3^Potassium^LN||{value}|mmol/L|3.5-5.1|N|||{status}",
        "OBX|2|NM|2951-2^Sodium^LN||139|mmol/L|135-145|N|||F",
    )


def test_issue_16_item_7_a_correction_moves_the_count_and_keeps_the_replaced_row(
    pg_store: Engine,
) -> None:
    labs = ingestor(pg_store)
    first = labs.ingest("first.hl7", _potassium("W-1", "4.1", "F"))
    second = labs.ingest("second.hl7", _potassium("W-2", "4.6", "C"))
    assert (first.results, second.results) == (2, 2)
    # Both results of the first file were replaced (the sodium resent unchanged, the
    # potassium corrected): the first file no longer claims them.
    assert rows(pg_store, "SELECT results FROM lab_files ORDER BY ingested_at") == [(0,), (2,)]
    assert rows(pg_store, "SELECT sum(results) FROM lab_files") == rows(
        pg_store, "SELECT count(*) FROM lab_results"
    )
    history = rows(
        pg_store,
        "SELECT h.previous_status, h.new_status, h.previous->>'value_numeric', "
        "h.file_sha256 = f.file_sha256 FROM lab_results_history h "
        "JOIN lab_files f ON f.source_file = 'first.hl7' ORDER BY h.previous->>'loinc_code'",
    )
    assert history == [("final", "corrected", "4.1", True), ("final", "final", "139", True)]
    events = rows(
        pg_store,
        "SELECT details->>'previous_status', details->>'new_status' FROM audit_log "
        "WHERE action = 'lab.result.replaced' ORDER BY seq",
    )
    assert sorted(events) == [("final", "corrected"), ("final", "final")]
    assert rows(
        pg_store, "SELECT value_numeric, status FROM lab_results WHERE code = '2823-3'"
    ) == [(Decimal("4.6"), "corrected")]


def test_issue_16_item_7_a_cancellation_keeps_history_and_a_rerun_changes_nothing(
    store: Engine,
) -> None:
    labs = ingestor(store)  # PostgreSQL and SQLite
    labs.ingest("first.hl7", _potassium("X-1", "4.1", "F"))
    cancelled = _potassium("X-2", "", "X")
    labs.ingest("cancel.hl7", cancelled)
    labs.ingest("cancel.hl7", cancelled)  # same content again: skipped, no second history row
    [(before, after, value)] = rows(
        store,
        "SELECT previous_status, new_status, previous->>'value_numeric' FROM lab_results_history "
        "WHERE result_id IN (SELECT result_id FROM lab_results WHERE code = '2823-3')",
    )
    # SQLite's store holds numbers as REAL (read back with ten decimals): compare as numbers.
    assert (before, after, Decimal(str(value))) == ("final", "cancelled", Decimal("4.1"))
    assert rows(store, "SELECT count(*) FROM audit_log WHERE action = 'lab.result.replaced'") == [
        (2,)
    ]
    assert rows(store, "SELECT sum(results) FROM lab_files") == rows(
        store, "SELECT count(*) FROM lab_results"
    )
