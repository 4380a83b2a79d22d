"""Runtime settings, read from ``CUSTODY_*`` environment variables or a ``.env`` file.

Secrets (database URLs with passwords, HMAC keys) live here and never in flow parameters:
flows name a connection (``source="legacy_ehr"``) and it is resolved inside the worker, so the
Prefect API, which may run outside the HIPAA boundary, never sees it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AnyUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from custody.errors import ConfigError

_CONNECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MIN_HMAC_KEY_BYTES = 32
DEFAULT_STORE = "default"
"""Name flows use for CUSTODY_OBJECT_STORE_URL."""
TaskRunnerKind = Literal["threads", "dask"]


class Settings(BaseSettings):
    """Everything custody reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="CUSTODY_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
    )

    work_dir: Path = Field(
        default=Path(".custody"),
        description="Where the embedded defaults live: the SQLite store and local object store.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of custody's own store (audit_log, job_chunks, dead_letters). "
        "Default: a SQLite file in the work directory.",
    )
    connections: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Named database connections: CUSTODY_CONNECTIONS__<NAME>=<url>.",
    )
    object_store_url: str | None = Field(
        default=None,
        description="file:///path (default: <work_dir>/objects) or s3://bucket/prefix. Flows "
        "name it 'default'.",
    )
    object_stores: dict[str, str] = Field(
        default_factory=dict,
        description="More named object stores flows may write to or read from: "
        "CUSTODY_OBJECT_STORES__<NAME>=s3://bucket/prefix or file:///absolute/dir. Flow "
        "parameters choose among these names (and 'default'), never a URL.",
    )
    s3_endpoint_url: AnyUrl | None = Field(
        default=None, description="Endpoint of an S3-compatible server (SeaweedFS, MinIO, ...)."
    )
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    hmac_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Audit signing keys by key id, as JSON: CUSTODY_HMAC_KEYS={"k1": "..."}.',
    )
    hmac_active_key_id: str | None = Field(
        default=None, description="Key id that signs new audit events (default: the only key)."
    )
    principal: str = Field(
        default="custody", description="Principal recorded on audit events written by pipelines."
    )
    approval_poll_seconds: int = Field(
        default=10,
        ge=1,
        le=300,
        description="How often a run paused for approval asks Prefect whether it was resumed.",
    )
    task_runner: TaskRunnerKind = Field(
        default="threads",
        description="Where chunk tasks run: threads in the flow's process, or a Dask cluster. "
        "Read when each flow run starts (tasks/runners.py).",
    )
    dask_address: str | None = Field(
        default=None,
        pattern=r"^((tcp|tls)://)?[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        description="Scheduler of an existing Dask cluster, e.g. tls://10.0.0.5:8786. Unset: "
        "each flow run starts a local cluster of dask_workers processes on its own machine.",
    )
    dask_workers: int = Field(
        default=2, ge=1, le=64, description="Worker processes of the per-run local Dask cluster."
    )
    audit_max_clock_skew_seconds: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description="How far ahead of the writer's clock an audit event's occurred_at may be; "
        "later ones are refused (a future-dated event would block partition upkeep).",
    )
    audit_anchor_after_runs: bool = Field(
        default=True,
        description="Anchor the audit chain head in the object store at the end of every flow "
        "run, so that an earlier head put back in the database is seen (SECURITY.md).",
    )
    audit_anchor_prefix: str = Field(
        default="audit-anchors", description="Key prefix of the anchors in the object store."
    )
    audit_anchor_lock: Literal["none", "governance", "compliance"] = Field(
        default="compliance", description="Object Lock mode of the anchors written after runs."
    )
    audit_anchor_keep_days: int = Field(
        default=2190, ge=1, le=36_500, description="Retention of each anchor (HIPAA: six years)."
    )

    lab_inbox_roots: list[Path] = Field(
        default_factory=list,
        description="Lab ingestion: the directories a local source must be inside, as JSON: "
        "CUSTODY_LAB_INBOX_ROOTS='[\"/srv/lab-inbox\"]'. Default: <work_dir>/inbox.",
    )
    lab_rules_dir: Path | None = Field(
        default=None,
        description="Lab ingestion: a directory of site critical-value rule sets (<name>.json), "
        "chosen by name like the packaged ones.",
    )
    lab_max_file_bytes: int = Field(
        default=4 << 30, ge=1, description="Lab ingestion: a bigger file is quarantined unread."
    )
    lab_in_memory_bytes: int = Field(
        default=32 << 20,
        ge=1 << 20,
        description="Lab ingestion: files up to this size are read whole; bigger HL7 v2 files "
        "are parsed and landed in bounded batches (PostgreSQL store), other formats quarantined.",
    )
    lab_max_file_seconds: float = Field(
        default=1800, gt=0, description="Lab ingestion: a slower file is quarantined."
    )
    lab_sender_zones: dict[str, str] = Field(
        default_factory=dict,
        description="Lab ingestion: IANA time zone per HL7 sender (MSH-4 sending facility) for "
        'times sent without an offset, e.g. CUSTODY_LAB_SENDER_ZONES=\'{"ACME LAB": '
        '"America/Chicago"}\'.',
    )
    lab_source_zones: dict[str, str] = Field(
        default_factory=dict,
        description="Lab ingestion: IANA time zone per source (inbox directory or store:prefix) "
        "for FHIR and CSV times sent without a zone.",
    )

    @field_validator("connections", mode="before")
    @classmethod
    def _lower_connection_names(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k).lower(): v for k, v in value.items()}
        return value

    @field_validator("object_stores", mode="before")
    @classmethod
    def _lower_store_names(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k).lower(): v for k, v in value.items()}
        return value

    @field_validator("object_stores")
    @classmethod
    def _check_stores(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if name == DEFAULT_STORE or not _CONNECTION_NAME.fullmatch(name):
                raise ValueError(
                    f"store name {name!r} is not valid: use lowercase letters, digits and "
                    f"underscores, starting with a letter ({DEFAULT_STORE!r} is "
                    "CUSTODY_OBJECT_STORE_URL)"
                )
            if not url.startswith(("s3://", "file:///")):
                raise ValueError(f"store {name!r} must be s3://bucket[/prefix] or file:///dir")
        return value

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        for key_id, secret in self.hmac_keys.items():
            if len(secret.get_secret_value().encode()) < MIN_HMAC_KEY_BYTES:
                raise ValueError(
                    f"CUSTODY_HMAC_KEYS: key {key_id!r} is shorter than {MIN_HMAC_KEY_BYTES} bytes"
                )
        if self.hmac_active_key_id and self.hmac_active_key_id not in self.hmac_keys:
            raise ValueError(
                f"CUSTODY_HMAC_ACTIVE_KEY_ID={self.hmac_active_key_id!r} is not a key id in "
                "CUSTODY_HMAC_KEYS"
            )
        return self

    def store_url(self) -> str:
        """URL of custody's own store, defaulting to SQLite in the work directory."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.work_dir / 'custody.db').resolve()}"

    def resolved_object_store_url(self) -> str:
        """Object store URL, defaulting to a directory in the work directory."""
        return self.object_store_url or (self.work_dir / "objects").resolve().as_uri()

    def store_names(self) -> list[str]:
        """The object stores flow parameters may name: ``default`` first, then the others."""
        return [DEFAULT_STORE, *sorted(self.object_stores)]

    def object_store_url_for(self, name: str) -> str:
        """URL of the object store configured under ``name``.

        Raises:
            ConfigError: no store has that name (the message lists the names that exist).
        """
        if name == DEFAULT_STORE:
            return self.resolved_object_store_url()
        if name in self.object_stores:
            return self.object_stores[name]
        raise ConfigError(
            f"object store {name!r} is not configured: choose one of "
            f"{', '.join(self.store_names())} (CUSTODY_OBJECT_STORES__<NAME>)"
        )

    def connection_url(self, name: str) -> str:
        """Resolve a named connection to its URL.

        Looks in ``CUSTODY_CONNECTIONS__<NAME>`` first, then in a Prefect Secret block named
        ``custody-connection-<name>`` (so deployments can keep URLs in Prefect's secret store).

        Raises:
            ConfigError: the name is malformed or nothing defines it.
        """
        key = name.lower()
        if not _CONNECTION_NAME.fullmatch(key):
            raise ConfigError(
                f"connection name {name!r} is not valid: use lowercase letters, digits and "
                "underscores, starting with a letter"
            )
        if key in self.connections:
            return self.connections[key].get_secret_value()
        from custody.prefect_glue import load_secret_block

        secret = load_secret_block(f"custody-connection-{key.replace('_', '-')}")
        if secret is not None:
            return secret
        raise ConfigError(
            f"connection {name!r} is not configured: set CUSTODY_CONNECTIONS__{key.upper()} "
            f"or create a Prefect Secret block 'custody-connection-{key.replace('_', '-')}'"
        )

    def require_hmac_keys(self) -> tuple[str, dict[str, bytes]]:
        """Return (active key id, all keys) or fail naming the variables to set.

        Raises:
            ConfigError: no signing key is configured.
        """
        if not self.hmac_keys:
            raise ConfigError(
                "no audit signing key: set CUSTODY_HMAC_KEYS to a JSON object of key id -> secret "
                f'(at least {MIN_HMAC_KEY_BYTES} bytes), e.g. CUSTODY_HMAC_KEYS=\'{{"k1": "..."}}\''
            )
        keys = {k: v.get_secret_value().encode() for k, v in self.hmac_keys.items()}
        active = self.hmac_active_key_id
        if active is None:
            if len(keys) > 1:
                raise ConfigError(
                    "several keys in CUSTODY_HMAC_KEYS: set CUSTODY_HMAC_ACTIVE_KEY_ID to the one "
                    "that signs new events"
                )
            active = next(iter(keys))
        return active, keys


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load settings once per process; raise ConfigError naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        # Never the values: they may be keys or URLs with passwords, and this message can reach
        # Prefect states and worker logs. Name the variables and what is wrong with them.
        invalid = ConfigError(f"invalid custody settings: {_describe(exc)}")
    except ValueError as exc:
        invalid = ConfigError(f"invalid custody settings: {exc}")
    raise invalid  # outside the except blocks: no __context__ holding the raw values


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = "__".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"CUSTODY_{where.upper()}: {message}" if where else message)
    return "; ".join(problems)


def reset_settings_cache() -> None:
    """Forget loaded settings (tests and the demo change the environment)."""
    get_settings.cache_clear()
