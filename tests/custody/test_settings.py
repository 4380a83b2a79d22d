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


def test_named_connections_resolve_and_secrets_stay_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTODY_CONNECTIONS__LEGACY_EHR", "postgresql://u:s3cret@db/ehr")
    settings = Settings()
    assert settings.connection_url("legacy_ehr") == "postgresql://u:s3cret@db/ehr"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize("name", ["x; drop", "../etc", "Ünïcode", ""])
def test_bad_connection_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        Settings().connection_url(name)
