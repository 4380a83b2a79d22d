"""Bring archived rows back: prove the object, load it, prove the table now holds exactly it.

Everything the proof needs comes from the manifest row written when the object was verified:
the hash method, the columns with their types and canonical forms, and the canonical hash. The
live table is only the destination (it may be empty): its columns must still be the archived
ones, or nothing is restored. Everything happens in one transaction, so a failed restore
leaves the table as it was, and its error names the archive, the object and the reason.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from custody.archive import manifest
from custody.archive.arrow_io import write_arrow
from custody.archive.checks import (
    ArchiveRefusedError,
    ArchiveTable,
    table_oid,
    triggers_off,
    user_triggers,
)
from custody.archive.columns import (
    HASH_METHOD,
    SESSION_SETTINGS,
    ArchiveColumn,
    ColumnRefusedError,
    archive_columns,
    fingerprint,
)
from custody.archive.generic import ArchiveRestoreError
from custody.archive.work import (
    ArchiveVerificationError,
    load_into_temp,
    manifest_columns,
    read_object,
)
from custody.chunks.retry import is_transient
from custody.errors import safe_error
from custody.migration.catalog import TableInfo
from custody.migration.pgcopy import fingerprint as pg_fingerprint
from custody.storage import ObjectStore

RESTORE = "custody_restore"


def restore_object(
    conn: psycopg.Connection[Any],
    store: ObjectStore,
    row: manifest.ManifestRow,
    legacy: TableInfo | None = None,
) -> int:
    """Restore one archived object into its table; returns the rows inserted (0 when present).

    Idempotent: rows whose key is already there are left alone, and the check that follows
    proves that the table holds exactly the archived rows for those keys either way.

    Raises:
        ArchiveRestoreError: the object, the table or the rows after the insert do not match the
            manifest, or the table refused the rows (named by SQLSTATE, never quoted).
    """
    where = f"archive {row.archive_id} (object {row.object_key}) was not restored into table "
    where += f"{row.table_name!r}"
    try:
        if row.hash_method is None and legacy is not None:
            return _restore_legacy(conn, legacy, row, read_object(store, row))
        if row.hash_method != HASH_METHOD:
            raise ArchiveRestoreError(
                f"{where}: its manifest row has hash method {row.hash_method!r}, not "
                f"{HASH_METHOD!r}; nothing was restored"
            )
        columns = manifest_columns(row)
        data = read_object(store, row)
        return _restore_verified(conn, row, columns, data)
    except (ArchiveVerificationError, ArchiveRefusedError) as exc:
        failed = ArchiveRestoreError(f"{where}: {exc}; nothing was restored")
    except psycopg.Error as exc:
        # The server's message quotes the rows it refused ("Failing row contains (...)"): PHI
        # that must not travel with the exception into Prefect's logs, states or persisted
        # results, not even as its __context__: raised below, outside this block.
        failed = ArchiveRestoreError(
            f"archive {row.archive_id} (object {row.object_key}): table {row.table_name} did "
            f"not take its rows back ({safe_error(exc)}); nothing was restored",
            transient=is_transient(exc),
        )
    raise failed


def _restore_verified(
    conn: psycopg.Connection[Any],
    row: manifest.ManifestRow,
    columns: list[ArchiveColumn],
    data: pa.Table,
) -> int:
    """Load, insert the missing rows and prove the table holds the archive, in one transaction."""
    expected = (row.row_count, row.content_hash)
    with conn.transaction():
        conn.execute(SESSION_SETTINGS)
        table = _destination(conn, row, columns)
        loaded = load_into_temp(conn, columns, data, RESTORE)
        if loaded != expected:
            raise ArchiveVerificationError(
                f"its {loaded[0]} rows do not hash to the manifest's canonical hash"
            )
        tmp = sql.Identifier(RESTORE)
        inserted_columns = [c for c in columns if not c.generated]  # recomputed, then checked
        names = sql.SQL(", ").join(sql.Identifier(c.name) for c in inserted_columns)
        overriding = sql.SQL(" OVERRIDING SYSTEM VALUE" if any(c.identity for c in columns) else "")
        with triggers_off(conn, table.triggers):
            inserted = conn.execute(
                sql.SQL(
                    "INSERT INTO {t} ({cols}){over} SELECT {cols} FROM {tmp} ON CONFLICT DO NOTHING"
                ).format(t=sql.Identifier(row.schema_name, row.table_name), cols=names,
                         over=overriding, tmp=tmp)
            ).rowcount  # fmt: skip
        key = sql.Identifier(row.key_column)
        present = sql.SQL("{src} t WHERE t.{k} IN (SELECT {k} FROM {tmp})").format(
            src=table.source, k=key, tmp=tmp
        )
        if fingerprint(conn, columns, present) != expected:
            raise ArchiveVerificationError(
                "after the insert the table holds other rows under its keys (rows already "
                "there that differ, or values a generated column or the table changed)"
            )
        conn.execute(
            "UPDATE custody.archive_manifest SET restored_at = now() WHERE archive_id = %s",
            (row.archive_id,),
        )
    return max(inserted, 0)


def _restore_legacy(
    conn: psycopg.Connection[Any], info: TableInfo, row: manifest.ManifestRow, data: pa.Table
) -> int:
    """An archive written before canonical hashing (no ``hash_method``): checked as it was then.

    Its content hash is ``hash_record_extended`` (or the row text) over the table's columns of
    the time, so the live table's shape stands in for the unrecorded one.
    """
    expected = (row.row_count, row.content_hash)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in info.columns)
    target = sql.Identifier(info.schema, info.name)
    with conn.transaction(), conn.cursor() as cur:
        conn.execute(SESSION_SETTINGS)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {tmp} (LIKE {t}) ON COMMIT DROP").format(
                tmp=sql.Identifier(RESTORE), t=target
            )
        )
        write_arrow(conn, data, sql.Identifier(RESTORE))
        loaded = pg_fingerprint(
            cur, sql.SQL("SELECT {c} FROM {tmp}").format(c=columns, tmp=sql.Identifier(RESTORE)),
            method=info.hash_method,
        )  # fmt: skip
        if loaded != expected:
            raise ArchiveVerificationError("its rows do not hash to the manifest's content hash")
        cur.execute(
            sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {tmp} ON CONFLICT DO NOTHING").format(
                t=target, c=columns, tmp=sql.Identifier(RESTORE)
            )
        )
        inserted = cur.rowcount
        key = sql.Identifier(row.key_column)
        present = sql.SQL("SELECT {c} FROM {t} WHERE {k} IN (SELECT {k} FROM {tmp})").format(
            c=columns, t=target, k=key, tmp=sql.Identifier(RESTORE)
        )
        if pg_fingerprint(cur, present, method=info.hash_method) != expected:
            raise ArchiveVerificationError("after the insert the table holds other rows")
        cur.execute(
            "UPDATE custody.archive_manifest SET restored_at = now() WHERE archive_id = %s",
            (row.archive_id,),
        )
    return max(inserted, 0)


def _destination(
    conn: psycopg.Connection[Any], row: manifest.ManifestRow, columns: list[ArchiveColumn]
) -> ArchiveTable:
    """The live table, refused unless its columns are still exactly the archived ones."""
    conn.execute("SET LOCAL search_path = pg_catalog")
    try:
        relid, relkind = table_oid(conn, row.schema_name, row.table_name)
        live = archive_columns(conn, relid, row.table_name)
        triggers = user_triggers(conn, relid, row.table_name)
    except ColumnRefusedError as exc:
        raise ArchiveRefusedError(str(exc)) from None
    finally:
        conn.execute("RESET search_path")
    archived = {c.name: c for c in columns}
    now = {c.name: c for c in live}
    for name in sorted(set(archived) | set(now)):
        was, is_ = archived.get(name), now.get(name)
        if was is None or is_ is None:
            state = "is new" if was is None else "is gone"
            raise ArchiveRefusedError(f"column {name!r} {state} since the archive was written")
        if (was.pg_type, was.generated) != (is_.pg_type, is_.generated):
            raise ArchiveRefusedError(
                f"column {name!r} is now {is_.pg_type}{' generated' if is_.generated else ''}, "
                f"archived as {was.pg_type}{' generated' if was.generated else ''}"
            )
    return ArchiveTable(row.schema_name, row.table_name, relkind, row.key_column,
                        tuple(columns), triggers)  # fmt: skip
