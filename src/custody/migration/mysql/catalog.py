"""What MySQL's information_schema says about the tables of one database.

Everything is read by name from the catalog (never parsed from user input), so a table or
column name reaches SQL only after it was found here, and then always quoted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text


@dataclass(frozen=True)
class MyColumn:
    """One column as MySQL declares it."""

    name: str
    data_type: str  # lower case: int, varchar, enum, datetime, ...
    column_type: str  # as declared: "int(10) unsigned", "enum('a','B')", "tinyint(1)"
    nullable: bool
    default: str | None  # as information_schema shows it: 'lit' quoted, expressions bare
    extra: str
    charset: str | None
    collation: str | None
    precision: int | None
    scale: int | None
    datetime_precision: int | None
    max_length: int | None
    is_json: bool = False

    @property
    def unsigned(self) -> bool:
        """Declared UNSIGNED."""
        return "unsigned" in self.column_type.lower()

    @property
    def auto_increment(self) -> bool:
        """Declared AUTO_INCREMENT."""
        return "auto_increment" in self.extra

    @property
    def labels(self) -> list[str]:
        """The values of an ENUM or SET, in declaration order."""
        inner = self.column_type[self.column_type.index("(") + 1 : self.column_type.rindex(")")]
        return [v.replace("''", "'").replace("\\\\", "\\") for v in _QUOTED.findall(inner)]


_QUOTED = re.compile(r"'((?:[^']|'')*)'")


@dataclass(frozen=True)
class MyIndex:
    """An index: PRIMARY, UNIQUE, plain, FULLTEXT or SPATIAL."""

    name: str
    unique: bool
    kind: str  # BTREE, HASH, FULLTEXT, SPATIAL
    columns: tuple[str, ...]
    prefix: bool  # some column indexed by a prefix only (PostgreSQL indexes the whole value)


@dataclass(frozen=True)
class MyForeignKey:
    """A foreign key with its actions."""

    name: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str
    on_update: str


@dataclass(frozen=True)
class MyTable:
    """One base table: columns in order, indexes, foreign keys, engine, AUTO_INCREMENT."""

    name: str
    engine: str
    columns: tuple[MyColumn, ...]
    indexes: tuple[MyIndex, ...]
    foreign_keys: tuple[MyForeignKey, ...]
    auto_increment: int | None
    estimated_rows: int
    triggers: tuple[str, ...] = field(default=())

    @property
    def primary_key(self) -> tuple[str, ...]:
        """Columns of the PRIMARY KEY (empty when there is none)."""
        return next((i.columns for i in self.indexes if i.name == "PRIMARY"), ())

    def column(self, name: str) -> MyColumn:
        """The column called ``name``."""
        return next(c for c in self.columns if c.name == name)


def database_of(connection: Connection) -> str:
    """The database the connection uses (the URL's)."""
    name = connection.execute(text("SELECT DATABASE()")).scalar()
    if not name:
        from custody.errors import ConfigError

        raise ConfigError("the MySQL connection URL must name a database (mysql://host/db)")
    return str(name)


def list_tables(engine: Engine) -> list[str]:
    """Base tables of the connection's database (views are not tables)."""
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        )
        return [r[0] for r in rows]


def other_objects(engine: Engine) -> list[tuple[str, str]]:
    """Views, triggers, procedures, functions and events: (kind, name), not migrated as data."""
    queries = [
        ("view", "SELECT table_name FROM information_schema.views WHERE table_schema = DATABASE()"),
        (
            "trigger",
            "SELECT trigger_name FROM information_schema.triggers "
            "WHERE trigger_schema = DATABASE()",
        ),
        (
            "routine",
            "SELECT CONCAT(LOWER(routine_type), ' ', routine_name) FROM "
            "information_schema.routines WHERE routine_schema = DATABASE()",
        ),
        (
            "event",
            "SELECT event_name FROM information_schema.events WHERE event_schema = DATABASE()",
        ),
    ]
    found: list[tuple[str, str]] = []
    with engine.connect() as c:
        for kind, query in queries:
            found += [(kind, str(r[0])) for r in c.execute(text(query))]
    return sorted(found)


