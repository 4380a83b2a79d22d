"""Any S3-compatible store through boto3: SHA-256 checksums, SSE, versioning, Object Lock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from custody.storage.base import (
    LockMode,
    ObjectInfo,
    ObjectLockedError,
    Retention,
    StorageError,
    b64_to_hex,
    hex_to_b64,
    sha256_hex,
)
from custody.storage.keys import join_key

_LOCKED_CODES = {"AccessDenied", "ObjectLocked", "InvalidRequest"}


class S3Store:
    """A bucket and a key prefix. The client is built by ``open_store`` from settings."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, sse: bool = True) -> None:
        """Keep the client; ``sse`` asks the server to encrypt objects at rest (SSE-S3)."""
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.sse = sse

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def put(self, key: str, data: bytes, *, retention: Retention | None = None) -> ObjectInfo:
        """PUT with ``ChecksumSHA256``: the server recomputes it and refuses a mismatch."""
        digest = sha256_hex(data)
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "Body": data,
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": hex_to_b64(digest),
        }
        if self.sse:
            args["ServerSideEncryption"] = "AES256"
        if retention is not None and retention.mode is not LockMode.NONE:
            args["ObjectLockMode"] = retention.mode.value.upper()
            args["ObjectLockRetainUntilDate"] = retention.retain_until
        response = _call(self.client.put_object, **args)
        return ObjectInfo(key, len(data), digest, response.get("VersionId"), retention)

    def get(self, key: str, version_id: str | None = None) -> bytes:
        """GET one version whole (archive objects are tens of MB at most)."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if version_id:
            args["VersionId"] = version_id
        body = _call(self.client.get_object, **args)["Body"]
        try:
            return bytes(body.read())
        except Exception as exc:  # connection dropped mid-body
            reason = type(exc).__name__
            raise StorageError(f"reading {key} failed: {reason}", transient=True) from exc

    def head(self, key: str) -> ObjectInfo | None:
        """HEAD with the stored checksum and retention; None when there is no such key."""
        try:
            response = _call(
                self.client.head_object,
                Bucket=self.bucket,
                Key=self._key(key),
                ChecksumMode="ENABLED",
            )
        except StorageError as exc:
            if "404" in str(exc) or "NotFound" in str(exc) or "NoSuchKey" in str(exc):
                return None
            raise
        retention = None
        if response.get("ObjectLockMode"):
            retention = Retention(
                LockMode(response["ObjectLockMode"].lower()),
                response["ObjectLockRetainUntilDate"],
            )
        checksum = response.get("ChecksumSHA256")
        return ObjectInfo(
            key,
            int(response["ContentLength"]),
            b64_to_hex(checksum) if checksum else None,
            response.get("VersionId"),
            retention,
        )

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Newest versions under ``prefix`` (checksums and retention need a HEAD each)."""
        paginator = self.client.get_paginator("list_objects_v2")
        full = join_key(self.prefix, prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]), None)
        except Exception as exc:
            raise _storage_error("list", exc) from exc

    def delete(self, key: str, version_id: str | None = None) -> None:
        """DELETE one version; the server refuses while Object Lock retention holds."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if version_id:
            args["VersionId"] = version_id
        try:
            _call(self.client.delete_object, **args)
        except StorageError as exc:
            if any(code in str(exc) for code in _LOCKED_CODES):
                raise ObjectLockedError(f"{key}: deletion refused by the store ({exc})") from exc
            raise

    def location(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self._key(key)}"


def _call(method: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return dict(method(**kwargs))
    except Exception as exc:
        raise _storage_error(method.__name__, exc) from exc


def _storage_error(operation: str, exc: Exception) -> StorageError:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return StorageError(
            f"S3 {operation} failed: {code} (HTTP {status})", transient=status >= 500
        )
    transient = isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError)
    return StorageError(f"S3 {operation} failed: {type(exc).__name__}", transient=transient)


def ensure_bucket(client: Any, bucket: str, *, object_lock: bool) -> None:
    """Create the bucket (versioned, with Object Lock when asked) unless it exists."""
    try:
        client.head_bucket(Bucket=bucket)
        return
    except Exception:  # noqa: S110 - absent (or not ours to see): try to create it below
        pass
    args: dict[str, Any] = {"Bucket": bucket}
    if object_lock:
        args["ObjectLockEnabledForBucket"] = True
    _call(client.create_bucket, **args)
    _call(
        client.put_bucket_versioning,
        Bucket=bucket,
        VersioningConfiguration={"Status": "Enabled"},
    )
