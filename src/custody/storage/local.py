"""The embedded default store: a directory of files.

A JSON sidecar per object keeps its checksum and retention, which this store enforces itself,
as Object Lock would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from custody.storage.base import (
    LockMode,
    ObjectInfo,
    ObjectLockedError,
    Retention,
    StorageError,
    sha256_hex,
)

_META = ".meta.json"


class LocalStore:
    """Objects as files under ``root``; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        """Use (and create) ``root``."""
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"object key {key!r} points outside the store")
        return path

    def put(self, key: str, data: bytes, *, retention: Retention | None = None) -> ObjectInfo:
        """Write the object and its sidecar; refuses to replace a version under retention."""
        path = self._path(key)
        current = self.head(key)
        if current is not None and _protected(current.retention):
            raise ObjectLockedError(f"{key} is under retention until {current.retention}")
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = sha256_hex(data)
        meta = {"sha256": digest, "size": len(data)}
        if retention is not None and retention.mode is not LockMode.NONE:
            meta |= {"mode": retention.mode.value, "until": retention.retain_until.isoformat()}
        try:
            _atomic_write(
                (path, data), (path.with_name(path.name + _META), json.dumps(meta).encode())
            )
        except OSError as exc:  # disk full, permissions: nothing half-written stays
            raise StorageError(f"could not write {key}: {exc.strerror}") from exc
        return ObjectInfo(key, len(data), digest, None, _retention(meta))

    def get(self, key: str, version_id: str | None = None) -> bytes:
        """Read the object (this store keeps one version per key)."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"object {key} does not exist") from exc

    def head(self, key: str) -> ObjectInfo | None:
        """Size, recorded checksum and retention, from the sidecar."""
        path = self._path(key)
        meta_path = path.with_name(path.name + _META)
        if not path.exists() or not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        return ObjectInfo(key, path.stat().st_size, meta["sha256"], None, _retention(meta))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (sidecars and temp files excluded)."""
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith((_META, ".tmp")):
                info = self.head(path.relative_to(self.root).as_posix())
                if info is not None:
                    yield info

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Remove the object unless its retention still holds."""
        info = self.head(key)
        if info is not None and _protected(info.retention):
            raise ObjectLockedError(f"{key} is under retention until {info.retention}")
        path = self._path(key)
        for p in (path, path.with_name(path.name + _META)):
            p.unlink(missing_ok=True)

    def location(self, key: str) -> str:
        """A file:// URI."""
        return self._path(key).as_uri()


def _atomic_write(*files: tuple[Path, bytes]) -> None:
    """Write every file to a temp file first, then rename them all into place.

    A full disk or any other write error strikes while only temp files exist: they are removed
    (they may hold part of an object, i.e. PHI, and they keep the disk full), and an object that
    was there before stays whole with its own sidecar. Renames need no space.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            tmp = path.with_name(path.name + ".tmp")
            staged.append((tmp, path))
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        tmp.replace(path)


def _retention(meta: dict[str, object]) -> Retention | None:
    if "mode" not in meta:
        return None
    return Retention(LockMode(str(meta["mode"])), datetime.fromisoformat(str(meta["until"])))


def _protected(retention: Retention | None) -> bool:
    return retention is not None and retention.retain_until > datetime.now(UTC)
