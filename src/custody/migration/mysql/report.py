"""The MySQL part of a migration's artifacts: column mapping, rules fired, zero dates, notes.

Names, types and counts only: never a value.
"""

from __future__ import annotations

from typing import Any

from custody.migration.catalog import TableInfo
from custody.migration.mysql.plan import mapping_rows
from custody.migration.mysql.source import MySQLTableInfo, cast_summary
from custody.prefect_glue import publish_markdown


def cast_section(infos: list[TableInfo]) -> dict[str, Any]:
    """What the migration report says about casts ({} for sources other than MySQL)."""
    return cast_summary(infos)


def cast_lines(casts: dict[str, Any]) -> list[str]:
    """Markdown lines for the report: zero dates per column, what was not migrated."""
    lines = ["", "## Cast rules (MySQL/MariaDB source)", ""]
    zeros = casts.get("zero_dates", {})
    if zeros:
        lines += [
            "Zero and partial-zero dates made NULL:",
            "",
            *[f"- `{col}`: {n}" for col, n in sorted(zeros.items())],
            "",
        ]
    else:
        lines += ["No zero dates.", ""]
    notes = [f"- {n}" for n in casts.get("not_migrated", [])] or ["- nothing"]
    lines += ["Not migrated (listed, not copied):", "", *notes]
    return lines


def publish_cast_plan(job_id: str, infos: list[TableInfo]) -> None:
    """Dry run: every table's column mapping and the rules that fire (no-op for other sources)."""
    plans = [i.plan for i in infos if isinstance(i, MySQLTableInfo) and i.plan is not None]
    if not plans:
        return
    lines = [
        f"# Cast plan `{job_id}` (dry run: nothing was changed)",
        "",
        "| table | column | MySQL | PostgreSQL | rules that fire |",
        "|---|---|---|---|---|",
    ]
    for plan in plans:
        for row in mapping_rows(plan):
            lines.append(
                f"| {row['table']} | {row['column']} | {row['mysql']} | {row['postgresql']} | "
                f"{row['rules']} |"
            )
    lines += cast_lines(cast_summary(infos))
    publish_markdown(f"migration-casts-{job_id}", "\n".join(lines))
