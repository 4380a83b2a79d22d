"""Flows send PHI only to object stores the site configured, by name (issue 15 item 7).

The attack: a caller of the Prefect API starts ``compliance-report`` (or an archive, a restore, an
export) with ``destination`` set to a ``file://`` directory of their choosing, an ``ftp://``
server, a relative path or a bucket of their own. Before, the report ran its PHI queries and only
then was the store refused (or used). Now the parameter is a name among the configured stores,
the form offers exactly those names, and the flow checks it before anything is queried.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, func, select

from custody.errors import ConfigError
from custody.reports.tables import compliance_reports
from custody.settings import reset_settings_cache
from custody.store.tables import audit_log
from flows.archive import ArchiveParams, RestoreParams, archive_to_s3
from flows.compliance_report import ReportParams, compliance_report
from flows.examples.export_table import ExportTableParams, export_table
from tests.support.env import set_custody_env

HOSTILE = [
    "file:///tmp/exfil",
    "file://attacker.example/share",
    "ftp://attacker.example/drop",
    "s3://attacker-bucket/loot",
    "../../tmp/exfil",
    "exfil/reports",
    "/tmp/exfil",
    "offsite_typo",  # looks like a name, but nobody configured it
]
POLICY = {"name": "labs", "table": "lab_results", "timestamp_column": "resulted_at",
          "retention_days": 365}  # fmt: skip
FORMS: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (ReportParams, {}, "destination"),
    (ArchiveParams, {"database": "ehr", "policies": [POLICY]}, "destination"),
    (RestoreParams, {"database": "ehr", "table": "t"}, "source"),
    (ExportTableParams, {"source": "ehr", "table": "t", "key_column": "id"}, "destination"),
]


@pytest.fixture
def offsite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A second configured store, ``offsite``, beside the default one."""
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", (tmp_path / "objects").as_uri())
    monkeypatch.setenv("CUSTODY_OBJECT_STORES__OFFSITE", (tmp_path / "offsite").as_uri())
    reset_settings_cache()
    return tmp_path / "offsite"


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(
    ("model", "base", "field"), FORMS, ids=lambda x: getattr(x, "__name__", "")
)
def test_issue_15_item_7_forms_refuse_any_store_but_a_configured_name(
    offsite: Path, model: type[BaseModel], base: dict[str, Any], field: str, value: str
) -> None:
    """Issue 15 item 7: URLs, paths and unknown names are refused, naming the field."""
    with pytest.raises(ValidationError) as refused:
        model.model_validate({**base, field: value})
    assert [e["loc"] for e in refused.value.errors()] == [(field,)]
    for name in ("default", "offsite"):
        assert getattr(model.model_validate({**base, field: name}), field) == name


def test_issue_15_item_7_the_form_is_a_drop_down_of_configured_stores(offsite: Path) -> None:
    """Issue 15 item 7: the UI (and the server's schema check) offers exactly the names."""
    for flow in (compliance_report, archive_to_s3, export_table):
        schema = parameter_schema(flow).model_dump()
        definitions = schema["definitions"]
        form = next(d for d in definitions.values() if "destination" in d.get("properties", {}))
        prop = form["properties"]["destination"]
        assert prop["enum"] == ["default", "offsite"], flow.name
        assert prop["default"] == "default"


def test_issue_15_item_7_report_to_a_hostile_store_queries_nothing(
    prefect_api: str, pg_store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 item 7: the attack as run: nothing queried, audited, written or recorded."""
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", (tmp_path / "objects").as_uri())
    reset_settings_cache()
    exfil = tmp_path / "exfil"
    october = {"period": "custom", "period_start": date(2026, 10, 1),
               "period_end": date(2026, 11, 1)}  # fmt: skip
    # Through the flow, as the API would start it: the parameters are refused on entry.
    state = compliance_report(
        params={**october, "destination": exfil.as_uri()},
        return_state=True,
    )
    assert state.is_failed()
    # Past the form (a model built without validation): the flow's first step refuses it.
    for value in (exfil.as_uri(), "ftp://attacker.example/drop", "exfil"):
        forged = ReportParams.model_construct(
            **{**ReportParams(**october).model_dump(), "destination": value}  # type: ignore[arg-type]
        )
        with pytest.raises(ConfigError, match="object store"):
            compliance_report.fn(forged)
    with pg_store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(compliance_reports)).scalar() == 0
    assert not exfil.exists() and not (tmp_path / "objects").exists()
