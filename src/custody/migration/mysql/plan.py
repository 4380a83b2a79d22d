"""Apply the cast rules to a described table: the column mapping, DDL and the rules that fire.

The plan is data (names, type names, SQL built only from catalog names, always quoted), so it
travels in the chunk work's recipe and a replayed chunk converts values exactly as its job did.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, text

from custody.errors import CustodyError
from custody.identifiers import quote_pg, safe_id
from custody.migration.mysql.casts import CastRules
from custody.migration.mysql.catalog import MyColumn, MyTable

_INT_TYPES = {"tinyint", "smallint", "mediumint", "int", "bigint"}
_DATE_TYPES = {"date", "datetime", "timestamp"}
_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
_BYTES_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
_GEOMETRY = {
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
}
_FK_ACTIONS = {"CASCADE", "SET NULL", "RESTRICT", "NO ACTION", "SET DEFAULT"}
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


class CastRefusedError(CustodyError):
    """A rule refuses the source as it is (names table, column and reason, never a value)."""


class ColumnPlan(BaseModel):
    """One column: its MySQL declaration, PostgreSQL type, and how values are read and compared."""

    model_config = ConfigDict(frozen=True)

    name: str
    source_type: str
    pg_type: str
    kind: str = Field(description="How values are converted and compared; see copy.CONVERT")
    select_sql: str = Field(description="The MySQL expression that reads the column")
    nullable: bool
    default_sql: str | None = None
    identity: bool = False
    rules: tuple[str, ...] = ()
    zero_dates: int = 0


class TablePlan(BaseModel):
    """What migrating one table means: mapping, DDL before and after the data, notes."""

    model_config = ConfigDict(frozen=True)

    table: str
    schema_name: str
    engine: str
    key_column: str | None
    columns: tuple[ColumnPlan, ...]
    primary_key: tuple[str, ...]
    enum_types: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    checks: tuple[str, ...] = ()
    post_data: tuple[str, ...] = ()
    foreign_keys: tuple[str, ...] = ()
    not_migrated: tuple[str, ...] = ()
    zero_date_where: str = ""
    order_by: tuple[str, ...] = Field(
        default=(),
        description="Integer columns that order the rows uniquely on both servers (the primary "
        "or unique key): then both sides are hashed as one ordered stream, several times "
        "cheaper than hashing every row on its own. Empty: rows are hashed one by one and summed.",
    )

    @property
    def zero_dates(self) -> dict[str, int]:
        """Zero and partial-zero dates per column (made NULL by the rule)."""
        return {c.name: c.zero_dates for c in self.columns if c.zero_dates}

    @property
    def qualified(self) -> str:
        """The target table, quoted."""
        return f"{quote_pg(self.schema_name)}.{quote_pg(self.table)}"


def quote_my(name: str) -> str:
    """MySQL's quoted form of a catalog name."""
    return "`" + name.replace("`", "``") + "`"


def zero_condition(column: str) -> str:
    """True for '0000-00-00', '2019-00-00', '2019-05-00' and year 0 ('0000-01-01')."""
    q = quote_my(column)
    return f"({q} IS NOT NULL AND (YEAR({q}) = 0 OR MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0))"


def _is_bool_column(c: MyColumn) -> bool:
    return c.column_type.lower().startswith("tinyint(1)")


def prescan(engine: Engine, table: MyTable) -> dict[str, int]:
    """One pass over the table for the checked rules: zero dates, tinyint(1) and TIME ranges."""
    probes: list[tuple[str, str]] = []
    for c in table.columns:
        q = quote_my(c.name)
        if c.data_type in _DATE_TYPES:
            probes.append((f"zero:{c.name}", f"SUM({zero_condition(c.name)})"))
        elif c.data_type == "tinyint" and _is_bool_column(c):
            probes.append((f"nonbool:{c.name}", f"SUM({q} NOT IN (0, 1))"))
        elif c.data_type == "time":
            probes.append((f"time24:{c.name}", f"SUM({q} < '00:00:00' OR {q} >= '24:00:00')"))
    if not probes:
        return {}
    query = f"SELECT {', '.join(p for _, p in probes)} FROM {quote_my(table.name)}"
    with engine.connect() as conn:
        conn.execute(text("SET time_zone = '+00:00'"))
        row = conn.execute(text(query)).one()
    return {name: int(value or 0) for (name, _), value in zip(probes, row, strict=True)}


