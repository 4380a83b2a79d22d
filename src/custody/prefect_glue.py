"""The only module of the library that imports Prefect: artifacts, events, run context, secrets.

Everything that crosses into Prefect goes through here, so this is where PHI is kept out: only
counts, action names, data classes, sequence numbers, hashes and references are sent.
"""

from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

from sqlalchemy import Engine

from custody.audit import AuditEvent
from custody.audit.queries import run_summary


def current_flow_run_id() -> str | None:
    """Id of the flow run we are inside, used as the audit correlation id."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def load_secret_block(name: str) -> str | None:
    """Value of a Prefect Secret block, or None when no such block exists."""
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name)
    except (ValueError, RuntimeError):
        return None
    value = block.get()  # type: ignore[union-attr]  # sync context: a Secret, not a coroutine
    return str(value)


def secret_block_names(prefix: str) -> list[str]:
    """Names of the Secret blocks starting with ``prefix`` (never their values); [] on error."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            documents = client.read_block_documents(include_secrets=False)
    except Exception:  # best effort: a form without choices still works
        return []
    return [
        d.name
        for d in documents
        if d.name and d.name.startswith(prefix) and d.block_type and d.block_type.slug == "secret"
    ]


def emit_critical_event(event: AuditEvent, seq: int) -> None:
    """Announce a critical audit event to Prefect, so an automation can notify someone.

    The payload identifies the event by sequence number and action only: the resource id and
    details stay in audit_log, inside the HIPAA boundary.
    """
    from prefect.events import emit_event

    emit_event(
        event=f"custody.{event.action}",
        resource={
            "prefect.resource.id": f"custody.audit-event.{seq}",
            "prefect.resource.name": event.action,
            "custody.severity": event.severity.value,
        },
        payload=critical_event_payload(event, seq),
    )


def critical_event_payload(event: AuditEvent, seq: int) -> dict[str, object]:
    """What Prefect learns of a critical event: its sequence number and action.

    For lab alerts also who called it critical and whether the result sits in quarantine
    (stage and structural position only: never the value, the patient or the reason).
    """
    return {
        "audit_seq": seq,
        "action": event.action,
        "status": event.status.value,
        "resource_type": event.resource_type,
        "data_classification": event.data_classification.value,
        "occurred_at": event.occurred_at.isoformat(),
        **{k: event.details[k] for k in _CRITICAL_PAYLOAD_KEYS if k in event.details},
    }


_CRITICAL_PAYLOAD_KEYS = ("alert_source", "quarantined", "quarantine_stage", "quarantine_position")


def artifact_key(text: str) -> str:
    """Artifact keys must be lowercase letters, digits and dashes."""
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    return "-".join(part for part in cleaned.split("-") if part)[:100]


def publish_run_audit(engine: Engine, correlation_id: str, title: str) -> dict[str, int]:
    """Turn a run's audit events into a table artifact and a markdown summary.

    Returns:
        Event counts by status, for the caller's own summary.
    """
    title = _without_repeated_prefix(title)
    rows = run_summary(engine, correlation_id)
    publish_table(
        f"{title}-audit",
        rows or [{"action": "(none)", "events": 0}],
        f"Audit events written by this run ({title}); no resource ids or details.",
    )
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + int(row["events"])
    total = sum(by_status.values())
    lines = [
        f"# {title}: audit trail",
        "",
        f"{total} audit events were chained and signed for this run"
        + (
            f" (seq {rows[0]['first_seq']} to {max(r['last_seq'] for r in rows)})." if rows else "."
        ),
        "",
        "| action | status | events |",
        "|---|---|---|",
        *[f"| `{r['action']}` | {r['status']} | {r['events']} |" for r in rows],
        "",
        "Verify the whole chain with `custody audit verify`.",
    ]
    publish_markdown(f"{title}-audit-summary", "\n".join(lines))
    return by_status


def _without_repeated_prefix(title: str) -> str:
    """``migrate-migrate-<run>`` -> ``migrate-<run>``: a default job id already names its flow."""
    first, _, rest = title.partition("-")
    return rest if rest.startswith(f"{first}-") else title


class ProgressReporter:
    """A Prefect progress artifact with done/total and an ETA in its description."""

    def __init__(self, title: str, total: int, unit: str = "chunks") -> None:
        """Create the artifact at 0%."""
        from prefect.artifacts import create_progress_artifact

        self.title = title
        self.total = max(total, 0)
        self.unit = unit
        self.done = 0
        self._started = time.monotonic()
        self._artifact_id: UUID = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0 if self.total else 100.0,
            key=artifact_key(f"{title}-progress"),
            description=self._describe(),
        )

    def advance(self, n: int = 1, **extra: Any) -> None:
        """Count ``n`` more units done and refresh percentage and ETA."""
        from prefect.artifacts import update_progress_artifact

        self.done += n
        update_progress_artifact(
            self._artifact_id, progress=self.percent, description=self._describe(**extra)
        )

    @property
    def percent(self) -> float:
        """Done so far, 0 to 100."""
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)

    def _describe(self, **extra: Any) -> str:
        elapsed = time.monotonic() - self._started
        parts = [f"{self.title}: {self.done}/{self.total} {self.unit}"]
        if 0 < self.done < self.total:
            eta = elapsed / self.done * (self.total - self.done)
            parts.append(f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        parts += [f"{k}={v}" for k, v in extra.items()]
        return ", ".join(parts)


def publish_batch_result(title: str, job_id: str, result: Any, seconds: float) -> None:
    """Summary table and markdown report of a chunked job (a ``BatchResult``)."""
    publish_table(
        f"{title}-summary",
        [
            {
                "job_id": job_id,
                "status": result.status,
                "chunks": result.total,
                "verified_now": result.successful,
                "already_verified": result.skipped,
                "failed": result.failed,
                "rows": result.rows,
                "seconds": round(seconds, 2),
                "rows_per_s": round(result.rows / seconds) if seconds > 0 else None,
            }
        ],
        f"{title}: chunk counts and throughput",
    )
    lines = [
        f"# {title}: {result.status}",
        "",
        f"- job `{job_id}`: {result.total} chunks, {result.successful} verified in this run, "
        f"{result.skipped} already verified, {result.failed} failed",
        f"- {result.rows} rows in {seconds:.1f} s",
    ]
    if result.failures:
        lines += ["", "## Failed chunks", "", "| chunk | reason |", "|---|---|"]
        lines += [f"| `{f.ref}` | {f.error} |" for f in result.failures[:200]]
        lines += ["", "Full errors are in the `job_chunks` ledger and `dead_letters` table."]
    publish_markdown(f"{title}-report", "\n".join(lines))


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table artifact (values must be JSON-native: counts, names, statuses)."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        table=rows or [{"note": "(empty)"}], key=artifact_key(key), description=description
    )


