"""What must be true of a table before any of its rows may be archived, and what to do about it.

Checked before anything is written, and again by every batch (the table may have changed since):
a refusal names the table and the reason, and leaves everything as it was.

- An inheritance parent is archived with ``ONLY`` (its children are tables of their own, with
  columns the parent lacks); a partitioned table is archived through its partitions.
- Foreign keys from other tables with ``ON DELETE CASCADE / SET NULL / SET DEFAULT`` would change
  rows nothing verifies: refused, unless the referencing table is archived by the same run, in
  which case each batch checks, with its rows locked, that no row references them any more.
- User triggers on INSERT or DELETE would change other rows, or the rows themselves, on the way
  out or back: they are disabled inside the archive's delete and the restore's insert
  transaction, which needs ownership of the table; without it the table is refused.
- Rules on INSERT or DELETE rewrite the statements that move the rows: refused.
- Every column must have an exact archived form (see ``custody.archive.columns``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from custody.archive.columns import ArchiveColumn, ColumnRefusedError, archive_columns
from custody.errors import CustodyError

_INSERT, _DELETE = 4, 8  # pg_trigger.tgtype bits


class ArchiveRefusedError(CustodyError):
    """The table cannot be archived and restored exactly as asked; nothing was touched."""


@dataclass(frozen=True)
class Trigger:
    """A user trigger to switch off while rows move, and the mode to switch it back to."""

    schema: str
    table: str
    name: str
    enabled: str  # pg_trigger.tgenabled: O (origin), A (always), R (replica)


@dataclass(frozen=True)
class ReferenceGuard:
    """A foreign key whose ON DELETE action a batch must prove has nothing to act on."""

    schema: str
    table: str
    columns: tuple[str, ...]
    referenced: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveTable:
    """The facts a batch and a restore act on."""

    schema: str
    name: str
    relkind: str
    key_column: str
    columns: tuple[ArchiveColumn, ...]
    triggers: tuple[Trigger, ...] = ()
    guards: tuple[ReferenceGuard, ...] = ()

    @property
    def source(self) -> sql.Composable:
        """The table in FROM/DELETE: ``ONLY`` for plain tables, so children keep their rows."""
        ref = sql.Identifier(self.schema, self.name)
        return sql.SQL("ONLY {t}").format(t=ref) if self.relkind == "r" else ref


def table_oid(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[int, str]:
    """The table's OID and relkind (refused: not a table of the schema)."""
    row = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, table),
    ).fetchone()
    if row is None or row[1] not in ("r", "p"):
        raise ArchiveRefusedError(f"table {table!r} is not a table of schema {schema!r}")
    return int(row[0]), str(row[1])


def inspect_table(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    time_column: str,
    archived_together: tuple[str, ...] = (),
) -> ArchiveTable:
    """Check the table and gather what moving its rows needs (read-only).

    Args:
        conn: A connection (any transaction state; the search path is pinned inside).
        schema: The table's schema.
        table: The table.
        time_column: The policy's timestamp column.
        archived_together: Other tables of the same schema archived by the same run.

    Raises:
        ArchiveRefusedError: naming the table and the reason.
    """
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog")
        relid, relkind = table_oid(conn, schema, table)
        key = _key_column(conn, relid, schema, table)
        _check_time_column(conn, relid, table, time_column)
        try:
            columns = tuple(archive_columns(conn, relid, table))
        except ColumnRefusedError as exc:
            raise ArchiveRefusedError(str(exc)) from None
        _check_rules(conn, relid, table)
        guards = _reference_guards(conn, relid, table, archived_together)
        triggers = user_triggers(conn, relid, table)
    return ArchiveTable(schema, table, relkind, key, columns, triggers, guards)


def _key_column(conn: psycopg.Connection[Any], relid: int, schema: str, table: str) -> str:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary",
        (relid,),
    ).fetchall()
    if len(rows) != 1:
        raise ArchiveRefusedError(
            f"table {table!r} needs a single-column primary key to be archived in batches"
        )
    key = str(rows[0][0])
    try:
        with conn.transaction():  # the key drives keyset batches: it needs a total order
            conn.execute(
                sql.SQL("SELECT 1 FROM {t} ORDER BY {k} LIMIT 0").format(
                    t=sql.Identifier(schema, table), k=sql.Identifier(key)
                )
            )
    except psycopg.errors.UndefinedFunction:
        raise ArchiveRefusedError(
            f"table {table!r}: primary key column {key!r} has no sort order to batch by"
        ) from None
    return key


def _check_time_column(conn: psycopg.Connection[Any], relid: int, table: str, column: str) -> None:
    kind = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s "
        "AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (relid, column),
    ).fetchone()
    if kind is None or not str(kind[0]).startswith("timestamp"):
        raise ArchiveRefusedError(
            f"column {column!r} of {table!r} must exist and be a timestamp (got "
            f"{None if kind is None else kind[0]!r})"
        )