def plan_table(
    table: MyTable, schema: str, rules: CastRules, facts: dict[str, int], migrated: set[str]
) -> TablePlan:
    """The mapping of every column and the DDL for one table under ``rules``."""
    columns: list[ColumnPlan] = []
    enum_types: dict[str, tuple[str, ...]] = {}
    checks: list[str] = []
    notes: list[str] = []
    for c in table.columns:
        override = rules.overrides.get(f"{table.name}.{c.name}")
        plan = (
            _override(c, override)
            if override
            else _column(table, c, schema, rules, facts, enum_types, checks)
        )
        default, note = _default(c, plan)
        if note:
            notes.append(note)
        if "on update" in c.extra:
            notes.append(f"column {c.name}: ON UPDATE CURRENT_TIMESTAMP (a trigger in MySQL)")
        columns.append(plan.model_copy(update={"default_sql": default}))
    pk = table.primary_key
    post, fks = _indexes(table, schema, rules, notes), _foreign_keys(table, schema, migrated, notes)
    for planned in columns:
        if planned.identity and table.auto_increment:
            post.append(
                f"ALTER TABLE {quote_pg(schema)}.{quote_pg(table.name)} ALTER COLUMN "
                f"{quote_pg(planned.name)} RESTART WITH {int(table.auto_increment)}"
            )
    notes += [f"trigger {t}" for t in table.triggers]
    zero_cols = [c.name for c in columns if c.zero_dates]
    return TablePlan(
        table=table.name,
        schema_name=schema,
        engine=table.engine,
        key_column=_chunk_key(table, columns),
        order_by=_order_by(table, columns),
        columns=tuple(columns),
        primary_key=pk,
        enum_types=enum_types,
        checks=tuple(checks),
        post_data=tuple(post),
        foreign_keys=tuple(fks),
        not_migrated=tuple(notes),
        zero_date_where=", ".join(f"SUM({zero_condition(n)})" for n in zero_cols),
    )


def _chunk_key(table: MyTable, columns: list[ColumnPlan]) -> str | None:
    """An integer column leading the primary key, or a unique NOT NULL one; else None.

    Only integer keys: MySQL and PostgreSQL order text differently (collations), so a text
    range would not select the same rows on both sides.
    """
    kinds = {c.name: c for c in columns}

    def integer(name: str) -> bool:
        c = table.column(name)
        return c.data_type in _INT_TYPES and kinds[name].kind in ("same", "u64")

    if table.primary_key and integer(table.primary_key[0]):
        return table.primary_key[0]
    for index in table.indexes:
        if index.unique and len(index.columns) == 1 and index.kind in ("BTREE", "HASH"):
            name = index.columns[0]
            if not table.column(name).nullable and integer(name):
                return name
    return None


