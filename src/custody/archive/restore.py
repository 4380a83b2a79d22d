"""Bring archived rows back: verify the object, load it, prove the table now holds them."""

from __future__ import annotations

from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from custody.archive import manifest
from custody.archive.generic import ArchiveRestoreError
from custody.archive.work import ArchiveVerificationError, load_into_temp, read_object
from custody.chunks.retry import is_transient
from custody.errors import safe_error
from custody.migration.catalog import TableInfo
from custody.migration.pgcopy import fingerprint
from custody.storage import ObjectStore

RESTORE = "custody_restore"


def restore_object(
    conn: psycopg.Connection[Any], store: ObjectStore, info: TableInfo, row: manifest.ManifestRow
) -> int:
    """Restore one archived object into its table; returns the rows inserted (0 when present).

    Idempotent: rows whose key is already there are left alone, and the check that follows
    proves that the table holds exactly the archived rows for those keys either way.

    Raises:
        ArchiveVerificationError: the object, or the rows in the table, differ from the manifest.
        ArchiveRestoreError: the table refused the rows (named by SQLSTATE, never quoted).
    """
    expected = (row.row_count, row.content_hash)
    table = read_object(store, row)
    try:
        return _restore_verified(conn, info, row, table, expected)
    except psycopg.Error as exc:
        # The server's message quotes the rows it refused ("Failing row contains (...)"): PHI
        # that must not travel with the exception into Prefect's logs, states or persisted
        # results, not even as its __context__: raised below, outside this block.
        refused = ArchiveRestoreError(
            f"archive {row.archive_id}: table {info.name} did not take its rows back "
            f"({safe_error(exc)}); nothing of this archive was restored",
            transient=is_transient(exc),
        )
    raise refused


def _restore_verified(
    conn: psycopg.Connection[Any],
    info: TableInfo,
    row: manifest.ManifestRow,
    table: pa.Table,
    expected: tuple[int, str | None],
) -> int:
    """Load, insert the missing rows and prove the table holds the archive, in one transaction."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in info.columns)
    target = sql.Identifier(info.schema, info.name)
    with conn.transaction():
        loaded = load_into_temp(conn, info, table, RESTORE)
        if loaded != expected:
            raise ArchiveVerificationError(
                f"object {row.object_key} reads back as {loaded[0]} rows, not the archived rows"
            )
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {t} ({cols}) SELECT {cols} FROM {tmp} ON CONFLICT DO NOTHING"
                ).format(t=target, cols=columns, tmp=sql.Identifier(RESTORE))
            )
            inserted = cur.rowcount
            key = sql.Identifier(row.key_column)
            present = sql.SQL("SELECT {cols} FROM {t} WHERE {k} IN (SELECT {k} FROM {tmp})").format(
                cols=columns, t=target, k=key, tmp=sql.Identifier(RESTORE)
            )
            if fingerprint(cur, present, method=info.hash_method) != expected:
                raise ArchiveVerificationError(
                    f"table {info.name} holds other rows under the keys of archive {row.archive_id}"
                )
            cur.execute(
                "UPDATE custody.archive_manifest SET restored_at = now() WHERE archive_id = %s",
                (row.archive_id,),
            )
    return inserted
