"""`custody store get LOCATION`: the location an artifact names gives back the stored bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from custody.cli import main
from custody.settings import reset_settings_cache
from custody.storage import sha256_hex
from custody.storage.local import LocalStore
from custody.storage.s3 import S3Store, ensure_bucket
from tests.support.seaweed import S3Server

PAGE = b"<!DOCTYPE html><title>report</title><p>42 accesses</p>"


def test_a_local_location_is_fetched_and_a_changed_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalStore(tmp_path / "objects")
    store.put("reports/hipaa/r1.html", PAGE)
    location = store.location("reports/hipaa/r1.html")
    out = tmp_path / "copy.html"
    assert main(["store", "get", location, "-o", str(out)]) == 0
    assert out.read_bytes() == PAGE and "SHA-256 matches" in capsys.readouterr().out

    (tmp_path / "objects/reports/hipaa/r1.html").write_bytes(PAGE.replace(b"42", b"43"))
    assert main(["store", "get", location, "-o", str(out)]) == 2
    assert "does not match its recorded SHA-256" in capsys.readouterr().err


def test_an_s3_location_is_fetched_with_the_configured_credentials(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = s3_server.client()  # type: ignore[no-untyped-call]
    ensure_bucket(client, "fetch-test", object_lock=False)
    store = S3Store(client, "fetch-test", "reports")
    store.put("r2.html", PAGE)
    location = store.location("r2.html")
    assert location == "s3://fetch-test/reports/r2.html"
    monkeypatch.setenv("CUSTODY_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("CUSTODY_S3_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("CUSTODY_S3_SECRET_ACCESS_KEY", s3_server.secret_key)
    reset_settings_cache()
    monkeypatch.chdir(tmp_path)
    assert main(["store", "get", location]) == 0  # named after the object
    assert sha256_hex((tmp_path / "r2.html").read_bytes()) == sha256_hex(PAGE)
    assert main(["store", "get", "s3://fetch-test/reports/none.html"]) == 2
