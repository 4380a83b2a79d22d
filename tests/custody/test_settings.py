from pathlib import Path

import pytest

from custody.errors import ConfigError
from custody.settings import Settings, get_settings


def test_defaults_are_embedded(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.store_url() == f"sqlite:///{tmp_path / '.custody' / 'custody.db'}"
    assert settings.resolved_object_store_url() == (tmp_path / ".custody" / "objects").as_uri()


def test_missing_hmac_key_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CUSTODY_HMAC_KEYS"):
        Settings().require_hmac_keys()


def test_short_key_and_unknown_active_key_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTODY_HMAC_KEYS", '{"k1": "short"}')
    with pytest.raises(ConfigError, match=r"k1.*shorter than 32"):
        get_settings()
    monkeypatch.setenv("CUSTODY_HMAC_KEYS", '{"k1": "' + "x" * 32 + '"}')
    monkeypatch.setenv("CUSTODY_HMAC_ACTIVE_KEY_ID", "k7")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="CUSTODY_HMAC_ACTIVE_KEY_ID"):
        get_settings()


def test_a_bad_setting_is_named_without_quoting_any_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error can reach Prefect states and worker logs: keys and passwords must stay out."""
    monkeypatch.setenv("CUSTODY_HMAC_KEYS", '{"k1": "s3cr3t-but-short"}')
    monkeypatch.setenv("CUSTODY_DATABASE_URL", "postgresql://app:hunter2-pw@db/custody")
    monkeypatch.setenv("CUSTODY_DASK_WORKERS", "many-hunter2")
    for named in ("CUSTODY_DASK_WORKERS", "CUSTODY_HMAC_KEYS"):
        get_settings.cache_clear()
        with pytest.raises(ConfigError) as refused:
            get_settings()
        message = str(refused.value)
        assert named in message
        assert "s3cr3t" not in message and "hunter2" not in message
        assert refused.value.__cause__ is None  # nor through the chained pydantic error
        monkeypatch.delenv("CUSTODY_DASK_WORKERS", raising=False)  # then the key is wrong


def test_named_connections_resolve_and_secrets_stay_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTODY_CONNECTIONS__LEGACY_EHR", "postgresql://u:s3cret@db/ehr")
    settings = Settings()
    assert settings.connection_url("legacy_ehr") == "postgresql://u:s3cret@db/ehr"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("name", ["x; drop", "../etc", "Ünïcode", ""])
def test_bad_connection_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        Settings().connection_url(name)


def test_named_object_stores_resolve_and_bad_ones_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 7: flows name stores; the site maps names to URLs here, and only here."""
    from custody.storage import check_destination, open_store

    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", (tmp_path / "main").as_uri())
    monkeypatch.setenv("CUSTODY_OBJECT_STORES__OFFSITE", (tmp_path / "offsite").as_uri())
    settings = get_settings()
    assert settings.store_names() == ["default", "offsite"]
    assert open_store("offsite").location("x") == open_store(
        (tmp_path / "offsite").as_uri()
    ).location("x")
    assert check_destination("default") == "default"
    for bad in ("elsewhere", "file:///tmp", "../x"):
        with pytest.raises(ConfigError, match="object store"):
            check_destination(bad)
    for name, url in (("OFFSITE", "ftp://host/x"), ("DEFAULT", (tmp_path / "d").as_uri()),
                      ("BAD-NAME", (tmp_path / "d").as_uri())):  # fmt: skip
        monkeypatch.delenv("CUSTODY_OBJECT_STORES__OFFSITE", raising=False)
        monkeypatch.setenv(f"CUSTODY_OBJECT_STORES__{name}", url)
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="CUSTODY_OBJECT_STORES"):
            get_settings()
        monkeypatch.delenv(f"CUSTODY_OBJECT_STORES__{name}")
