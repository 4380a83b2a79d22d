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
    """One table: its columns in order, chunk key, binary-COPY safety and size estimate.

    ``columns`` are the ones COPY writes (not GENERATED ones: the target computes those);
    ``hash_columns`` are all of them, and ``canonical`` says per hash column how its value is
    turned into bytes that mean the same in any database (see ``canonical_form``). ``notes``
    name what is compared in a weaker sense than byte for byte (e.g. reg* by name). A text key
    with ``byte_order_key`` is compared as ``COLLATE "C"`` on both sides (the two databases'
    collations differ), so that a key range selects the same rows on each.
    """

    schema: str
    name: str
    columns: tuple[str, ...]
    key_column: str | None
    binary_safe: bool
    not_null: tuple[str, ...]
    primary_key: tuple[str, ...]
    estimated_rows: int
    hash_method: str = "text"
    hash_columns: tuple[str, ...] = ()
    canonical: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    text_key: bool = False
    byte_order_key: bool = False
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
                "SELECT a.attname, a.attnotnull, a.attgenerated, t.typname, t.oid, t.typtype, "
                "t.typcategory, COALESCE(et.oid, 0) AS elem_oid, COALESCE(bt.oid, 0) AS base_oid "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' "
                "LEFT JOIN pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd' "
                "WHERE a.attrelid = :oid AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum"
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
        forms = [canonical_form(c, int(r.oid)) for r in columns]
    key = next(((col, typ) for col, typ in pk if typ in _KEY_TYPES), None)
    stored = [r for r in columns if not r.attgenerated]
    notes = [f"{r.attname}: {note}" for r, (_, note) in zip(columns, forms, strict=True) if note]
    return TableInfo(
        schema=schema,
        name=name,
        columns=tuple(r.attname for r in stored),
        key_column=key[0] if key else None,
        binary_safe=all(_binary_safe(r) for r in stored),
        not_null=tuple(r.attname for r in columns if r.attnotnull),
        primary_key=tuple(col for col, _ in pk),
        estimated_rows=int(estimate),
        hash_method="record" if hashable else "text",
        hash_columns=tuple(r.attname for r in columns),
        canonical=tuple(form for form, _ in forms),
        notes=tuple(notes),
        text_key=bool(key and key[1] not in ("int2", "int4", "int8")),
        has_children=bool(has_children),
    )


# reg* values are OIDs: a faithful copy has other OIDs, the same names.
_REG_TYPES = frozenset({
    "regproc", "regprocedure", "regoper", "regoperator", "regclass", "regtype", "regconfig",
    "regdictionary", "regnamespace", "regrole", "regcollation",
})  # fmt: skip
_TEXT_COPY = _REG_TYPES | {"xml"}
# Built-in types whose own hash function is exact (equal hash only for identical values).
_NATIVE = frozenset({
    "int2", "int4", "int8", "bool", "date", "time", "timestamp", "timestamptz", "uuid",
    "char", "bytea", "oid", "pg_lsn",
})  # fmt: skip
TEXT_FORM = "text"
NATIVE_FORM = "native"
XML_FORM = "xml"  # copied and hashed as stored (text), declaration included
STRING_FORM = "string"  # text/varchar: their bytes if both servers share an encoding, else UTF-8


