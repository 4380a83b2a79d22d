"""Parameter fields shared by the chunked flows, so every form validates names the same way."""

from __future__ import annotations

import re
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
)
from pydantic_core import CoreSchema

from custody.errors import ConfigError
from custody.identifiers import MAX_NAME_BYTES, check_name
from custody.settings import get_settings
from custody.storage import check_destination

CONNECTION = r"^[a-z][a-z0-9_]{0,62}$"
JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,100}$"

# A schema, table or column name exactly as the database has it: spaces, unicode, mixed case and
# quotes are legal. The form refuses only what no server can hold; the flow then looks the name
# up in the catalog and quotes it, which is what keeps hostile strings out of SQL.
SqlName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_BYTES),
    AfterValidator(check_name),
]


def _configured_store(value: str) -> str:
    try:
        return check_destination(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


class _ConfiguredStoreChoices:
    """Adds the configured store names as an ``enum`` when the schema is built (at deploy time).

    The Prefect UI draws an enum as a drop-down, and the server refuses a run whose parameters
    fall outside it, before any worker sees them.
    """

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema = handler(core_schema)
        schema.pop("pattern", None)
        schema["enum"] = get_settings().store_names()
        return schema


# An object store chosen by name among those the site configured (CUSTODY_OBJECT_STORE_URL is
# "default"; CUSTODY_OBJECT_STORES__<NAME> adds more). Never a URL, a path or a bucket: PHI
# outputs go only where the site said they may (issue 15 item 7).
StoreName = Annotated[
    str,
    StringConstraints(pattern=CONNECTION),
    AfterValidator(_configured_store),
    _ConfiguredStoreChoices(),
]


def connection_choices() -> list[str]:
    """Connection names configured where the deployment is built, for the form to offer.

    ``CUSTODY_CONNECTIONS__<NAME>`` settings, plus Prefect Secret blocks named
    ``custody-connection-<name>`` when ``PREFECT_API_URL`` names a server (never a temporary one).
    Empty when nothing is configured: the field is then free text with the name pattern.
    """
    import os

    from custody.errors import ConfigError
    from custody.settings import get_settings

    try:
        names = set(get_settings().connections)
    except ConfigError:
        names = set()
    if os.environ.get("PREFECT_API_URL"):
        from custody.prefect_glue import secret_block_names

        prefix = "custody-connection-"
        names |= {n.removeprefix(prefix).replace("-", "_") for n in secret_block_names(prefix)}
    return sorted(n for n in names if re.fullmatch(CONNECTION, n))


def offer_connections(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` of a connection field: the configured names as a drop-down.

    Only the schema changes (the Prefect form, and the server's check of API-created runs);
    the model still validates any well-formed name, so flows called from Python are unaffected.
    """
    names = connection_choices()
    if names:
        schema["enum"] = names


class ChunkedJobParams(BaseModel):
    """Source, target and how a chunked job runs (the first fields of every chunked flow form)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        title="Source connection",
        pattern=CONNECTION,
        description="Name of a configured connection, never a URL.",
        json_schema_extra=offer_connections,
    )
    target: str = Field(
        title="Target connection",
        pattern=CONNECTION,
        description="Name of a configured connection, never a URL.",
        json_schema_extra=offer_connections,
    )
    chunk_size: int = Field(
        default=50_000,
        ge=1,
        le=1_000_000,
        title="Rows per chunk",
        description="Each chunk is a key range copied, verified and recorded in the ledger on its "
        "own; a re-run redoes only unverified chunks.",
    )
    max_concurrency: int = Field(
        default=2,
        ge=1,
        le=32,
        title="Chunks in flight",
        description="Chunks worked on at the same time by this run.",
    )
    continue_on_error: bool = Field(
        default=True,
        title="Continue after a failed chunk",
        description="A failed chunk gets a ledger row and a dead letter; off stops the run.",
    )
    job_id: str | None = Field(
        default=None,
        title="Job id",
        pattern=JOB_ID,
        description="Re-use an earlier job id to resume it; empty starts a new job.",
    )


def check_timezone(value: str) -> str:
    """An IANA time zone name, or a clear error for the form."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value
