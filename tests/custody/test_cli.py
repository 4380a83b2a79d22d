from __future__ import annotations

import pytest
from sqlalchemy import inspect

from custody.cli import main
from custody.db import get_engine


def test_db_upgrade_is_idempotent(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUSTODY_DATABASE_URL", pg_url)
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0
    assert {"audit_log", "audit_chain_head", "job_chunks", "jobs", "dead_letters"} <= set(
        inspect(get_engine(pg_url)).get_table_names()
    )
    assert "up to date (postgresql)" in capsys.readouterr().out


def test_verify_without_a_key_fails_loudly(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CUSTODY_DATABASE_URL", f"sqlite:///{tmp_path / 's.db'}")
    assert main(["db", "upgrade"]) == 0
    assert main(["audit", "verify"]) == 2
    assert "CUSTODY_HMAC_KEYS" in capsys.readouterr().err


def test_bad_month_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "partitions", "--from", "2026-13"])
    assert exit_info.value.code == 2
    assert "expected YYYY-MM" in capsys.readouterr().err
