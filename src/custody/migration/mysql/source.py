"""MySQL/MariaDB as a migration source: describe, create the target, finish it, summarise.

``tasks/migration.py`` dispatches here when the source connection is MySQL or MariaDB; the
flow, the ledger, the chunk protocol, approval and the GX gate are the same as for PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from custody.errors import CustodyError
from custody.identifiers import check_name, quote_pg
from custody.migration.catalog import TableInfo
from custody.migration.mysql.casts import CastRules
from custody.migration.mysql.catalog import describe_table, list_tables, other_objects
from custody.migration.mysql.plan import (
    CastRefusedError,
    TablePlan,
    create_statements,
    plan_table,
    prescan,
)


class MySQLSourceError(CustodyError):
    """The MySQL source cannot be migrated as asked (names what, never a value)."""


@dataclass(frozen=True)
class MySQLTableInfo(TableInfo):
    """A source table from MySQL with its cast plan (the rest is what every path needs)."""

    plan: TablePlan | None = None
    not_migrated_objects: tuple[str, ...] = ()


def describe_mysql_tables(
    engine: Engine, schema: str, tables: list[str], rules: CastRules
) -> list[MySQLTableInfo]:
    """Describe and plan the tables (all base tables when none are named) under ``rules``.

    Reads each table once for the checked rules (zero dates, tinyint(1) values, TIME ranges).
    """
    check_name(schema, "schema name")
    available = list_tables(engine)
    wanted = tables or available
    for name in wanted:
        if name not in available:
            raise MySQLSourceError(f"table {name!r} is not a base table of the source database")
    for key in rules.overrides:
        table, _, column = key.partition(".")
        if table not in available or not column:
            raise CastRefusedError(f"cast override {key!r}: no such table.column in the source")
    migrated = set(wanted)
    objects = tuple(f"{kind} {name}" for kind, name in other_objects(engine))
    infos: list[MySQLTableInfo] = []
    for name in wanted:
        described = describe_table(engine, name)
        for key in rules.overrides:
            t, _, col = key.partition(".")
            if t == name and col not in {c.name for c in described.columns}:
                raise CastRefusedError(f"cast override {key!r}: no such column in the source")
        plan = plan_table(described, schema, rules, prescan(engine, described), migrated)
        infos.append(
            MySQLTableInfo(
                schema=schema,
                name=name,
                columns=tuple(c.name for c in plan.columns),
                key_column=plan.key_column,
                binary_safe=False,
                not_null=tuple(c.name for c in plan.columns if not c.nullable),
                primary_key=plan.primary_key,
                estimated_rows=described.estimated_rows,
                plan=plan,
                not_migrated_objects=objects,
            )
        )
    return infos


def _plans(infos: list[TableInfo]) -> list[TablePlan]:
    return [i.plan for i in infos if isinstance(i, MySQLTableInfo) and i.plan is not None]


def create_target_tables(
    dst: Engine, schema: str, infos: list[TableInfo], create_schema: bool
) -> str:
    """Create the enum types and tables (with primary keys) in one transaction.

    Returns 'existing' when every table is already there; refuses a partly present set.
    """
    plans = _plans(infos)
    with dst.begin() as c:
        present = {
            r[0]
            for r in c.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = :s AND tablename = ANY(:t)"
                ),
                {"s": schema, "t": [p.table for p in plans]},
            )
        }
        if len(present) == len(plans):
            return "existing"
        if present:
            raise MySQLSourceError(
                f"target schema {schema!r} has some of the tables but not "
                f"{sorted({p.table for p in plans} - present)}: migrate into an empty schema"
            )
        if not create_schema:
            raise MySQLSourceError("target has none of the tables and create_schema is off")
        c.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_pg(schema)}")
        for plan in plans:
            for statement in create_statements(plan):
                c.exec_driver_sql(statement)
    return "created"


def finalize_target(dst: Engine, infos: list[TableInfo]) -> dict[str, int]:
    """Indexes, identity restarts, then foreign keys: after every chunk is verified."""
    plans = _plans(infos)
    indexes = sequences = fks = 0
    with dst.begin() as c:
        for plan in plans:
            for statement in plan.post_data:
                if statement.startswith("ALTER TABLE") and "RESTART WITH" in statement:
                    sequences += 1
                else:
                    indexes += 1
                c.exec_driver_sql(_if_absent(statement))
        for plan in plans:
            for statement in plan.foreign_keys:
                c.exec_driver_sql(_drop_first(statement))
                fks += 1
    return {"indexes": indexes, "sequences": sequences, "foreign_keys": fks}


def _if_absent(statement: str) -> str:
    """Indexes are made idempotent so a re-run's finalize does not fail on its own work."""
    for head in ("CREATE UNIQUE INDEX ", "CREATE INDEX "):
        if statement.startswith(head):
            return head + "IF NOT EXISTS " + statement[len(head) :]
    return statement


def _drop_first(statement: str) -> str:
    """``ALTER TABLE t ADD CONSTRAINT c ...`` preceded by dropping ``c`` if a re-run made it."""
    table, _, rest = statement.partition(" ADD CONSTRAINT ")
    name = rest.split(" FOREIGN KEY ", 1)[0]
    return f"{table} DROP CONSTRAINT IF EXISTS {name}, ADD CONSTRAINT {rest}"


def cast_summary(infos: list[TableInfo]) -> dict[str, Any]:
    """Rules that fired, zero dates per column and what was not migrated: names and counts only."""
    plans = _plans(infos)
    if not plans:
        return {}
    objects = next(i.not_migrated_objects for i in infos if isinstance(i, MySQLTableInfo))
    return {
        "zero_dates": {f"{p.table}.{c}": n for p in plans for c, n in p.zero_dates.items()},
        "rules": {
            f"{p.table}.{c.name}": "; ".join(c.rules) for p in plans for c in p.columns if c.rules
        },
        "not_migrated": [*objects, *[f"{p.table}: {n}" for p in plans for n in p.not_migrated]],
    }
