"""Every deployment's parameter schema: the Prefect UI form, and the server's gate on API runs.

The schema is what Prefect generates from the flow's signature (the same function `prefect
deploy` and `serve` use), so these tests see the form a user sees: each field titled and
described, choices as enums, defaults filled in. Then the server, which enforces the schema on
`POST /deployments/{id}/create_flow_run`, must refuse a bad parameter set naming the field.
"""

from __future__ import annotations

import enum
import os
import typing
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from flows.deployments import DeploymentSpec, build_deployments, deployment_specs, load_project
from tests.support.prefect_server import api_call, deployed_custody

SPECS = deployment_specs(load_project())


def _params_model(spec: DeploymentSpec) -> type[BaseModel]:
    hints = typing.get_type_hints(spec.load_flow().fn)
    model = hints["params"]
    assert isinstance(model, type) and issubclass(model, BaseModel), spec.name
    return model


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The params model and every model nested in its fields (e.g. RetentionPolicy)."""
    found = [model]
    for info in model.model_fields.values():
        for inner in _leaves(info.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in found:
                found += _models(inner)
    return found


def _leaves(annotation: Any) -> list[Any]:
    """Types inside Optional[...], list[...], dict values, unions; Literal kept whole."""
    if typing.get_origin(annotation) is typing.Literal:
        return [annotation]
    args = typing.get_args(annotation)
    return [leaf for arg in args for leaf in _leaves(arg)] if args else [annotation]


def _choices(annotation: Any) -> set[Any] | None:
    """The allowed values of a Literal or Enum field (inside Optional/list), else None."""
    for leaf in _leaves(annotation):
        if typing.get_origin(leaf) is typing.Literal:
            return set(typing.get_args(leaf))
        if isinstance(leaf, type) and issubclass(leaf, enum.Enum):
            return {member.value for member in leaf}
    return None


def _schema_enum(prop: dict[str, Any], definitions: dict[str, Any]) -> set[Any] | None:
    """The enum a schema property offers, following $ref, anyOf/allOf and array items."""
    if "enum" in prop:
        return set(prop["enum"])
    if "$ref" in prop:
        return _schema_enum(definitions[prop["$ref"].rsplit("/", 1)[1]], definitions)
    for key in ("anyOf", "allOf"):
        for option in prop.get(key, []):
            if (found := _schema_enum(option, definitions)) is not None:
                return found
    if "items" in prop:
        return _schema_enum(prop["items"], definitions)
    if isinstance(prop.get("additionalProperties"), dict):  # dict[str, Literal[...]]
        return _schema_enum(prop["additionalProperties"], definitions)
    return None


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_form_field_has_a_title_a_description_its_choices_and_its_default(
    spec: DeploymentSpec,
) -> None:
    schema = parameter_schema(spec.load_flow()).model_dump()
    assert schema["required"] == ["params"]
    # The form's top-level field, described from the flow docstring's Args section.
    assert schema["properties"]["params"].get("description"), spec.name
    definitions = schema["definitions"]
    params = _params_model(spec)
    form = definitions[params.__name__]
    assert form["title"] != params.__name__, f"{spec.name}: the form needs a human title"
    assert form.get("description"), spec.name
    problems = []
    for model in _models(params):
        properties = definitions[model.__name__]["properties"]
        for name, info in model.model_fields.items():
            prop, where = properties[name], f"{model.__name__}.{name}"
            for key in ("title", "description"):
                if not (isinstance(prop.get(key), str) and prop[key].strip()):
                    problems.append(f"{where}: no {key}")
            if not info.is_required():
                expected = to_jsonable_python(info.get_default(call_default_factory=True))
                if prop.get("default", "<missing>") != expected:
                    problems.append(f"{where}: default {prop.get('default', '<missing>')!r}")
            choices = _choices(info.annotation)
            if choices is not None and _schema_enum(prop, definitions) != choices:
                problems.append(f"{where}: choices {choices} not an enum in the schema")
    assert not problems, f"{spec.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_default_parameters_in_prefect_yaml_are_valid_for_their_flow(
    spec: DeploymentSpec,
) -> None:
    """A scheduled run with the file's defaults must not fail on its own parameters."""
    params = _params_model(spec)
    for parameters in [spec.raw.get("parameters")] + [
        s.get("parameters") for s in spec.raw.get("schedules", [])
    ]:
        if parameters:
            params.model_validate(parameters["params"])


def test_serve_builds_each_deployment_exactly_as_prefect_yaml_declares_it() -> None:
    built = {d.name: d for d in build_deployments(schedules_active=False)}
    assert list(built) == [s.name for s in SPECS]
    for spec in SPECS:
        deployment, raw = built[spec.name], spec.raw
        assert deployment.entrypoint == f"{spec.module}.{spec.function}"
        assert deployment.description == raw["description"]
        assert deployment.tags == raw["tags"]
        assert deployment.parameters == raw.get("parameters", {})
        assert deployment.enforce_parameter_schema is True
        assert deployment._parameter_openapi_schema is not None
        declared = raw.get("schedules", [])
        assert len(deployment.schedules) == len(declared), spec.name
        for made, wanted in zip(deployment.schedules, declared, strict=True):
            assert made.schedule.cron == wanted["cron"]  # type: ignore[union-attr]
            assert made.schedule.timezone == wanted["timezone"]  # type: ignore[union-attr]
            assert made.parameters == wanted.get("parameters", {})
            assert made.active is False  # --no-schedules
        limit = raw.get("concurrency_limit")
        if limit:
            assert deployment.concurrency_limit == limit["limit"]
            assert deployment.concurrency_options is not None
            assert (
                deployment.concurrency_options.collision_strategy.value
                == (limit["collision_strategy"])
            )


