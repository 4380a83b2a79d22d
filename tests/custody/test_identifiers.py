"""SQL identifiers: every legal name works, found in the catalog and quoted; nothing else does."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, create_engine, text

from custody.errors import InvalidIdentifierError
from custody.identifiers import check_column, check_name, quote_pg, reflect_table, safe_id

UNHOLDABLE = ["", "lab\x00results", "x" * 64, "\u00e9" * 32, "bad\ud800"]

# Legal PostgreSQL names this project did not choose: each must be found and used exactly.
LEGAL = [
    "Clinic Data",
    "PatientRecords",
    "na\u00efve_\u00e9t\u00e9",
    "price$usd",
    "select",
    'say "hi"',
    'lab_results"; DROP TABLE victims; --',
    "l\u0430b_results",  # Cyrillic a: a different table from lab_results
    "x" * 63,
]


@pytest.mark.parametrize("bad", UNHOLDABLE)
def test_names_no_server_can_hold_are_refused_naming_the_problem(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="table name"):
        check_name(bad, "table name")


def test_legal_names_are_found_and_quoted_exactly(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE victims (id int)"))
        c.execute(text("CREATE TABLE lab_results (id int)"))
        for name in LEGAL:
            c.exec_driver_sql(f"CREATE TABLE {quote_pg(name)} ({quote_pg(name)} int PRIMARY KEY)")
            c.exec_driver_sql(f"INSERT INTO {quote_pg(name)} VALUES (7)")
    for name in LEGAL:
        table = reflect_table(engine, name, "public")
        assert table.name == name
        assert check_column(table, name) == name
        with engine.connect() as c:
            assert c.execute(table.select()).scalar_one() == 7
    with engine.connect() as c:  # the hostile-looking name was only ever a name
        assert c.execute(text("SELECT count(*) FROM victims")).scalar_one() == 0
    engine.dispose()


def test_absent_names_are_refused_by_the_catalog_not_by_their_look(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE patients (id int PRIMARY KEY, mrn text)"))
    for absent in ["Patients", "patients ", 'patients"; --', "public.patients", "patient"]:
        with pytest.raises(InvalidIdentifierError, match="does not exist"):
            reflect_table(engine, absent, "public")
    table = reflect_table(engine, "patients", "public")
    for absent in ["MRN", "mrn2", "mrn OR 1=1"]:
        with pytest.raises(InvalidIdentifierError, match="does not exist"):
            check_column(table, absent)
    engine.dispose()


def test_absent_names_are_refused_on_sqlite(sqlite_store: Engine) -> None:
    with sqlite_store.begin() as c:
        c.execute(text("CREATE TABLE patients (id INTEGER PRIMARY KEY, mrn TEXT)"))
    with pytest.raises(InvalidIdentifierError, match="table 'patient' does not exist"):
        reflect_table(sqlite_store, "patient")
    table = reflect_table(sqlite_store, "patients")
    with pytest.raises(InvalidIdentifierError, match="mrn2"):
        check_column(table, "mrn2")
    assert check_column(table, "mrn") == "mrn"


def test_quote_pg_doubles_embedded_quotes() -> None:
    assert quote_pg('a"b') == '"a""b"'
    assert quote_pg("Clinic Data") == '"Clinic Data"'


def test_safe_ids_are_stable_distinct_and_plain() -> None:
    assert safe_id("lab_results") == "lab_results"
    ids = {safe_id(n) for n in ["ClinicData", "clinicdata", "clinic data", "Clinic Data"]}
    assert len(ids) == 4
    assert safe_id("ClinicData") == safe_id("ClinicData")
    for name in LEGAL:
        sid = safe_id(name)
        assert len(sid) <= 40
        assert all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in sid), sid
        assert sid == sid.lower()
