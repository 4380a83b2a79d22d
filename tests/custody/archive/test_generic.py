"""The SQLite archive path at the points where a crash or a bad byte would hurt (no Prefect)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text

from custody.archive import generic
from custody.archive.work import (
    ArchiveRangeWork,
    ArchiveTarget,
    ArchiveVerificationError,
    read_object,
)
from custody.chunks.models import Chunk
from custody.db import get_engine
from custody.fingerprint import Fingerprint
from custody.migration.generic import describe_table_generic
from custody.storage import LockMode, open_store
from custody.synth import write_ehr

CUTOFF = dt.datetime(2025, 11, 1, tzinfo=dt.UTC)
OLD = "accessed_at < '2025-11-01T00:00:00.000000Z'"  # custody's UTCDateTime text sorts as time


def digest(engine: Engine, where: str = "1 = 1") -> tuple[int, str]:
    fingerprint = Fingerprint()
    with engine.connect() as conn:
        fingerprint.add_all(conn.execute(text(f"SELECT * FROM access_log WHERE {where}")))
    return fingerprint.count, fingerprint.hexdigest


@pytest.fixture
def ehr(tmp_path: Path) -> Engine:
    engine = get_engine(f"sqlite:///{tmp_path / 'ehr.db'}")
    write_ehr(engine, patients_n=20, results_per_patient=10, accesses_per_patient=10)
    generic.ensure_manifest(engine)
    return engine


@pytest.fixture
def work(ehr: Engine, tmp_path: Path) -> ArchiveRangeWork:
    return ArchiveRangeWork(
        database="ehr", policy="access_log", info=describe_table_generic(ehr, "access_log"),
        time_column="accessed_at", cutoff=CUTOFF, classification="phi", regulation="HIPAA",
        target=ArchiveTarget((tmp_path / "objects").as_uri(), "archive", LockMode.NONE, 2190),
    )  # fmt: skip


CHUNK = Chunk(job_id="j1", chunk_no=0, lower=None, upper=None)


def manifest_status(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(generic.manifest_table.c.status)).scalars())


class Crash(Exception):
    """Stands in for the process dying at that point."""


def test_a_crash_before_the_manifest_row_reuses_the_object(
    ehr: Engine, work: ArchiveRangeWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    eligible = digest(ehr, OLD)
    with monkeypatch.context() as m:
        m.setattr(generic, "insert_manifest", lambda *a: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            generic.archive_range(work, ehr, CHUNK)
    assert digest(ehr, OLD) == eligible and manifest_status(ehr) == []
    store = open_store(work.target.store_url)
    [orphan] = list(store.list("archive"))
    puts: list[str] = []
    monkeypatch.setattr(type(store), "put", lambda self, key, *a, **k: puts.append(key))

    outcome = generic.archive_range(work, ehr, CHUNK)

    assert puts == []  # the object already there, same SHA-256, is the batch's object
    assert outcome.verified and outcome.source_count == eligible[0]
    assert outcome.details["object_key"] == orphan.key
    assert digest(ehr, OLD) == (0, "0000000000000000") and manifest_status(ehr) == ["verified"]


def test_rows_changed_after_the_upload_are_not_deleted_then_archived_as_they_are(
    ehr: Engine, work: ArchiveRangeWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # dies after upload and manifest, before the delete
        m.setattr(generic, "_verify_and_delete", lambda *a: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            generic.archive_range(work, ehr, CHUNK)
    assert manifest_status(ehr) == ["uploaded"]
    with ehr.begin() as conn:  # the application corrects an old row meanwhile
        first = conn.execute(text(f"SELECT min(access_id) FROM access_log WHERE {OLD}")).scalar()
        conn.execute(
            text("UPDATE access_log SET workstation = 'ws-moved' WHERE access_id = :k"),
            {"k": first},
        )
    changed = digest(ehr, OLD)

    with pytest.raises(ArchiveVerificationError, match="differ from the object"):
        generic.archive_range(work, ehr, CHUNK)
    assert digest(ehr, OLD) == changed and manifest_status(ehr) == ["corrupt"]  # nothing lost

    outcome = generic.archive_range(work, ehr, CHUNK)  # uploads afresh, with the correction
    assert outcome.verified and manifest_status(ehr) == ["verified"]
    [row] = generic.find_manifest(ehr, table="access_log")
    assert (row.row_count, row.content_hash) == changed
    assert digest(ehr, OLD)[0] == 0


def test_a_corrupted_object_is_caught_and_restore_refuses_other_rows(
    ehr: Engine, work: ArchiveRangeWork, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = digest(ehr)
    with monkeypatch.context() as m:
        m.setattr(generic, "_verify_and_delete", lambda *a: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            generic.archive_range(work, ehr, CHUNK)
    [path] = [p for p in (tmp_path / "objects").rglob("*.parquet")]
    path.write_bytes(path.read_bytes()[:-9] + b"\0" * 9)  # bit rot on disk
    with pytest.raises(ArchiveVerificationError, match="SHA-256 does not match"):
        generic.archive_range(work, ehr, CHUNK)
    assert digest(ehr) == before and manifest_status(ehr) == ["corrupt"]
    assert generic.archive_range(work, ehr, CHUNK).verified
    [row] = generic.find_manifest(ehr, table="access_log")
    store = open_store(work.target.store_url)

    archived_key = read_object(store, row).column("access_id")[0].as_py()
    with ehr.begin() as conn:  # another row now sits under an archived key
        conn.execute(text(
            "INSERT INTO access_log SELECT :k, patient_id, 'intruder', action, workstation, "
            "accessed_at FROM access_log LIMIT 1"), {"k": archived_key})  # fmt: skip
    squatted = digest(ehr)
    with pytest.raises(ArchiveVerificationError, match="holds other rows"):
        generic.restore_object(ehr, store, work.info, row)
    assert digest(ehr) == squatted  # rolled back: nothing restored around the squatter

    with ehr.begin() as conn:
        conn.execute(text("DELETE FROM access_log WHERE user_name = 'intruder'"))
    assert generic.restore_object(ehr, store, work.info, row) == row.row_count
    assert digest(ehr) == before


def test_eligibility_counts_instants_and_batches_cover_exactly_the_eligible_rows(
    ehr: Engine,
) -> None:
    info = describe_table_generic(ehr, "access_log")
    with ehr.begin() as conn:  # 23:30 UTC the day before the cutoff, written with an offset
        conn.execute(text(
            "INSERT INTO access_log VALUES (9001, 1, 'clin', 'view', 'ws-1', "
            "'2025-11-01T00:30:00+01:00')"))  # fmt: skip
    eligible = digest(ehr, OLD)[0] + 1  # the text comparison misses the offset; julianday not

    counted = generic.count_eligible(ehr, info, "accessed_at", CUTOFF)
    ranges = generic.plan_eligible_ranges(ehr, info, "accessed_at", CUTOFF, 30)

    assert counted.rows == eligible and counted.bytes_estimate > 0
    assert ranges[0][0] is None and all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [eligible_between(ehr, lo, hi) for lo, hi in ranges]
    assert sum(sizes) == eligible and max(sizes) == 30 and ranges[-1][1] == 9001


def eligible_between(engine: Engine, lower: object, upper: object) -> int:
    query = "SELECT count(*) FROM access_log WHERE julianday(accessed_at) < julianday(:cutoff)"
    query += " AND access_id > :lo" if lower is not None else ""
    query += " AND access_id <= :hi" if upper is not None else ""
    with engine.connect() as conn:
        return int(conn.execute(text(query), {"cutoff": "2025-11-01", "lo": lower,
                                              "hi": upper}).scalar_one())  # fmt: skip
