"""Least-privilege PostgreSQL roles for custody's store: which role may do what to which table.

Three roles share one store:

- the **owner** owns every table, runs ``custody db upgrade`` and ``custody db roles``. No
  pipeline and no person connects as it day to day;
- **ingest** (``custody_ingest``) is what pipelines and applications connect as. It appends to
  ``audit_log`` (``SELECT, INSERT``: no ``UPDATE``, ``DELETE`` or ``TRUNCATE``, so the append-only
  rule holds by privilege, with the trigger behind it), moves the signed chain head, and writes the
  job ledger and the domain tables the flows fill;
- **reporting** (``custody_reporting``) reads everything and writes nothing: auditors, BI tools,
  report queries, ``custody audit verify``. The compliance-report *flow* writes its report record
  and audit events, so it runs as ingest like every other flow.

Roles are cluster objects, created once by a DBA (``infra/sql/10-roles.sql``). The grants below
are per table, so the owner re-applies them after every ``custody db upgrade``; re-applying is
idempotent and first revokes whatever else a role was given, so drift is undone. Grants on the
partitioned ``audit_log`` cover its partitions, including those created later: PostgreSQL checks
the parent's privileges for every access through the parent, and refuses direct access to a
partition without its own grant (none is given).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

from custody.errors import ConfigError
from custody.identifiers import check_name, quote_pg

INGEST_ROLE = "custody_ingest"
REPORTING_ROLE = "custody_reporting"

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
# Privileges that can also be granted per column: checked with has_any_column_privilege.
_COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")
PARTITION_FUNCTION = "custody_audit_ensure_partitions(date, integer)"


@dataclass(frozen=True)
class TablePolicy:
    """What the ingest role may do to one table (reporting always gets SELECT only).

    ``serial`` names a column filled from a sequence, which ingest must be allowed to draw from.
    """

    ingest: tuple[str, ...]
    serial: str | None = None
    update_columns: tuple[str, ...] = ()
    why: str = ""

    @property
    def ingest_privileges(self) -> set[str]:
        """Effective privileges, a column-level UPDATE counted as UPDATE."""
        return set(self.ingest) | ({"UPDATE"} if self.update_columns else set())


# Every table custody's migrations create, and what pipelines need of it. A new migration that
# adds a table must add it here; tests/custody/store/test_roles.py fails until it does.
POLICY: dict[str, TablePolicy] = {
    "audit_log": TablePolicy(
        ("SELECT", "INSERT"), why="append only; SELECT for run summaries and verification"
    ),
    "audit_chain_head": TablePolicy(
        ("SELECT",),
        update_columns=("seq", "row_hash", "key_id", "signature", "updated_at"),
        why="appends lock and move the signed head (no INSERT/DELETE; the store id is fixed)",
    ),
    "jobs": TablePolicy(
        ("SELECT", "INSERT"),
        update_columns=("work",),
        why="a job's plan is written once; its work recipe is recorded after it",
    ),
    "job_chunks": TablePolicy(("SELECT", "INSERT", "UPDATE"), why="chunk states change"),
    "dead_letters": TablePolicy(
        ("SELECT", "INSERT", "UPDATE"), serial="id", why="filed, then marked replayed"
    ),
    "lab_results": TablePolicy(("SELECT", "INSERT", "UPDATE"), why="idempotent upsert"),
    "lab_quarantine": TablePolicy(("SELECT", "INSERT"), serial="id"),
    "lab_files": TablePolicy(
        ("SELECT", "INSERT"),
        update_columns=("results",),
        why="a later file's replacement of a result takes it off the earlier file's count",
    ),
    "lab_results_history": TablePolicy(("SELECT", "INSERT"), serial="id"),
    "critical_results": TablePolicy(
        ("SELECT", "INSERT"),
        serial="id",
        update_columns=("acknowledged_at", "acknowledged_by"),
        why="written at detection; only the acknowledgement is filled in later (detected_at is "
        "fixed: the CLIA timeliness report measures from it)",
    ),
    "compliance_reports": TablePolicy(("SELECT", "INSERT")),
    "disclosure_requests": TablePolicy(
        ("SELECT", "INSERT"), why="applications register a patient's request"
    ),
}
OWNER_ONLY = frozenset({"alembic_version"})


@dataclass(frozen=True)
class RoleNames:
    """The two login roles the grants are for (names checked: they are spliced into SQL)."""

    ingest: str = INGEST_ROLE
    reporting: str = REPORTING_ROLE

    def __post_init__(self) -> None:
        check_name(self.ingest, "ingest role")
        check_name(self.reporting, "reporting role")
        if self.ingest == self.reporting:
            raise ValueError("the ingest and reporting roles must be different roles")


@dataclass
class GrantResult:
    """What ``apply_grants`` did, for the command line."""

    schema: str
    tables: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    statements: int = 0


def _q(name: str) -> str:
    """Quote an identifier for PostgreSQL (embedded quotes doubled)."""
    return quote_pg(name)


def grant_statements(
    roles: RoleNames, schema: str = "public", tables: Iterable[str] | None = None
) -> list[str]:
    """The statements that give both roles exactly the policy's privileges.

    Each table's privileges are first revoked from both roles, so applying them again also
    undoes anything granted by hand since. ``tables`` limits them to tables that exist (a store
    at an older revision); by default every table in ``POLICY``.
    """
    s, ingest, reporting = _q(schema), _q(roles.ingest), _q(roles.reporting)
    present = set(POLICY) if tables is None else set(tables)
    out: list[str] = []
    for name, policy in POLICY.items():
        if name not in present:
            continue
        table = f"{s}.{_q(name)}"
        out.append(f"REVOKE ALL ON TABLE {table} FROM {ingest}, {reporting}")
        out.append(f"GRANT {', '.join(policy.ingest)} ON TABLE {table} TO {ingest}")
        if policy.update_columns:
            columns = ", ".join(_q(c) for c in policy.update_columns)
            out.append(f"GRANT UPDATE ({columns}) ON TABLE {table} TO {ingest}")
        out.append(f"GRANT SELECT ON TABLE {table} TO {reporting}")
        if policy.serial is not None:
            sequence = f"{s}.{_q(f'{name}_{policy.serial}_seq')}"
            out.append(f"REVOKE ALL ON SEQUENCE {sequence} FROM {ingest}, {reporting}")
            out.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {ingest}")
    if "audit_log" in present:
        # The monthly partition job runs as ingest, but only audit_log's owner may add a
        # partition: the function runs with its owner's rights, on a fixed search path.
        function = f"{s}.{PARTITION_FUNCTION}"
        out.append(f"ALTER FUNCTION {function} SECURITY DEFINER SET search_path = {s}, pg_temp")
        out.append(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC, {ingest}, {reporting}")
        out.append(f"GRANT EXECUTE ON FUNCTION {function} TO {ingest}")
    return out


def grant_sql(roles: RoleNames | None = None, schema: str = "public") -> str:
    """The grants as a SQL script for a DBA to read or run with psql (``db roles --sql``)."""
    roles = roles or RoleNames()
    lines = [
        "-- Grants for custody's least-privilege roles; generated by `custody db roles --sql`.",
        "-- Run as the store's owner after every `custody db upgrade` (idempotent).",
        f"-- ingest: {roles.ingest}; reporting: {roles.reporting}; schema: {schema}.",
        "BEGIN;",
        *(f"{statement};" for statement in grant_statements(roles, schema)),
        "COMMIT;",
    ]
    return "\n".join(lines) + "\n"


def _require_postgres(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise ConfigError(
            "roles and grants need PostgreSQL; CUSTODY_DATABASE_URL points at "
            f"{engine.dialect.name}, which has no roles"
        )


def _store_schema(connection: Connection) -> str:
    schema = connection.execute(
        text(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass('audit_log')"
        )
    ).scalar()
    if schema is None:
        raise ConfigError("custody's store has no audit_log here: run `custody db upgrade` first")
    return str(schema)


def _tables(connection: Connection, schema: str) -> list[str]:
    """Tables of the schema, partitions left out (the parent's grants cover them)."""
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "ORDER BY c.relname"
        ),
        {"schema": schema},
    )
    return [str(r[0]) for r in rows]


