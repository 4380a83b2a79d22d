"""What the PostgreSQL catalog says about the tables to migrate."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from custody.identifiers import check_name, quote_pg

# Key types keyset chunking can compare as integers or text.
_KEY_TYPES = {"int2", "int4", "int8", "text", "varchar", "bpchar"}
_FIRST_USER_OID = 16384


@dataclass(frozen=True)
class TableInfo:
    """One table: its columns in order, chunk key, binary-COPY safety and size estimate."""

    schema: str
    name: str
    columns: tuple[str, ...]
    key_column: str | None
    binary_safe: bool
    not_null: tuple[str, ...]
    primary_key: tuple[str, ...]
    estimated_rows: int
    hash_method: str = "text"
    # A plain table with inheritance children: its own rows only (``FROM ONLY``), the children
    # are tables of their own.
    has_children: bool = False
    # Columns a pre-created target holds in a wider type: copied and compared as text.
    widened: tuple[str, ...] = ()


def list_tables(engine: Engine, schema: str) -> list[str]:
    """Ordinary and partitioned tables of a schema (partitions are reached through parents)."""
    check_name(schema, "schema name")
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
                "ORDER BY c.relname"
            ),
            {"s": schema},
        )
        return [r[0] for r in rows]


def describe_table(engine: Engine, schema: str, name: str) -> TableInfo:
    """Read columns, primary key and types of a table from the catalog."""
    check_name(schema, "schema name")
    check_name(name, "table name")
    with engine.connect() as c:
        oid = c.execute(
            text("SELECT to_regclass(format('%I.%I', CAST(:s AS text), CAST(:t AS text)))::oid"),
            {"s": schema, "t": name},
        ).scalar()
        if oid is None:
            from custody.errors import InvalidIdentifierError

            raise InvalidIdentifierError(f"table {schema}.{name} does not exist in the source")
        columns = c.execute(
            text(
                "SELECT a.attname, a.attnotnull, t.typname, t.oid, t.typtype, t.typcategory, "
                "COALESCE(et.oid, 0) AS elem_oid, COALESCE(bt.oid, 0) AS base_oid "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' "
                "LEFT JOIN pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd' "
                "WHERE a.attrelid = :oid AND a.attnum > 0 AND NOT a.attisdropped "
                "AND a.attgenerated = '' ORDER BY a.attnum"
            ),
            {"oid": oid},
        ).all()
        pk = c.execute(
            text(
                "SELECT a.attname, t.typname FROM pg_index i "
                "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE i.indrelid = :oid AND i.indisprimary ORDER BY k.ord"
            ),
            {"oid": oid},
        ).all()
        estimate = c.execute(
            text(
                "SELECT GREATEST(COALESCE(sum(c.reltuples), 0), 0)::bigint FROM pg_class c "
                "WHERE c.oid = :oid OR c.oid IN (SELECT relid FROM pg_partition_tree(:oid))"
            ),
            {"oid": oid},
        ).scalar_one()
        has_children = c.execute(
            text(
                "SELECT c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = "
                "c.oid) FROM pg_class c WHERE c.oid = :oid"
            ),
            {"oid": oid},
        ).scalar_one()
        hashable = _record_hashable(c, schema, name)
    key = next((col for col, typ in pk if typ in _KEY_TYPES), None)
    return TableInfo(
        schema=schema,
        name=name,
        columns=tuple(r.attname for r in columns),
        key_column=key,
        binary_safe=all(_binary_safe(r) for r in columns),
        not_null=tuple(r.attname for r in columns if r.attnotnull),
        primary_key=tuple(col for col, _ in pk),
        estimated_rows=int(estimate),
        hash_method="record" if hashable else "text",
        has_children=bool(has_children),
    )


def _record_hashable(connection: Connection, schema: str, name: str) -> bool:
    """Whether hash_record_extended works for this table's row type (every column hashable)."""
    probe = text(
        "SELECT hash_record_extended(t, 0) FROM "
        f"(SELECT * FROM ONLY {quote_pg(schema)}.{quote_pg(name)} LIMIT 1) t"
    )
    try:
        with connection.begin_nested():
            connection.execute(probe).all()
    except DBAPIError:
        return False
    return True


def _binary_safe(row: object) -> bool:
    """Binary COPY carries type OIDs inside arrays and composites; user types differ per DB."""
    oid, typtype, category = row.oid, row.typtype, row.typcategory  # type: ignore[attr-defined]
    if oid < _FIRST_USER_OID or typtype == "e":
        return True
    if typtype == "d":
        return bool(0 < row.base_oid < _FIRST_USER_OID)  # type: ignore[attr-defined]
    if category == "A":
        return bool(0 < row.elem_oid < _FIRST_USER_OID)  # type: ignore[attr-defined]
    return False