def canonical_form(connection: Connection, type_oid: int) -> tuple[str, str | None]:
    """How a column of this type is fingerprinted, and a note when it is not byte for byte.

    Returns ``native`` (the type's own hash, exact for these types), ``string`` (text and
    varchar: hashed as bytes, in UTF-8 when the two servers' encodings differ), the name of a
    built-in
    binary send function (``numeric_send``: the exact value, scale included; floats keep -0 and
    NaN apart; text is sent in the client encoding, UTF8, so LATIN1 and UTF8 databases agree),
    or ``text`` (the value's text form, sent as UTF-8): for enums (by label), reg* (by
    schema-qualified name), composites, and types of extensions or other schemas, whose binary
    forms carry database-specific OIDs.
    """
    row = connection.execute(
        text(
            "SELECT t.typname, t.typtype, t.typcategory, t.typsend::regproc::text AS send, "
            "t.typelem, t.typbasetype, t.typnamespace = 'pg_catalog'::regnamespace AS builtin, "
            "format_type(t.oid, NULL) AS shown FROM pg_type t WHERE t.oid = :oid"
        ),
        {"oid": type_oid},
    ).one()
    if row.typtype == "d":  # a domain hashes as its base type
        return canonical_form(connection, int(row.typbasetype))
    if row.typtype == "e":
        return TEXT_FORM, None
    if row.builtin and row.typname in _REG_TYPES:
        return TEXT_FORM, f"{row.typname} compared by schema-qualified name, not by OID"
    if not row.builtin or row.typtype == "c" or row.send == "-":
        if row.builtin or row.typtype in ("c", "e"):
            return TEXT_FORM, None
        if row.typtype in ("r", "m") or row.typcategory == "A":
            return TEXT_FORM, None  # text form of its parts, each exact
        return TEXT_FORM, f"type {row.shown} compared by its text form"
    if row.typcategory == "A":
        element, _ = canonical_form(connection, int(row.typelem))
        return (row.send, None) if element != TEXT_FORM else (TEXT_FORM, None)
    if row.typname in _NATIVE:
        return NATIVE_FORM, None
    if row.typname == "xml":  # its output and binary forms drop an XML declaration
        return XML_FORM, None
    if row.typname in ("text", "varchar"):
        return STRING_FORM, None
    return row.send, None


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
    name = row.typname  # type: ignore[attr-defined]
    if name in _TEXT_COPY or (category == "A" and name[1:] in _TEXT_COPY):
        # reg*: binary COPY would carry the source's OIDs, text carries names; xml: its binary
        # form drops the XML declaration.
        return False
    if oid < _FIRST_USER_OID or typtype == "e":
        return True
    if typtype == "d":
        return bool(0 < row.base_oid < _FIRST_USER_OID)  # type: ignore[attr-defined]
    if category == "A":
        return bool(0 < row.elem_oid < _FIRST_USER_OID)  # type: ignore[attr-defined]
    return False


_COLLATION_KEYS = {  # pg_database column -> pg_collation column, for the database default
    "datlocprovider": "collprovider",
    "datcollate": "collcollate",
    "datctype": "collctype",
    "daticulocale": "colliculocale",
    "datlocale": "colllocale",
    "daticurules": "collicurules",
    "datcollversion": "collversion",
}
_DEFAULT_COLLATION = 100


def key_collation(engine: Engine, info: TableInfo) -> dict[str, object] | None:
    """What orders ``info``'s text key in this database (None: no text key, or no such table).

    The database default is resolved to its provider, locale and version; libc "C" and "POSIX"
    both mean byte order.
    """
    if not info.text_key or info.key_column is None:
        return None
    with engine.connect() as c:
        coll = c.execute(
            text(
                "SELECT a.attcollation FROM pg_attribute a WHERE a.attrelid = "
                "to_regclass(format('%I.%I', CAST(:s AS text), CAST(:t AS text))) "
                "AND a.attname = :k"
            ),
            {"s": info.schema, "t": info.name, "k": info.key_column},
        ).scalar()
        if coll is None:
            return None
        if int(coll) == _DEFAULT_COLLATION:
            row = c.execute(
                text("SELECT to_jsonb(d) FROM pg_database d WHERE datname = current_database()")
            ).scalar_one()
            found = {_COLLATION_KEYS[k]: v for k, v in row.items() if k in _COLLATION_KEYS}
            found["collisdeterministic"] = True
        else:
            row = c.execute(
                text("SELECT to_jsonb(c) FROM pg_collation c WHERE c.oid = :o"), {"o": coll}
            ).scalar_one()
            found = {k: v for k, v in row.items() if k in (*_COLLATION_KEYS.values(),
                                                           "collisdeterministic")}  # fmt: skip
    if found.get("collprovider") == "c" and found.get("collcollate") in ("C", "POSIX"):
        return {"bytes": True}
    return found


def needs_byte_order(source: Engine, target: Engine, info: TableInfo) -> bool:
    """Whether key ranges must compare ``COLLATE "C"`` so both sides select the same rows.

    Not when both databases order the key the same way (same provider, locale and version,
    deterministic): then the source's index serves the ranges.
    """
    if not info.text_key:
        return False
    here, there = key_collation(source, info), key_collation(target, info)
    if here is None or there is None or here != there:
        return True
    return here != {"bytes": True} and not here.get("collisdeterministic", False)
