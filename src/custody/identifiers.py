"""Identifiers (table and column names) are checked against the real schema before use in SQL."""

from __future__ import annotations

import re

from sqlalchemy import Engine, MetaData, Table, inspect

from custody.errors import InvalidIdentifierError

# Plain ASCII names only: quotes, semicolons, dots and look-alike unicode are refused outright.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def check_name(name: str, what: str = "identifier") -> str:
    """Refuse anything but a plain SQL name, with a message naming the offending value."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidIdentifierError(
            f"{what} {name!r} is not a plain SQL name (letters, digits, _ and $, at most 63)"
        )
    return name


def reflect_table(engine: Engine, name: str, schema: str | None = None) -> Table:
    """Reflect an existing table after checking its name; a missing table is a clear error."""
    check_name(name, "table name")
    if schema is not None:
        check_name(schema, "schema name")
    if not inspect(engine).has_table(name, schema=schema):
        where = f"{schema}.{name}" if schema else name
        raise InvalidIdentifierError(f"table {where!r} does not exist in the database")
    table = Table(name, MetaData(), schema=schema, autoload_with=engine)
    table.info["dialect"] = engine.dialect.name  # types are only exact within one dialect
    return table


def check_column(table: Table, column: str) -> str:
    """Ensure ``column`` is a real column of ``table``."""
    check_name(column, "column name")
    if column not in table.c:
        raise InvalidIdentifierError(f"column {column!r} does not exist in table {table.name!r}")
    return column