def describe_table(engine: Engine, name: str) -> MyTable:
    """Columns, indexes, foreign keys, engine and AUTO_INCREMENT of one base table."""
    with engine.connect() as c:
        meta = c.execute(
            text(
                "SELECT engine, auto_increment, table_rows FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = :t AND table_type = 'BASE TABLE'"
            ),
            {"t": name},
        ).first()
        if meta is None:
            from custody.errors import InvalidIdentifierError

            raise InvalidIdentifierError(f"table {name!r} does not exist in the source database")
        json_columns = {
            str(r[0])
            for r in c.execute(
                text(
                    "SELECT constraint_name FROM information_schema.check_constraints "
                    "WHERE constraint_schema = DATABASE() AND table_name = :t "
                    "AND check_clause = CONCAT('json_valid(`', constraint_name, '`)')"
                ),
                {"t": name},
            )
        }
        columns = tuple(
            MyColumn(
                name=r.column_name,
                data_type=r.data_type.lower(),
                column_type=r.column_type,
                nullable=r.is_nullable == "YES",
                default=None if r.column_default in (None, "NULL") else str(r.column_default),
                extra=(r.extra or "").lower(),
                charset=r.character_set_name,
                collation=r.collation_name,
                precision=r.numeric_precision,
                scale=r.numeric_scale,
                datetime_precision=r.datetime_precision,
                max_length=r.character_maximum_length,
                is_json=r.column_name in json_columns,
            )
            for r in c.execute(
                text(
                    "SELECT column_name, data_type, column_type, is_nullable, column_default, "
                    "extra, character_set_name, collation_name, numeric_precision, "
                    "numeric_scale, datetime_precision, character_maximum_length "
                    "FROM information_schema.columns WHERE table_schema = DATABASE() "
                    "AND table_name = :t ORDER BY ordinal_position"
                ),
                {"t": name},
            )
        )
        index_rows = c.execute(
            text(
                "SELECT index_name, non_unique, index_type, column_name, sub_part "
                "FROM information_schema.statistics WHERE table_schema = DATABASE() "
                "AND table_name = :t ORDER BY index_name = 'PRIMARY' DESC, index_name, "
                "seq_in_index"
            ),
            {"t": name},
        ).all()
        fk_rows = c.execute(
            text(
                "SELECT k.constraint_name, k.column_name, k.referenced_table_name, "
                "k.referenced_column_name, r.delete_rule, r.update_rule "
                "FROM information_schema.key_column_usage k "
                "JOIN information_schema.referential_constraints r "
                "ON r.constraint_schema = k.constraint_schema "
                "AND r.constraint_name = k.constraint_name AND r.table_name = k.table_name "
                "WHERE k.table_schema = DATABASE() AND k.table_name = :t "
                "AND k.referenced_table_name IS NOT NULL "
                "ORDER BY k.constraint_name, k.ordinal_position"
            ),
            {"t": name},
        ).all()
        triggers = tuple(
            str(r[0])
            for r in c.execute(
                text(
                    "SELECT trigger_name FROM information_schema.triggers "
                    "WHERE trigger_schema = DATABASE() AND event_object_table = :t"
                ),
                {"t": name},
            )
        )
    return MyTable(
        name=name,
        engine=str(meta.engine or ""),
        columns=columns,
        indexes=_indexes(index_rows),
        foreign_keys=_foreign_keys(fk_rows),
        auto_increment=None if meta.auto_increment is None else int(meta.auto_increment),
        estimated_rows=int(meta.table_rows or 0),
        triggers=triggers,
    )


def _indexes(rows: Sequence[Any]) -> tuple[MyIndex, ...]:
    grouped: dict[str, list[Any]] = {}
    for r in rows:
        grouped.setdefault(r.index_name, []).append(r)
    return tuple(
        MyIndex(
            name=n,
            unique=not rs[0].non_unique,
            kind=str(rs[0].index_type).upper(),
            columns=tuple(r.column_name for r in rs),
            prefix=any(r.sub_part is not None for r in rs),
        )
        for n, rs in grouped.items()
    )


def _foreign_keys(rows: Sequence[Any]) -> tuple[MyForeignKey, ...]:
    grouped: dict[str, list[Any]] = {}
    for r in rows:
        grouped.setdefault(r.constraint_name, []).append(r)
    return tuple(
        MyForeignKey(
            name=n,
            columns=tuple(r.column_name for r in rs),
            ref_table=rs[0].referenced_table_name,
            ref_columns=tuple(r.referenced_column_name for r in rs),
            on_delete=rs[0].delete_rule,
            on_update=rs[0].update_rule,
        )
        for n, rs in grouped.items()
    )