def _require_roles(connection: Connection, roles: RoleNames) -> None:
    for role in (roles.ingest, roles.reporting):
        exists = connection.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).scalar()
        if exists is None:
            raise ConfigError(
                f"role {role!r} does not exist: a DBA creates it once with infra/sql/10-roles.sql"
            )


def apply_grants(engine: Engine, roles: RoleNames) -> GrantResult:
    """Give both roles exactly the policy's privileges on the store's tables, in one transaction.

    Run it as the owner of the tables (the role that ran ``custody db upgrade``). Tables the
    policy does not know get no privileges for either role and are listed in the result.

    Raises:
        ConfigError: not PostgreSQL, the store is not migrated, or a role does not exist.
    """
    _require_postgres(engine)
    with engine.begin() as connection:
        _require_roles(connection, roles)
        schema = _store_schema(connection)
        present = _tables(connection, schema)
        result = GrantResult(schema=schema)
        result.tables = [t for t in present if t in POLICY]
        result.unknown = [t for t in present if t not in POLICY and t not in OWNER_ONLY]
        statements = grant_statements(roles, schema, result.tables)
        s = _q(schema)
        for name in [*result.unknown, *(t for t in present if t in OWNER_ONLY)]:
            statements.append(
                f"REVOKE ALL ON TABLE {s}.{_q(name)} FROM {_q(roles.ingest)}, {_q(roles.reporting)}"
            )
        for statement in statements:
            connection.execute(text(statement))
        result.statements = len(statements)
    return result


