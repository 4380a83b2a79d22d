"""Open an object store: by configured name (what flows pass), or by URL (operators' tools).

Flow parameters name a store (``default`` or a ``CUSTODY_OBJECT_STORES__<NAME>``); the name is
resolved here, inside the worker. A parameter can therefore only choose among stores the site
configured, never send PHI to a directory, an FTP server or a bucket of its own choosing.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

from custody.errors import ConfigError
from custody.settings import Settings, get_settings
from custody.storage.base import ObjectStore
from custody.storage.keys import check_prefix
from custody.storage.local import LocalStore
from custody.storage.s3 import S3Store

_STORE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_CLIENT_LOCK = threading.Lock()


def check_destination(name: str, settings: Settings | None = None) -> str:
    """``name`` if it names a configured object store; call it before any query runs.

    Raises:
        ConfigError: ``name`` is not a store name (a URL, a path) or names no configured store.
    """
    settings = settings or get_settings()
    if not _STORE_NAME.fullmatch(name):
        raise ConfigError(
            "object store must be a configured store name "
            f"({', '.join(settings.store_names())}), not a URL or path"
        )
    settings.object_store_url_for(name)
    return name


def open_store(url: str | None = None, settings: Settings | None = None) -> ObjectStore:
    """The store named or located by ``url`` (default: CUSTODY_OBJECT_STORE_URL).

    ``url`` is either a configured store name (``default``, or a key of
    CUSTODY_OBJECT_STORES) or, for operators' tools and tests, a ``file://``/``s3://`` URL.

    Raises:
        ConfigError: the name is not configured, the URL's scheme is unknown or its prefix is
            not plain segments.
    """
    settings = settings or get_settings()
    if url is not None and _STORE_NAME.fullmatch(url):
        url = settings.object_store_url_for(url)
    parsed = urlparse(url or settings.resolved_object_store_url())
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError("object store URL s3://... needs a bucket name")
        try:
            prefix = check_prefix(parsed.path.strip("/"))
        except ValueError as exc:
            raise ConfigError(f"CUSTODY_OBJECT_STORE_URL: {exc}") from exc
        return S3Store(s3_client(settings), parsed.netloc, prefix)
    raise ConfigError(
        f"CUSTODY_OBJECT_STORE_URL scheme {parsed.scheme!r} is not supported: use file:// or s3://"
    )


def s3_client(settings: Settings):  # type: ignore[no-untyped-def]
    """A boto3 S3 client from CUSTODY_S3_* (or boto3's own credential chain when unset).

    One client per configuration and process: building one costs ~50 ms of CPU, and boto3
    clients are safe to share between threads (sessions are not).
    """
    with _CLIENT_LOCK:  # batches start together: one build, the others wait for it
        return _cached_client(
            str(settings.s3_endpoint_url) if settings.s3_endpoint_url else None,
            settings.s3_region,
            _secret(settings.s3_access_key_id),
            _secret(settings.s3_secret_access_key),
        )


def warm_store(name: str | None = None) -> threading.Thread:
    """Open the store in a background thread, so its first use finds it ready.

    Importing boto3 and building its client costs about a second of CPU (several on a busy
    machine) the first time in a process; a flow starts this before its planning tasks instead
    of paying it in the first batch. Errors are left for the real ``open_store`` call to raise.
    """

    def build() -> None:
        with contextlib.suppress(Exception):  # the caller's own open_store reports it
            open_store(name)

    thread = threading.Thread(target=build, name="custody-warm-store", daemon=True)
    thread.start()
    return thread


@functools.lru_cache(maxsize=8)
def _cached_client(  # type: ignore[no-untyped-def]
    endpoint_url: str | None, region: str | None, key_id: str | None, secret: str | None
):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]
