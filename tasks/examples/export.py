"""The export example's own task: check what will leave the database, and where it will go."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.examples.export import exported_columns
from custody.storage import open_store
from tasks.runtime import runtime


# No retries: what fails here is bad input (a misspelt column), and trying again cannot fix it.
@task(name="prepare-export", cache_policy=NO_CACHE, persist_result=False)
def prepare_export(
    source: str,
    table: str,
    key_column: str,
    exclude: list[str],
    destination: str | None,
    prefix: str,
) -> tuple[list[str], str]:
    """The columns to export and the location they go to (names only: safe to show in Prefect).

    Raises:
        InvalidIdentifierError: the table, key or an excluded column does not exist.
    """
    columns = exported_columns(runtime().engine(source), table, key_column, exclude)
    return columns, open_store(destination).location(prefix)