def check_grants(engine: Engine, roles: RoleNames) -> list[str]:
    """Compare what the roles may really do with the policy; an empty list means they match.

    Looks at effective privileges (through PUBLIC and role membership too): every table and
    privilege, the sequences and the partition function, the schema and the database, and that
    neither role is a superuser, bypasses row security or is a member of the tables' owner.
    """
    _require_postgres(engine)
    problems: list[str] = []
    with engine.connect() as connection:
        _require_roles(connection, roles)
        schema = _store_schema(connection)
        present = _tables(connection, schema)
        problems += _check_role_attributes(connection, roles, schema)
        for table in present:
            policy = POLICY.get(table)
            wanted = {
                roles.ingest: policy.ingest_privileges if policy else set(),
                roles.reporting: {"SELECT"} if policy else set(),
            }
            for role, allowed in wanted.items():
                held = _table_privileges(connection, role, f"{schema}.{table}")
                for privilege in sorted(held - allowed):
                    problems.append(f"{role} may {privilege} {table} (policy: {_list(allowed)})")
                for privilege in sorted(allowed - held):
                    problems.append(f"{role} lacks {privilege} on {table}")
            if policy is not None and policy.serial is not None:
                problems += _check_sequence(connection, roles, schema, table, policy.serial)
            if policy is not None and policy.update_columns:
                problems += _check_update_columns(connection, roles.ingest, schema, table, policy)
        if "audit_log" in present:
            problems += _check_partition_function(connection, roles, schema)
            problems += _check_partitions(connection, roles, schema)
    return problems


def _list(privileges: set[str]) -> str:
    return ", ".join(p for p in TABLE_PRIVILEGES if p in privileges) or "none"


def _table_privileges(connection: Connection, role: str, table: str) -> set[str]:
    checks = ", ".join(
        f"{'has_any_column_privilege' if p in _COLUMN_PRIVILEGES else 'has_table_privilege'}"
        f"(:role, CAST(:table AS regclass), '{p}')"
        for p in TABLE_PRIVILEGES
    )
    row = connection.execute(text(f"SELECT {checks}"), {"role": role, "table": table}).one()
    return {p for p, held in zip(TABLE_PRIVILEGES, row, strict=True) if held}


def _check_update_columns(
    connection: Connection, role: str, schema: str, table: str, policy: TablePolicy
) -> list[str]:
    """A column-level UPDATE must stay on exactly its columns, never widen to the table."""
    rows = connection.execute(
        text(
            "SELECT attname, has_column_privilege(:role, attrelid, attnum, 'UPDATE') "
            "FROM pg_attribute WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 "
            "AND NOT attisdropped"
        ),
        {"role": role, "table": f"{schema}.{table}"},
    ).all()
    updatable = {str(name) for name, held in rows if held}
    if updatable == set(policy.update_columns):
        return []
    return [
        f"{role} may UPDATE columns {', '.join(sorted(updatable)) or 'none'} of {table} "
        f"(policy: {', '.join(policy.update_columns)})"
    ]


