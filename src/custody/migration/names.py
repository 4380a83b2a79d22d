"""Names in migration job ids and pg_dump options, built so that every legal name works."""

from __future__ import annotations

from custody.identifiers import check_name, safe_id


def table_job_id(job_id: str, table: str) -> str:
    """The ledger job id of one table of a migration.

    Job ids allow only ``[A-Za-z0-9._:-]``; a table may be named ``"Clinic Data"`` or ``"é$"``.
    ``safe_id`` gives every name its own id (a digest keeps ``a b`` and ``a_b`` apart); the real
    name stays in the job's subject, the report and the audit log.
    """
    return f"{job_id}.{safe_id(table)}"


def dump_pattern(name: str) -> str:
    """A pg_dump/pg_restore ``--schema``/``--table`` pattern that matches exactly ``name``.

    In a pattern ``* ? [ ] .`` and upper case are special unless double-quoted; inside double
    quotes every character is literal and a double quote is written twice.
    """
    return '"' + check_name(name).replace('"', '""') + '"'