# Each: a deployment, a parameter set a caller might send, the field the refusal must name.
BAD_RUNS = [
    ("ingest-lab-results", {"source": "store:inbox", "format": "pdf"}, "params.format"),
    ("ingest-lab-results", {"source": "store:inbox", "payload": "MSH|^~\\&|..."}, "payload"),
    ("archive-to-s3", {"database": "ehr", "policies": []}, "params.policies"),
    ("archive-to-s3", {"database": "postgresql://u:p@h/db", "policies": [{}]}, "params.database"),
    # The server checks types, patterns, ranges and choices, not string formats (a date-time
    # "yesterday" passes it; the flow's own validation refuses it when the run starts).
    ("restore-from-archive", {"database": "ehr", "archive_ids": "a1b2"}, "params.archive_ids"),
    ("migrate-tables", {"source": "legacy", "target": "new", "chunk_size": 0}, "chunk_size"),
    ("copy-table", {"source": "legacy", "target": "warehouse"}, "table"),
    ("compliance-report", {"period": "yesterday"}, "params.period"),
    # Issue 15 item 7: a store is a configured name, never a URL the caller chooses.
    ("compliance-report", {"destination": "ftp://attacker.example/x"}, "params.destination"),
    ("audit-maintenance", {"months_ahead": 100}, "params.months_ahead"),
    ("replay-dead-letters", {"max_letters": "all"}, "params.max_letters"),
    ("anchor-audit-chain", {"object_lock": "off"}, "params.object_lock"),
]


@pytest.mark.slow
@pytest.mark.xdist_group("deployed-custody")  # shares the deployed server of test_deployments
def test_the_server_refuses_invalid_parameters_naming_the_field(
    request: pytest.FixtureRequest,
) -> None:
    deployed = deployed_custody(request)
    api, ids = deployed.server.api_url, deployed.deployment_ids()
    assert {name for name, _, _ in BAD_RUNS} == {s.name for s in SPECS}
    before = _flow_run_count(api)
    for name, params, field in BAD_RUNS:
        response = api_call(
            "POST",
            f"{api}/deployments/{ids[name]}/create_flow_run",
            json={"parameters": {"params": params}},
        )
        assert response.status_code == 409, (name, response.text)
        assert field in response.json()["detail"], (name, response.text)
    assert _flow_run_count(api) == before  # nothing was created, nothing will run


def _flow_run_count(api: str) -> int:
    response = api_call("POST", f"{api}/flow_runs/count", json={})
    response.raise_for_status()
    return int(response.json())


def test_connection_fields_offer_the_configured_names_and_reason_is_plain_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The form's connection fields are drop-downs of the configured names; Python is unchanged."""
    from custody.settings import get_settings
    from flows.migrate import MigrateParams, migrate_tables
    from tasks.approval import ApprovalInput

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no Secret blocks to look up
    for name in ("EHR", "LEGACY_EHR"):
        monkeypatch.setenv(f"CUSTODY_CONNECTIONS__{name}", "postgresql://localhost/x")
    get_settings.cache_clear()
    try:
        schema = parameter_schema(migrate_tables).model_dump()
        definitions = schema["definitions"]
        [params] = [
            d for d in definitions.values() if d.get("title") == MigrateParams.model_config["title"]
        ]
        for field in ("source", "target"):
            assert params["properties"][field]["enum"] == ["ehr", "legacy_ehr"]
        assert MigrateParams(source="elsewhere", target="ehr").source == "elsewhere"
    finally:
        get_settings.cache_clear()
    reason = ApprovalInput.model_json_schema()["properties"]["reason"]
    assert (reason["type"], reason["default"]) == ("string", "") and "anyOf" not in reason


def test_serve_drops_a_default_connection_the_site_has_not_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's tour serves with the demo's connections, not prefect.yaml's ``ehr``.

    The form offers only configured names and the server refuses defaults outside them, so
    ``archive-to-s3``'s ``database: ehr`` is dropped (the form asks), its schedule goes off,
    and the operator is told; everything else is served as declared.
    """
    from custody.settings import reset_settings_cache

    for name in [k for k in os.environ if k.startswith("CUSTODY_CONNECTIONS__")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no Secret blocks looked up
    monkeypatch.setenv("CUSTODY_CONNECTIONS__DEMO_EHR", "sqlite:///demo_ehr.db")
    reset_settings_cache()
    try:
        built = {d.name: d for d in build_deployments(schedules_active=True)}
    finally:
        monkeypatch.undo()
        reset_settings_cache()
    archive = built["archive-to-s3"]
    declared = next(s for s in SPECS if s.name == "archive-to-s3").raw["parameters"]["params"]
    assert declared["database"] == "ehr"  # prefect.yaml itself is left as it is
    assert archive.parameters["params"] == {k: v for k, v in declared.items() if k != "database"}
    assert archive.schedules and all(s.active is False for s in archive.schedules)
    assert "archive-to-s3: default params.database='ehr' is not configured here" in (
        capsys.readouterr().err
    )
    for spec in SPECS:
        if spec.name != "archive-to-s3":
            assert built[spec.name].parameters == spec.raw.get("parameters", {}), spec.name
            assert all(s.active is not False for s in built[spec.name].schedules or []
                       if spec.raw.get("schedules")), spec.name  # fmt: skip
