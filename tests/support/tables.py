"""Source tables for chunk and copy tests, filled by the database itself (fast, no PHI)."""

from __future__ import annotations

from sqlalchemy import Engine, text


def make_keys(engine: Engine, rows: int, table: str = "items") -> None:
    """A narrow PostgreSQL table (id, label) for tests about chunk mechanics, not types."""
    with engine.begin() as c:
        c.execute(text(f"CREATE TABLE {table} (id bigint PRIMARY KEY, label text NOT NULL)"))
        c.execute(
            text(f"INSERT INTO {table} SELECT g, 'k' || g FROM generate_series(1, :n) g"),
            {"n": rows},
        )


def make_items(
    engine: Engine, rows: int, table: str = "items", start: int = 1, step: int = 1
) -> None:
    """A table ``items`` (id, label, amount, at, payload) with ``rows`` rows."""
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.execute(
                text(
                    f"CREATE TABLE {table} (id bigint PRIMARY KEY, label text NOT NULL, "
                    "amount numeric(12,2), at timestamptz, payload bytea)"
                )
            )
            c.execute(
                text(
                    f"INSERT INTO {table} SELECT {start} + (g - 1) * {step}, 'item-' || g || ' é', "
                    "(g % 100000) / 100.0, "
                    "timestamptz '2026-01-01 00:00Z' + g * interval '1 second', "
                    "decode(md5(g::text), 'hex') FROM generate_series(1, :n) g"
                ),
                {"n": rows},
            )
        else:
            c.execute(
                text(
                    f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, label TEXT NOT NULL, "
                    "amount NUMERIC(12,2), at TEXT, payload BLOB)"
                )
            )
            c.execute(
                text(
                    f"WITH RECURSIVE g(n) AS (SELECT 1 WHERE :n >= 1 "
                    "UNION ALL SELECT n + 1 FROM g WHERE n < :n) "
                    f"INSERT INTO {table} SELECT {start} + (n - 1) * {step}, 'item-' || n || ' é', "
                    "(n % 100000) / 100.0, datetime(1767225600 + n, 'unixepoch'), randomblob(8) "
                    "FROM g"
                ),
                {"n": rows},
            )
