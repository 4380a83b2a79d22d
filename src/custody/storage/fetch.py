"""Fetch one object by the location a run published, checked against its stored SHA-256.

What ``custody store get`` runs: the report and location artifacts name a ``file://`` path or an
``s3://`` key (never a link that opens it), and this is how a person with the store's access
gets the bytes, knowing they are the ones the run wrote.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from custody.settings import Settings, get_settings
from custody.storage.base import ObjectStore, StorageError, sha256_hex
from custody.storage.factory import s3_client
from custody.storage.local import LocalStore
from custody.storage.s3 import S3Store


def fetch_verified(location: str, settings: Settings | None = None) -> bytes:
    """The object at ``file:///path`` or ``s3://bucket/key``, checksum verified.

    Raises:
        StorageError: no such object, or its bytes do not match the recorded SHA-256.
    """
    parsed = urlparse(location)
    store: ObjectStore
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        store, key = LocalStore(path.parent), path.name
    elif parsed.scheme == "s3" and parsed.netloc and parsed.path.strip("/"):
        store = S3Store(s3_client(settings or get_settings()), parsed.netloc, "")
        key = unquote(parsed.path).lstrip("/")
    else:
        raise StorageError(f"{location!r} is not a file:///path or s3://bucket/key location")
    info = store.head(key)
    if info is None:
        raise StorageError(f"{location} does not exist (or has no recorded checksum)")
    data = store.get(key, info.version_id)
    if info.sha256 is None or sha256_hex(data) != info.sha256:
        raise StorageError(f"{location}: content does not match its recorded SHA-256")
    return data
