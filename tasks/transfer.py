"""Tasks that prepare and move tables between named connections."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.identifiers import reflect_table
from custody.transfer.generic import ensure_target_table
from tasks.retry import retry_if_transient
from tasks.runtime import runtime


@task(
    name="prepare-target-table",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
)
def prepare_target_table(source: str, target: str, table: str) -> bool:
    """Create the target table from the reflected source when missing; True if it was created."""
    rt = runtime()
    source_engine, target_engine = rt.engine(source), rt.engine(target)
    from sqlalchemy import inspect

    existed = inspect(target_engine).has_table(table)
    ensure_target_table(reflect_table(source_engine, table), target_engine)
    return not existed
