"""Pointing custody's settings at test services."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from custody.settings import reset_settings_cache

TEST_KEYS = {
    "k1": "k1-test-key-0123456789abcdef0123456789",
    "k2": "k2-test-key-abcdef0123456789abcdef0123",
}
# Flows anchor the audit chain head in <work_dir>/objects after every run: one work directory per
# store, so anchors of one test's store never meet another's (and none land in the checkout).
_WORK_ROOT = Path(tempfile.mkdtemp(prefix="custody-test-work-"))


def work_dir_for(store_url: str) -> Path:
    """The work directory (and so the default object store) of one test store."""
    return _WORK_ROOT / hashlib.sha256(store_url.encode()).hexdigest()[:16]


def custody_env(
    store_url: str,
    connections: dict[str, str] | None = None,
    active_key: str = "k1",
    keys: dict[str, str] | None = None,
) -> dict[str, str]:
    """The CUSTODY_* variables for a store, named connections and the test keys."""
    env = {
        "CUSTODY_DATABASE_URL": store_url,
        "CUSTODY_HMAC_KEYS": json.dumps(keys or TEST_KEYS),
        "CUSTODY_HMAC_ACTIVE_KEY_ID": active_key,
        "CUSTODY_WORK_DIR": str(work_dir_for(store_url)),
    }
    for name, url in (connections or {}).items():
        env[f"CUSTODY_CONNECTIONS__{name.upper()}"] = url
    return env


def set_custody_env(monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> dict[str, str]:
    """Apply ``custody_env(**kwargs)`` to this process and drop cached settings."""
    from tasks.runtime import reset_runtime

    env = custody_env(**kwargs)  # type: ignore[arg-type]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    reset_runtime()
    return env
