"""Table descriptions for the generic (non-PostgreSQL) path, from SQLAlchemy reflection."""

from __future__ import annotations

from sqlalchemy import Engine, Integer, String, inspect

from custody.identifiers import reflect_table
from custody.migration.catalog import TableInfo


def list_tables_generic(engine: Engine) -> list[str]:
    """Tables of the default schema."""
    return sorted(inspect(engine).get_table_names())


def describe_table_generic(engine: Engine, name: str) -> TableInfo:
    """Columns, primary key and chunk key of a table on any engine."""
    table = reflect_table(engine, name)
    pk = tuple(c.name for c in table.primary_key.columns)
    key = next(
        (c.name for c in table.primary_key.columns if isinstance(c.type, Integer | String)), None
    )
    with engine.connect() as c:
        from sqlalchemy import func, select

        rows = int(c.execute(select(func.count()).select_from(table)).scalar_one())
    return TableInfo(
        schema="",
        name=name,
        columns=tuple(c.name for c in table.columns),
        key_column=key,
        binary_safe=False,
        not_null=tuple(c.name for c in table.columns if not c.nullable),
        primary_key=pk,
        estimated_rows=rows,
    )