def publish_markdown(key: str, markdown: str) -> str:
    """A markdown artifact; returns its id (for :func:`update_markdown`)."""
    from prefect.artifacts import create_markdown_artifact

    return str(create_markdown_artifact(markdown, key=artifact_key(key)))


def update_markdown(artifact_id: str, markdown: str) -> None:
    """Rewrite a markdown artifact in place (e.g. a request once it has been answered)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate

    with get_client(sync_client=True) as client:
        client.update_artifact(UUID(artifact_id), ArtifactUpdate(data=markdown))


def publish_location(
    key: str, location: str, description: str, *, single_object: bool = False
) -> str:
    """A markdown artifact saying in words where something is, and the command that gets it.

    Not a link: a browser refuses ``file://`` links from the Prefect UI, and a presigned S3 URL
    would hand whoever reads Prefect a report that can name patients, outside the store's own
    access control. So: the path or ``s3://`` key, and a command for someone who has access.

    Args:
        key: the artifact key.
        location: a ``file://`` or ``s3://`` URI from ``ObjectStore.location`` (never credentials).
        description: what is there, e.g. "phi_access report (HTML; CSV beside it)".
        single_object: one object (a report) rather than a prefix of many (an archive).
    """
    markdown = "\n".join([f"# {description}", "", *where_text(location, single_object)])
    return publish_markdown(key, markdown)


def where_text(location: str, single_object: bool) -> list[str]:
    """Markdown lines: where ``location`` is, and how to open or fetch it."""
    from urllib.parse import unquote, urlparse

    if location.startswith("file://"):
        path = unquote(urlparse(location).path)
        lines = [f"A {'file' if single_object else 'directory'} on the machine (or volume) where "
                 "the flow run ran:", "", f"`{path}`", ""]  # fmt: skip
        if single_object:
            return [*lines, f"Open it there with `xdg-open '{path}'` (macOS: `open '{path}'`), "
                    f"or copy it out with its checksum checked: `custody store get '{location}' "
                    f"-o {PurePosixPath(path).name}`."]  # fmt: skip
        return [*lines, f"List it there with `ls -lR '{path}'`."]
    lines = [f"In the object store at `{location}`.", ""]
    if single_object:
        name = PurePosixPath(location).name
        return [*lines, f"Fetch it, checksum checked, with custody's store credentials: "
                f"`custody store get '{location}' -o {name}` (or `aws s3 cp '{location}' {name}`). "
                "No download link is published here: the store's access control decides who "
                "reads it."]  # fmt: skip
    return [*lines, f"List it with `aws s3 ls --recursive '{location}/'`."]


def install_automation(
    spec: dict[str, Any], block_name: str, webhook_url: str | None = None
) -> tuple[str, str]:
    """Create (or replace) an automation whose notification goes to the block ``block_name``.

    Args:
        spec: one automation as in ``infra/automations/*.yaml``; its ``send-notification``
            actions get the block's id.
        block_name: an existing notification block, or the name to save the webhook under.
        webhook_url: when given, a Custom Webhook block posting ``{"subject", "text"}`` as JSON
            to this URL is saved as ``block_name`` first (replacing one of that name).

    Returns:
        (block id, automation id).

    Raises:
        ConfigError: no block of that name, or several of different types.
    """
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    from custody.errors import ConfigError

    if webhook_url:
        webhook = CustomWebhookNotificationBlock(  # type: ignore[call-arg]  # optional fields
            name="custody", url=webhook_url, method="POST",
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
        )  # fmt: skip
        block_id = str(webhook.save(block_name, overwrite=True))
    else:
        with get_client(sync_client=True) as client:
            found = [d for d in client.read_block_documents(include_secrets=False)
                     if d.name == block_name]  # fmt: skip
        if len(found) != 1:
            what = "no block" if not found else f"{len(found)} blocks"
            raise ConfigError(
                f"{what} named {block_name!r} on this Prefect server: create a notification "
                "block (UI: Blocks, +) or pass --webhook-url URL to create a Custom Webhook one"
            )
        block_id = str(found[0].id)
    spec = {**spec, "actions": [
        {**a, "block_document_id": block_id} if a.get("type") == "send-notification" else a
        for a in spec.get("actions", [])
    ]}  # fmt: skip
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(spec["name"]):
            client.delete_automation(old.id)
    created = Automation.model_validate(spec).create()
    assert isinstance(created, Automation)  # called from sync code: not a coroutine
    return block_id, str(created.id)


def configured_api_url() -> str | None:
    """The Prefect API this process would talk to; None means a temporary local server."""
    from prefect.settings import PREFECT_API_URL

    value = PREFECT_API_URL.value()
    return str(value) if value else None
