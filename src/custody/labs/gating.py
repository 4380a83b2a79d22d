"""Which already-landed files the quality gate has never seen.

A file lands in its own transaction, but the GX gate runs once per flow run, after all files.
A run killed in between (or a task that landed some files and was then retried) leaves files
that a re-run skips by content hash and so would never gate. Such a file is recognisable: the
run that landed it never wrote ``lab.ingestion.completed``.
"""

from __future__ import annotations

from sqlalchemy import Engine, and_, exists, select

from custody.labs.tables import lab_files
from custody.store.tables import audit_log

_BATCH = 1_000


def ungated_files(engine: Engine, file_shas: list[str]) -> list[str]:
    """Of ``file_shas``, those landed with results by a run that never completed."""
    completed = exists().where(
        and_(
            audit_log.c.action == "lab.ingestion.completed",
            audit_log.c.correlation_id == lab_files.c.correlation_id,
        )
    )
    found: list[str] = []
    with engine.connect() as connection:
        for i in range(0, len(file_shas), _BATCH):
            query = select(lab_files.c.file_sha256).where(
                lab_files.c.file_sha256.in_(file_shas[i : i + _BATCH]),
                lab_files.c.status == "ingested",
                lab_files.c.results > 0,
                ~completed,
            )
            found.extend(connection.execute(query).scalars())
    return sorted(found)
