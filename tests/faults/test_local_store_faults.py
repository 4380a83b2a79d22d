"""The local (``file://``) object store on a disk that fills up: a real tmpfs, a real ENOSPC.

An object is its bytes plus a checksum sidecar. Whatever the write that fails (the bytes cut
short, or the bytes written and then no room for the sidecar), the store must be left as it
was: no temp file holding part of an object, no object without its checksum, and an object
that was there before still whole and matching its checksum.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from custody.storage import StorageError, sha256_hex
from custody.storage.local import LocalStore
from tests.support.faults import stray_files, tmpfs

PAGE = 4096


def _as_before(store: LocalStore, root: Path, key: str, old: bytes) -> None:
    info = store.head(key)
    assert info is not None and info.sha256 == sha256_hex(old) and info.size == len(old)
    assert store.get(key) == old
    assert [o.key for o in store.list()] == [key]
    assert stray_files(root) == []


@pytest.mark.parametrize(
    ("room_pages", "what_fails"),
    [(3, "the bytes, cut short"), (8, "the checksum sidecar, after the bytes")],
)
def test_a_full_disk_leaves_the_store_as_it_was(
    tmp_path: Path, room_pages: int, what_fails: str
) -> None:
    old, new = b"first version" * 100, os.urandom(8 * PAGE)  # the new one takes 8 pages
    with tmpfs(tmp_path / "store", 1 << 20) as disk:
        store = LocalStore(disk.path)
        store.put("reports/r1.csv", old)
        disk.fill(leave_bytes=room_pages * PAGE)

        with pytest.raises(StorageError, match="No space left on device"):
            store.put("reports/r1.csv", new)  # replacing it fails
        _as_before(store, disk.path, "reports/r1.csv", old)
        with pytest.raises(StorageError, match="No space left on device"):
            store.put("reports/r2.csv", new)  # so does a new object
        assert store.head("reports/r2.csv") is None
        _as_before(store, disk.path, "reports/r1.csv", old)

        (disk.path / ".filler").unlink()  # room again: the same write now succeeds
        store.put("reports/r2.csv", new)
        assert store.get("reports/r2.csv") == new
        assert store.head("reports/r2.csv").sha256 == sha256_hex(new)  # type: ignore[union-attr]
        assert stray_files(disk.path) == []
