"""Identifiers (schema, table and column names) as the database has them.

A name from a parameter is never trusted because of how it looks: it is found in the real
catalog, then quoted wherever it reaches SQL. ``check_name`` only refuses what no database can
hold as a name (empty, NUL, invalid Unicode, longer than the server keeps), so that every name
PostgreSQL or MySQL accepts — spaces, non-ASCII letters, mixed case, ``$``, quotes — works. A
hostile string is refused because no such relation exists, not because of its characters.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import Dialect, Engine, MetaData, Table, inspect
from sqlalchemy.sql.elements import quoted_name

from custody.errors import InvalidIdentifierError

# PostgreSQL keeps 63 bytes of a name (NAMEDATALEN - 1) and silently truncates longer ones, so a
# longer name would address a different object. MySQL keeps 64 characters.
MAX_NAME_BYTES = 63


def check_name(name: str, what: str = "identifier", *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """Refuse what cannot be a name anywhere; the catalog lookup that follows is the real check.

    Args:
        name: The name as the user gave it (case and spaces are significant).
        what: What the name is, for the message ("table name", "column name").
        max_bytes: The server's limit in UTF-8 bytes.

    Returns:
        The name, unchanged.

    Raises:
        InvalidIdentifierError: Empty, not text, with NUL or lone surrogates, or too long.
    """
    if not isinstance(name, str) or not name:
        raise InvalidIdentifierError(f"{what} must be a non-empty name, got {name!r}")
    if "\x00" in name:
        raise InvalidIdentifierError(f"{what} {name!r} contains a NUL character")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidIdentifierError(f"{what} {name!r} is not valid Unicode") from None
    if size > max_bytes:
        raise InvalidIdentifierError(f"{what} {name!r} is longer than {max_bytes} bytes")
    return name


def quote_pg(name: str) -> str:
    """PostgreSQL's quoted form of a name (what ``quote_ident`` returns, always quoted)."""
    return '"' + check_name(name).replace('"', '""') + '"'


def quote_for(dialect: Dialect, name: str) -> str:
    """A name quoted for any SQLAlchemy dialect, always quoted (case and spaces kept)."""
    return dialect.identifier_preparer.quote_identifier(check_name(name))


_SAFE = re.compile(r"[^a-z0-9_]+")


def safe_id(name: str, max_length: int = 40) -> str:
    """A stable lowercase ``[a-z0-9_-]`` id for a name, for job ids, artifact and object keys.

    Plain lowercase names keep their form (``lab_results``); any other name gets its slug plus a
    digest of the exact name, so ``"ClinicData"``, ``clinicdata`` and ``clinic data`` never share
    an id. The real name stays in the ledger and the audit log.
    """
    slug = _SAFE.sub("_", name.lower()).strip("_")[: max_length - 9] or "t"
    if slug == name and len(name) <= max_length:
        return name
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def reflect_table(engine: Engine, name: str, schema: str | None = None) -> Table:
    """Reflect an existing table by its exact name; a missing table is a clear error."""
    check_name(name, "table name")
    if schema is not None:
        check_name(schema, "schema name")
    exact = quoted_name(name, quote=True)
    exact_schema = quoted_name(schema, quote=True) if schema is not None else None
    if not inspect(engine).has_table(exact, schema=exact_schema):
        where = f"{schema}.{name}" if schema else name
        raise InvalidIdentifierError(f"table {where!r} does not exist in the database")
    table = Table(exact, MetaData(), schema=exact_schema, autoload_with=engine)
    table.info["dialect"] = engine.dialect.name  # types are only exact within one dialect
    return table


def check_column(table: Table, column: str) -> str:
    """Ensure ``column`` is a real column of ``table`` (exact name, case included)."""
    check_name(column, "column name")
    if column not in table.c:
        raise InvalidIdentifierError(f"column {column!r} does not exist in table {table.name!r}")
    return column