def _column(
    table: MyTable,
    c: MyColumn,
    schema: str,
    rules: CastRules,
    facts: dict[str, int],
    enum_types: dict[str, tuple[str, ...]],
    checks: list[str],
) -> ColumnPlan:
    q = quote_my(c.name)
    t = c.data_type
    fired: list[str] = []
    kind, select, nullable = "same", q, c.nullable
    zeros = 0
    if t in _INT_TYPES:
        if t == "tinyint" and _is_bool_column(c) and not c.unsigned:
            bad = facts.get(f"nonbool:{c.name}", 0)
            if rules.tinyint1 == "boolean" or (rules.tinyint1 == "check" and bad == 0):
                pg, kind = "boolean", "bool"
                fired.append("tinyint(1) -> boolean (every value 0 or 1)")
            else:
                pg = "smallint"
                fired.append(f"tinyint(1) -> smallint ({bad} values other than 0/1)")
        else:
            pg, kind = _integer(t, c.unsigned)
            if c.unsigned and t in ("smallint", "mediumint", "int", "bigint"):
                fired.append(f"{t} unsigned widened -> {pg}")
    elif t == "decimal":
        pg = f"numeric({c.precision},{c.scale})"
    elif t == "float":
        pg, kind = "real", "float4"
    elif t == "double":
        pg = "double precision"
    elif t == "bit":
        width = c.precision or 1
        pg, kind = ("numeric(20)", "bits_u64") if width == 64 else ("bigint", "bits")
        fired.append(f"bit({width}) -> {pg} (the bits as a number)")
    elif c.is_json:
        pg, kind = "jsonb", "json"
        fired.append("json -> jsonb")
    elif t in ("char", "varchar"):
        pg = f"varchar({c.max_length})"
        if t == "char":
            fired.append("char -> varchar (MySQL returns CHAR without trailing spaces)")
    elif t in _TEXT_TYPES:
        pg = "text"
    elif t in _BYTES_TYPES:
        pg = "bytea"
    elif t == "enum":
        labels = tuple(dict.fromkeys(["", *c.labels]))
        if rules.enums == "enum_type":
            type_name = _pg_name(table.name, c.name)
            enum_types[type_name] = labels
            pg = f"{quote_pg(schema)}.{quote_pg(type_name)}"
            fired.append(f"enum -> enum type {type_name} ('' kept)")
        else:
            pg = "text"
            allowed = ", ".join(_pg_literal(v) for v in labels)
            checks.append(f"CHECK ({quote_pg(c.name)} IN ({allowed}))")
            fired.append("enum -> text + CHECK ('' kept)")
    elif t == "set":
        pg, kind = "text[]", "set"
        fired.append("set -> text[]")
    elif t == "year":
        pg = "smallint"
        fired.append("year -> smallint")
    elif t in _DATE_TYPES:
        p = c.datetime_precision or 0
        pg = {"date": "date", "datetime": f"timestamp({p})", "timestamp": f"timestamptz({p})"}[t]
        kind = "tstz" if t == "timestamp" else "same"
        zeros = facts.get(f"zero:{c.name}", 0)
        if zeros and rules.zero_dates == "fail":
            raise CastRefusedError(
                f"table {table.name!r} column {c.name!r}: {zeros} zero or partial-zero dates, "
                "and the zero_dates rule is 'fail'"
            )
        select = f"CASE WHEN {zero_condition(c.name)} THEN NULL ELSE {q} END"
        if zeros:
            fired.append(f"{zeros} zero/partial-zero dates -> NULL")
            if not nullable:
                nullable = True
                fired.append("NOT NULL dropped (zero dates became NULL)")
    elif t == "time":
        p = c.datetime_precision or 0
        over = facts.get(f"time24:{c.name}", 0)
        if rules.time_columns == "interval" or (rules.time_columns == "check" and over):
            pg, kind = f"interval({p})" if p else "interval", "interval"
            fired.append(f"time -> interval ({over} values negative or >= 24h)")
        else:
            pg, kind = f"time({p})", "time"
    elif t in _GEOMETRY:
        pg, select = "bytea", f"ST_AsBinary({q})"
        fired.append(f"{t} -> bytea (WKB)")
    else:
        raise CastRefusedError(
            f"table {table.name!r} column {c.name!r}: no cast rule for MySQL type {t!r}; "
            "set an override for it"
        )
    if c.collation and c.collation.endswith("_bin") and pg.startswith(("varchar", "text")):
        pg += ' COLLATE "C"'
        fired.append('binary collation -> COLLATE "C"')
    identity = c.auto_increment and pg in ("smallint", "integer", "bigint")
    if c.auto_increment:
        fired.append("AUTO_INCREMENT -> identity" if identity else "AUTO_INCREMENT dropped")
    return ColumnPlan(
        name=c.name,
        source_type=c.column_type,
        pg_type=pg,
        kind=kind,
        select_sql=select,
        nullable=nullable,
        identity=identity,
        rules=tuple(fired),
        zero_dates=zeros,
    )