def _check_role_attributes(connection: Connection, roles: RoleNames, schema: str) -> list[str]:
    problems: list[str] = []
    owner = connection.execute(
        text("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(:t)"),
        {"t": f"{schema}.audit_log"},
    ).scalar_one()
    database = connection.execute(text("SELECT current_database()")).scalar_one()
    for role in (roles.ingest, roles.reporting):
        row = connection.execute(
            text(
                "SELECT rolsuper, rolbypassrls, pg_has_role(:role, :owner, 'MEMBER'), "
                "has_schema_privilege(:role, :schema, 'USAGE'), "
                "has_schema_privilege(:role, :schema, 'CREATE'), "
                "has_database_privilege(:role, :db, 'CONNECT'), "
                "has_database_privilege(:role, :db, 'TEMPORARY') "
                "FROM pg_roles WHERE rolname = :role"
            ),
            {"role": role, "owner": owner, "schema": schema, "db": database},
        ).one()
        superuser, bypass, member, usage, create, connect, temporary = row
        if superuser:
            problems.append(f"{role} is a superuser: no privilege check applies to it")
        if bypass:
            problems.append(f"{role} bypasses row-level security")
        if member:
            problems.append(f"{role} is a member of the tables' owner {owner}")
        if create:
            problems.append(f"{role} may CREATE objects in schema {schema}")
        if not usage:
            problems.append(f"{role} lacks USAGE on schema {schema}")
        if not connect:
            problems.append(f"{role} lacks CONNECT on database {database}")
        if role == roles.ingest and not temporary:
            problems.append(f"{role} lacks TEMPORARY on {database} (lab upserts use a temp table)")
    return problems


def _check_sequence(
    connection: Connection, roles: RoleNames, schema: str, table: str, column: str
) -> list[str]:
    sequence = connection.execute(
        text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": f"{schema}.{table}", "c": column}
    ).scalar()
    if sequence is None:
        return [f"{table}.{column} has no sequence (policy expects one)"]
    problems: list[str] = []
    for role, want in ((roles.ingest, True), (roles.reporting, False)):
        has = connection.execute(
            text("SELECT has_sequence_privilege(:role, :seq, 'USAGE')"),
            {"role": role, "seq": sequence},
        ).scalar()
        if bool(has) != want:
            problems.append(f"{role} {'lacks' if want else 'has'} USAGE on sequence {sequence}")
    return problems


def _check_partition_function(connection: Connection, roles: RoleNames, schema: str) -> list[str]:
    row = connection.execute(
        text(
            "SELECT p.prosecdef, has_function_privilege(:ingest, p.oid, 'EXECUTE'), "
            "has_function_privilege(:reporting, p.oid, 'EXECUTE') "
            "FROM pg_proc p WHERE p.oid = to_regprocedure(:f)"
        ),
        {
            "ingest": roles.ingest,
            "reporting": roles.reporting,
            "f": f"{schema}.{PARTITION_FUNCTION}",
        },
    ).first()
    if row is None:
        return [f"function {PARTITION_FUNCTION} is missing: run `custody db upgrade`"]
    problems: list[str] = []
    if not row[0]:
        problems.append(f"{PARTITION_FUNCTION} is not SECURITY DEFINER: ingest cannot add months")
    if not row[1]:
        problems.append(f"{roles.ingest} lacks EXECUTE on {PARTITION_FUNCTION}")
    if row[2]:
        problems.append(f"{roles.reporting} may EXECUTE {PARTITION_FUNCTION}")
    return problems


def _check_partitions(connection: Connection, roles: RoleNames, schema: str) -> list[str]:
    """Partitions must carry no privileges of their own: all access goes through audit_log."""
    partitions = connection.execute(
        text(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:parent)"
        ),
        {"parent": f"{schema}.audit_log"},
    ).scalars()
    problems: list[str] = []
    for partition in partitions:
        for role in (roles.ingest, roles.reporting):
            held = _table_privileges(connection, role, partition)
            if held:
                problems.append(f"{role} has direct {_list(held)} on partition {partition}")
    return problems
