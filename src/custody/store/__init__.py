"""Custody's own store: schema migrations and table definitions."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from custody.store import tables

__all__ = ["tables", "upgrade"]

_MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the store schema up to ``revision`` (idempotent: a current store is left as is)."""
    # Alembic is imported here, not at the top: every flow process imports the store's tables,
    # and only `custody db upgrade` needs Alembic (about 1 s of import).
    from alembic import command
    from alembic.config import Config

    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
