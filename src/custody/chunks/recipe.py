"""A job's chunk work as a recipe in the ledger, so a later flow can replay its dead letters.

Chunk work is a frozen dataclass of references: connection names, table names, a cutoff,
options. Its recipe is the class's import path and its fields as JSON, plus the audit verbs of
the job. Nothing in it is data or a secret (connections are resolved from settings when the
work runs), and it stays in custody's own store, never in Prefect.

Only classes of the ``custody`` package are loaded back, and a recipe is recorded only when it
rebuilds exactly the work that ran: a replay runs a chunk the way its job did, or not at all.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from custody.chunks.models import JobSpec
from custody.errors import CustodyError

TRUSTED_PACKAGE = "custody."


class ReplayRefusedError(CustodyError):
    """A dead letter cannot be replayed as recorded; the message says why and what to do."""


class WorkRecipe(BaseModel):
    """How to rebuild a job's chunk work, and the audit actions its chunks use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    work: str
    params: dict[str, Any]
    audit_prefix: str
    audit_verbs: tuple[str, str]


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def recipe_for(spec: JobSpec, work: object) -> WorkRecipe | None:
    """The recipe of ``work``, or None when it cannot be rebuilt exactly (then: not replayable).

    Plain functions, lambdas and classes outside the ``custody`` package have no recipe.
    """
    cls = type(work)
    if not dataclasses.is_dataclass(work) or not cls.__module__.startswith(TRUSTED_PACKAGE):
        return None
    adapter: TypeAdapter[Any] = TypeAdapter(cls)
    try:
        params = adapter.dump_python(work, mode="json")
        if adapter.validate_python(params) != work:
            return None
    except (ValueError, TypeError, ValidationError):
        return None
    return WorkRecipe(
        work=_class_path(cls),
        params=params,
        audit_prefix=spec.audit_prefix,
        audit_verbs=spec.audit_verbs,
    )


def load_work(recipe: WorkRecipe) -> Any:
    """Rebuild the work a recipe describes.

    Raises:
        ReplayRefusedError: the class is outside custody, gone, or its fields changed.
    """
    module_name, _, name = recipe.work.partition(":")
    if not module_name.startswith(TRUSTED_PACKAGE) or not name:
        raise ReplayRefusedError(f"work {recipe.work!r} is not a custody chunk work class")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ReplayRefusedError(
            f"work class {recipe.work!r} no longer exists: re-run the job's flow instead"
        ) from exc
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise ReplayRefusedError(f"work {recipe.work!r} is not a chunk work class")
    try:
        return TypeAdapter(cls).validate_python(recipe.params)
    except ValidationError as exc:
        raise ReplayRefusedError(
            f"the recorded parameters of {recipe.work!r} no longer fit the class "
            f"({exc.error_count()} errors): re-run the job's flow instead"
        ) from None