def _order_by(table: MyTable, columns: list[ColumnPlan]) -> tuple[str, ...]:
    """A unique, NOT NULL, all-integer key: the same row order in MySQL and PostgreSQL."""
    kinds = {c.name: c.kind for c in columns}

    def integers(names: tuple[str, ...]) -> bool:
        return all(
            table.column(n).data_type in _INT_TYPES
            and kinds[n] in ("same", "u64")
            and not table.column(n).nullable
            for n in names
        )

    for index in table.indexes:
        unique = index.unique and index.kind in ("BTREE", "HASH") and not index.prefix
        if unique and integers(index.columns):
            return index.columns
    return ()


def _integer(t: str, unsigned: bool) -> tuple[str, str]:
    if t == "tinyint" or (t == "smallint" and not unsigned):
        return "smallint", "same"
    if t in ("smallint", "mediumint") or (t == "int" and not unsigned):
        return "integer", "same"
    if t == "int" or not unsigned:
        return "bigint", "same"
    return "numeric(20)", "u64"


_OVERRIDE_SELECT = {
    "text": "CAST({q} AS CHAR)",
    "bytea": "CAST({q} AS BINARY)",
    "boolean": "({q} <> 0)",
}
_OVERRIDE_KIND = {
    "text": "str",
    "bytea": "same",
    "boolean": "bool",
    "smallint": "int",
    "integer": "int",
    "bigint": "int",
    "numeric": "dec",
    "double precision": "float8",
    "date": "same",
    "timestamp": "same",
    "timestamptz": "tstz",
    "interval": "interval",
    "jsonb": "json",
}


def _override(c: MyColumn, pg: str) -> ColumnPlan:
    q = quote_my(c.name)
    select = _OVERRIDE_SELECT.get(pg, "{q}").format(q=q)
    if c.data_type in _DATE_TYPES and pg not in ("text", "bytea"):
        select = f"CASE WHEN {zero_condition(c.name)} THEN NULL ELSE {q} END"
    return ColumnPlan(
        name=c.name,
        source_type=c.column_type,
        pg_type=pg,
        kind=_OVERRIDE_KIND[pg],
        select_sql=select,
        nullable=True,
        rules=(f"override -> {pg}",),
    )


def _pg_name(table: str, column: str) -> str:
    name = f"{table}_{column}"
    if len(name.encode()) <= 63:
        return name
    return f"{safe_id(table, 28)}_{safe_id(column, 28)}"


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_NOW = re.compile(r"^(current_timestamp|now|localtimestamp|localtime)(\(\d*\))?$")


def _default(c: MyColumn, plan: ColumnPlan) -> tuple[str | None, str | None]:
    """PostgreSQL's DEFAULT for the column, or a note saying why it is left out."""
    d = c.default
    if d is None or plan.identity or plan.kind in ("str", "dec", "int", "float8"):
        return None, None
    lowered = d.lower()
    if _NOW.match(lowered):
        return "CURRENT_TIMESTAMP", None
    if lowered in ("curdate()", "current_date", "current_date()"):
        return "CURRENT_DATE", None
    if lowered in ("curtime()", "current_time", "current_time()"):
        return "LOCALTIME", None
    if d.startswith("'") and d.endswith("'") and len(d) >= 2:
        value = d[1:-1].replace("''", "'").replace("\\\\", "\\")
        if plan.kind == "set":
            items = [v for v in value.split(",") if v]
            return "ARRAY[" + ", ".join(_pg_literal(v) for v in items) + "]::text[]", None
        if c.data_type in _DATE_TYPES and value.startswith("0000"):
            return None, f"column {c.name}: zero-date default dropped"
        if plan.kind == "bool":
            return ("true" if value not in ("0", "") else "false"), None
        return _pg_literal(value), None
    if _NUMBER.match(d):
        if plan.kind == "bool":
            return ("false" if float(d) == 0 else "true"), None
        return d, None
    return None, f"column {c.name}: default expression not translated"


