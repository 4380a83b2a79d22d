"""Table checks that PostgreSQL's own constraints already prove, read from the catalog.

A valid unique index and a ``NOT NULL`` column are enforced by the server for every row the
table holds: asking GX to scan the table again for duplicate keys or NULLs can only find what
the server has already refused. On a migrated table of a million rows that scan (GX's unique
metric: a ``NOT IN`` over a ``GROUP BY`` of the key) was the largest part of the gate's time,
right after the primary key build had checked exactly the same thing.

Only constraints that hold for every row count as proof: a unique index must be valid, live,
immediate, not partial, on plain columns only, and its columns a subset of the checked key,
whose columns must all be proven NOT NULL themselves (a unique index lets NULLs repeat), and
the table must not be an inheritance parent (its index does not cover its children's rows,
which the gate counts; a partitioned table's does). The table is found by its exact, quoted
name; anything not proven is left to GX.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class ConstraintProof:
    """Which checks of one table the catalog proves, and by what (names for the report)."""

    not_null: frozenset[str]
    unique_key_index: str | None


_NOT_NULL = text(
    "SELECT a.attname FROM pg_catalog.pg_attribute a "
    "WHERE a.attrelid = CAST(:rel AS pg_catalog.regclass) AND a.attnum > 0 "
    "AND NOT a.attisdropped AND a.attnotnull"
)
# Unique indexes whose every key is a plain column (indkey 0 marks an expression), with the
# names of those columns, valid for every row (no predicate, built, live, checked at once).
_UNIQUE = text(
    "SELECT c.relname, pg_catalog.array_agg(a.attname ORDER BY a.attname) "
    "FROM pg_catalog.pg_index i "
    "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid "
    "AND a.attnum = ANY (i.indkey[0:i.indnkeyatts - 1]) "
    "WHERE i.indrelid = CAST(:rel AS pg_catalog.regclass) AND i.indisunique AND i.indisvalid "
    "AND i.indislive AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL "
    "AND NOT (0 = ANY (i.indkey[0:i.indnkeyatts - 1])) "
    # A partitioned table's unique index covers its partitions; an inheritance parent's covers
    # its own rows only, and the gate reads its children's rows too.
    "AND ((SELECT t.relkind FROM pg_catalog.pg_class t WHERE t.oid = i.indrelid) = 'p' "
    "OR NOT EXISTS ("
    "SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhparent = i.indrelid)) "
    "GROUP BY c.relname ORDER BY c.relname"
)


def proven_by_constraints(
    connection: Connection, qualified: str, unique_key: tuple[str, ...]
) -> ConstraintProof:
    """What the catalog proves about the table ``qualified`` (a quoted ``schema.table``).

    Args:
        connection: a connection to the database holding the table.
        qualified: the table's quoted, schema-qualified name.
        unique_key: the columns that must be unique together (empty: nothing to prove).
    """
    params = {"rel": qualified}
    not_null = frozenset(connection.execute(_NOT_NULL, params).scalars())
    index = None
    if unique_key and set(unique_key) <= not_null:
        for name, columns in connection.execute(_UNIQUE, params):
            if columns and set(columns) <= set(unique_key):
                index = str(name)
                break
    return ConstraintProof(not_null=not_null, unique_key_index=index)
