"""open_store's process-wide client, and warming it in the background."""

from __future__ import annotations

import threading

import pytest

from custody.errors import ConfigError
from custody.settings import reset_settings_cache
from custody.storage import open_store, warm_store
from custody.storage.factory import _cached_client
from tests.support.seaweed import S3Server


def _configure(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", "s3://warm-bucket/p")
    monkeypatch.setenv("CUSTODY_S3_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("CUSTODY_S3_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("CUSTODY_S3_SECRET_ACCESS_KEY", server.secret_key)
    reset_settings_cache()
    _cached_client.cache_clear()


def test_warm_store_builds_the_client_the_batches_then_share(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _configure(monkeypatch, s3_server)
    warm_store("default").join(timeout=60)
    assert _cached_client.cache_info().currsize == 1
    stores = []
    threads = [threading.Thread(target=lambda: stores.append(open_store("default")))
               for _ in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _cached_client.cache_info().misses == 1  # one client for every thread
    assert len({id(s.client) for s in stores}) == 1  # type: ignore[attr-defined]


def test_warm_store_leaves_a_bad_name_to_the_real_call(monkeypatch: pytest.MonkeyPatch) -> None:
    reset_settings_cache()
    warm_store("no_such_store").join(timeout=60)  # no exception escapes the thread
    with pytest.raises(ConfigError, match="is not configured"):
        open_store("no_such_store")