def _index_name(table: str, index: str) -> str:
    return _pg_name(table, index)


def _indexes(table: MyTable, schema: str, rules: CastRules, notes: list[str]) -> list[str]:
    out: list[str] = []
    target = f"{quote_pg(schema)}.{quote_pg(table.name)}"
    for index in table.indexes:
        if index.name == "PRIMARY":
            continue
        name = quote_pg(_index_name(table.name, index.name))
        cols = ", ".join(quote_pg(col) for col in index.columns)
        if index.kind == "FULLTEXT":
            if rules.fulltext == "skip":
                notes.append(f"FULLTEXT index {index.name}")
                continue
            doc = " || ' ' || ".join(f"coalesce({quote_pg(col)}, '')" for col in index.columns)
            out.append(
                f"CREATE INDEX {name} ON {target} USING gin "
                f"(to_tsvector('simple'::regconfig, {doc}))"
            )
        elif index.kind == "SPATIAL":
            notes.append(f"SPATIAL index {index.name}")
        else:
            unique = "UNIQUE " if index.unique else ""
            out.append(f"CREATE {unique}INDEX {name} ON {target} ({cols})")
            if index.prefix:
                notes.append(f"index {index.name}: prefix length dropped (whole values indexed)")
    return out


def _foreign_keys(table: MyTable, schema: str, migrated: set[str], notes: list[str]) -> list[str]:
    out: list[str] = []
    for fk in table.foreign_keys:
        if fk.ref_table not in migrated or not {fk.on_delete, fk.on_update} <= _FK_ACTIONS:
            notes.append(f"foreign key {fk.name} (references a table not migrated)")
            continue
        out.append(
            f"ALTER TABLE {quote_pg(schema)}.{quote_pg(table.name)} ADD CONSTRAINT "
            f"{quote_pg(fk.name)} FOREIGN KEY ({', '.join(quote_pg(c) for c in fk.columns)}) "
            f"REFERENCES {quote_pg(schema)}.{quote_pg(fk.ref_table)} "
            f"({', '.join(quote_pg(c) for c in fk.ref_columns)}) "
            f"ON DELETE {fk.on_delete} ON UPDATE {fk.on_update}"
        )
    return out


def create_statements(plan: TablePlan) -> list[str]:
    """Enum types and the table (primary key included), before the data."""
    out = [
        f"CREATE TYPE {quote_pg(plan.schema_name)}.{quote_pg(name)} AS ENUM "
        f"({', '.join(_pg_literal(v) for v in labels)})"
        for name, labels in plan.enum_types.items()
    ]
    parts: list[str] = []
    for c in plan.columns:
        col = f"{quote_pg(c.name)} {c.pg_type}"
        if c.identity:
            col += " GENERATED BY DEFAULT AS IDENTITY"
        if c.default_sql is not None:
            col += f" DEFAULT {c.default_sql}"
        if not c.nullable:
            col += " NOT NULL"
        parts.append(col)
    if plan.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(quote_pg(c) for c in plan.primary_key)})")
    parts += list(plan.checks)
    out.append(f"CREATE TABLE {plan.qualified} (\n  " + ",\n  ".join(parts) + "\n)")
    return out


def mapping_rows(plan: TablePlan) -> list[dict[str, Any]]:
    """The column mapping as rows for the dry-run plan and the report (names and types only)."""
    return [
        {
            "table": plan.table,
            "column": c.name,
            "mysql": c.source_type,
            "postgresql": c.pg_type,
            "rules": "; ".join(c.rules),
        }
        for c in plan.columns
    ]