def _check_rules(conn: psycopg.Connection[Any], relid: int, table: str) -> None:
    rules = conn.execute(
        "SELECT rulename FROM pg_rewrite WHERE ev_class = %s AND ev_type IN ('3', '4') ORDER BY 1",
        (relid,),
    ).fetchall()
    if rules:
        raise ArchiveRefusedError(
            f"table {table!r} has rules on INSERT or DELETE ({', '.join(r[0] for r in rules)}): "
            "they rewrite the statements that archive and restore its rows"
        )


def _reference_guards(
    conn: psycopg.Connection[Any], relid: int, table: str, together: tuple[str, ...]
) -> tuple[ReferenceGuard, ...]:
    """Foreign keys into the table whose ON DELETE action would change other rows."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, c.oid = %s, con.conname, "
        "  ARRAY(SELECT attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o) "
        "        JOIN pg_attribute ON attrelid = con.conrelid AND attnum = k.n ORDER BY k.o), "
        "  ARRAY(SELECT attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o) "
        "        JOIN pg_attribute ON attrelid = con.confrelid AND attnum = k.n ORDER BY k.o), "
        "  CASE con.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' "
        "       ELSE 'SET DEFAULT' END "
        "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE con.contype = 'f' AND con.confrelid = %s AND con.confdeltype IN ('c', 'n', 'd') "
        "AND con.conparentid = 0 ORDER BY 2, 4",
        (relid, relid),
    ).fetchall()
    guards = []
    for schema, child, itself, name, columns, referenced, action in rows:
        if itself or child not in together:
            raise ArchiveRefusedError(
                f"table {table!r}: foreign key {name!r} of table {child!r} is ON DELETE "
                f"{action}, so deleting archived rows would change rows of {child!r} that no "
                f"archive holds; archive {child!r} in the same run, or change the action"
            )
        guards.append(ReferenceGuard(str(schema), str(child), tuple(columns), tuple(referenced)))
    return tuple(guards)


def user_triggers(conn: psycopg.Connection[Any], relid: int, table: str) -> tuple[Trigger, ...]:
    """Enabled user triggers on INSERT or DELETE of the table (and of its partitions)."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, t.tgname, t.tgenabled, "
        "  pg_has_role(c.relowner, 'MEMBER') "
        "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE (t.tgrelid = %s OR t.tgrelid IN (SELECT relid FROM pg_partition_tree(%s))) "
        "AND NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgtype & %s <> 0 "
        "ORDER BY c.relname, t.tgname",
        (relid, relid, _INSERT | _DELETE),
    ).fetchall()
    refused = [f"{r[1]}.{r[2]}" for r in rows if not r[4]]
    if refused:
        raise ArchiveRefusedError(
            f"table {table!r} has user triggers on INSERT or DELETE ({', '.join(refused)}) that "
            "would act on archived and restored rows, and this role does not own the table, so "
            "it cannot switch them off while the rows move"
        )
    return tuple(Trigger(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows)


@contextmanager
def triggers_off(conn: psycopg.Connection[Any], triggers: tuple[Trigger, ...]) -> Iterator[None]:
    """Switch user triggers off for the body, inside the caller's transaction, then back on.

    ``ALTER TABLE`` takes the table's ACCESS EXCLUSIVE lock until the transaction ends; if the
    body fails, the transaction rolls back and the triggers were never off for anyone else.
    """
    for t in triggers:
        conn.execute(
            sql.SQL("ALTER TABLE ONLY {rel} DISABLE TRIGGER {name}").format(
                rel=sql.Identifier(t.schema, t.table), name=sql.Identifier(t.name)
            )
        )
    yield
    modes = {"O": "", "A": "ALWAYS ", "R": "REPLICA "}
    for t in triggers:
        conn.execute(
            sql.SQL("ALTER TABLE ONLY {rel} ENABLE {mode}TRIGGER {name}").format(
                rel=sql.Identifier(t.schema, t.table), mode=sql.SQL(modes.get(t.enabled, "")),
                name=sql.Identifier(t.name),
            )
        )  # fmt: skip


def check_references(
    conn: psycopg.Connection[Any], table: ArchiveTable, where: sql.Composable
) -> None:
    """Lock the batch's rows and prove no row of a guarded table references them.

    With the rows locked FOR UPDATE, no new reference can appear before the delete (a foreign
    key check takes FOR KEY SHARE on the referenced row), so the ON DELETE action has nothing
    to act on.

    Raises:
        ArchiveRefusedError: some row still references a row of the batch.
    """
    for guard in table.guards:
        found = conn.execute(
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM {child} c WHERE ({cols}) IN "
                "(SELECT {refs} FROM {src} WHERE {w} FOR UPDATE))"
            ).format(
                child=sql.Identifier(guard.schema, guard.table),
                cols=sql.SQL(", ").join(sql.Identifier("c", c) for c in guard.columns),
                refs=sql.SQL(", ").join(sql.Identifier(c) for c in guard.referenced),
                src=table.source, w=where,
            )
        ).fetchone()  # fmt: skip
        if found and found[0]:
            raise ArchiveRefusedError(
                f"table {table.name!r}: rows of {guard.table!r} still reference rows of this "
                "batch; archive them first (nothing of this batch was deleted)"
            )
