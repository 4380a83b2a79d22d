"""What every object store offers custody: checksummed puts, reads, listing, retention."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from custody.errors import CustodyError


class LockMode(StrEnum):
    """Object Lock retention: compliance cannot be shortened by anyone, governance by admins."""

    NONE = "none"
    GOVERNANCE = "governance"
    COMPLIANCE = "compliance"


class StorageError(CustodyError):
    """The object store refused or failed a request; ``transient`` when a retry may help."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        """Keep whether a retry may help next to the message."""
        super().__init__(message)
        self.transient = transient


class ObjectLockedError(StorageError):
    """Deleting or overwriting an object version its retention still protects."""


@dataclass(frozen=True)
class Retention:
    """How long an object version must stay untouched."""

    mode: LockMode
    retain_until: datetime


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object version: enough to find it again and check it, nothing of its content."""

    key: str
    size: int
    sha256: str | None
    version_id: str | None = None
    retention: Retention | None = None


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256, the form custody records in manifests and report rows."""
    return hashlib.sha256(data).hexdigest()


def hex_to_b64(digest: str) -> str:
    """S3 wants checksums base64-encoded."""
    return base64.b64encode(bytes.fromhex(digest)).decode()


def b64_to_hex(digest: str) -> str:
    """S3 returns checksums base64-encoded; custody records hex."""
    return base64.b64decode(digest).hex()


class ObjectStore(Protocol):
    """An S3 bucket prefix or a local directory; keys are relative to it."""

    def put(self, key: str, data: bytes, *, retention: Retention | None = None) -> ObjectInfo:
        """Store ``data`` under ``key`` with its SHA-256 checked by the store on arrival."""
        ...

    def get(self, key: str, version_id: str | None = None) -> bytes:
        """Read one object version back whole."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """The newest version of ``key``, or None."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix``, newest versions only."""
        ...

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Delete one version; raises ObjectLockedError while retention protects it."""
        ...

    def location(self, key: str) -> str:
        """A URI for people and link artifacts (bucket and key; never credentials)."""
        ...
