"""SQL identifiers from parameters: refused unless plain, and unless the schema has them."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from custody.errors import InvalidIdentifierError
from custody.identifiers import check_column, check_name, reflect_table

HOSTILE_NAMES = [
    'lab_results"; DROP TABLE audit_log; --',
    "lab_results;",
    "public.lab_results",
    "lab results",
    "l\u0430b_results",  # Cyrillic a
    "\uff4c\uff41\uff42",  # fullwidth "lab"
    "lab_results\n",
    "lab_results\x00",
    "",
    "1abc",
    "x" * 64,
    "pg_catalog.pg_authid",
]


@pytest.mark.parametrize("bad", HOSTILE_NAMES)
def test_hostile_names_are_refused_naming_the_value(bad: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="is not a plain SQL name"):
        check_name(bad, "table name")


def test_plain_but_absent_names_are_refused_against_the_schema(sqlite_store: Engine) -> None:
    with sqlite_store.begin() as c:
        c.execute(text("CREATE TABLE patients (id INTEGER PRIMARY KEY, mrn TEXT)"))
    with pytest.raises(InvalidIdentifierError, match="table 'patient' does not exist"):
        reflect_table(sqlite_store, "patient")
    table = reflect_table(sqlite_store, "patients")
    with pytest.raises(InvalidIdentifierError, match="mrn2"):
        check_column(table, "mrn2")
    assert check_column(table, "mrn") == "mrn"
