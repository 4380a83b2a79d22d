"""Object stores: S3-compatible servers and a local directory, behind one small interface."""

from custody.storage.base import (
    LockMode,
    ObjectInfo,
    ObjectLockedError,
    ObjectStore,
    Retention,
    StorageError,
    sha256_hex,
)
from custody.storage.factory import check_destination, open_store, warm_store
from custody.storage.keys import check_key_part, check_prefix, join_key

__all__ = [
    "LockMode",
    "ObjectInfo",
    "ObjectLockedError",
    "ObjectStore",
    "Retention",
    "StorageError",
    "check_destination",
    "check_key_part",
    "check_prefix",
    "join_key",
    "open_store",
    "sha256_hex",
    "warm_store",
]
