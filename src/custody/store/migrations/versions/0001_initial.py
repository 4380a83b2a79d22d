"""Custody's store: audit_log (hash-chained, append-only), chunk ledger, dead letters.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from custody.db import UTCDateTime, utc_now

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_AUDIT_COLUMNS = """
    seq bigint NOT NULL,
    occurred_at {ts} NOT NULL,
    recorded_at {ts} NOT NULL,
    event_id {uuid} NOT NULL,
    principal text NOT NULL,
    action text NOT NULL,
    status text NOT NULL,
    severity text NOT NULL,
    resource_type text NOT NULL,
    resource_id text,
    correlation_id text,
    regulation text,
    data_classification text NOT NULL,
    retention_days integer,
    details {json} NOT NULL,
    prev_hash text NOT NULL,
    row_hash text NOT NULL,
    key_id text NOT NULL,
    signature text NOT NULL
"""

# Indexes follow how analysts query the trail: by time, by who, by what, by data class, and PHI.
# Time gets a BRIN index on PostgreSQL: events arrive in time order, so it is tiny and costs
# almost nothing per append, where a B-tree would cost as much as the other indexes together.
_AUDIT_INDEXES = [
    "CREATE INDEX audit_log_occurred_at_idx ON audit_log {brin}(occurred_at)",
    "CREATE INDEX audit_log_principal_idx ON audit_log (principal, occurred_at)",
    "CREATE INDEX audit_log_action_idx ON audit_log (action, occurred_at)",
    "CREATE INDEX audit_log_classification_idx ON audit_log (data_classification, occurred_at)",
    "CREATE INDEX audit_log_phi_idx ON audit_log (occurred_at, principal)"
    " WHERE data_classification = 'phi'",
    "CREATE INDEX audit_log_correlation_idx ON audit_log (correlation_id)"
    " WHERE correlation_id IS NOT NULL",
]

_PG_FUNCTIONS = [
    """
    CREATE FUNCTION custody_audit_log_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    # Monthly partitions, created ahead by `custody audit partitions` (and a scheduled flow).
    # Bounds are UTC month starts whatever the session time zone.
    """
    CREATE FUNCTION custody_audit_ensure_partitions(p_from date, p_months integer)
    RETURNS integer LANGUAGE plpgsql AS $$
    DECLARE
        m date := date_trunc('month', p_from)::date;
        part text;
        created integer := 0;
    BEGIN
        FOR i IN 1..p_months LOOP
            part := format('audit_log_y%sm%s', to_char(m, 'YYYY'), to_char(m, 'MM'));
            IF to_regclass(part) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
                    part, m::timestamp AT TIME ZONE 'UTC',
                    (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
                EXECUTE format(
                    'CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON %I '
                    'FOR EACH STATEMENT EXECUTE FUNCTION custody_audit_log_immutable()', part);
                created := created + 1;
            END IF;
            m := (m + interval '1 month')::date;
        END LOOP;
        RETURN created;
    END $$
    """,
]


def _create_audit_log_postgres() -> None:
    for ddl in _PG_FUNCTIONS:
        op.execute(ddl)
    columns = _AUDIT_COLUMNS.format(ts="timestamptz", uuid="uuid", json="jsonb")
    op.execute(
        f"CREATE TABLE audit_log ({columns}, PRIMARY KEY (seq, occurred_at))"
        " PARTITION BY RANGE (occurred_at)"
    )
    op.execute("CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT")
    for ddl in _AUDIT_INDEXES:
        op.execute(ddl.format(brin="USING brin "))
    # Row triggers on the parent are cloned to every partition; TRUNCATE triggers are not, so
    # the partition function adds one to each partition it creates.
    for table in ("audit_log", "audit_log_default"):
        op.execute(
            f"CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON {table}"
            " FOR EACH STATEMENT EXECUTE FUNCTION custody_audit_log_immutable()"
        )
    op.execute(
        "CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION custody_audit_log_immutable()"
    )
    op.execute("SELECT custody_audit_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 62, 6)")


def _create_audit_log_sqlite() -> None:
    columns = _AUDIT_COLUMNS.format(ts="text", uuid="text", json="text")
    op.execute(f"CREATE TABLE audit_log ({columns}, PRIMARY KEY (seq))")
    for ddl in _AUDIT_INDEXES:
        op.execute(ddl.format(brin=""))
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log"
            f" BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: {verb} refused'); END"
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _create_audit_log_postgres()
    else:
        _create_audit_log_sqlite()

    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("row_hash", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text),
        sa.Column("signature", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("id = 1", name="audit_chain_head_single_row"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "row_hash": "0" * 64, "updated_at": utc_now()}])

    op.create_table(
        "jobs",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("key_column", sa.Text, nullable=False),
        sa.Column("chunk_size", sa.Integer, nullable=False),
        sa.Column("total_chunks", sa.Integer, nullable=False),
        sa.Column("planned_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "job_chunks",
        sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.job_id"), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("lower_key", sa.Text),
        sa.Column("upper_key", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("source_count", sa.BigInteger),
        sa.Column("source_hash", sa.Text),
        sa.Column("target_count", sa.BigInteger),
        sa.Column("target_hash", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("started_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'verified', 'failed')", name="job_chunks_status"
        ),
    )
    op.create_index("job_chunks_status_idx", "job_chunks", ["job_id", "status"])
    op.create_table(
        "dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("job_id", sa.Text, nullable=False),
        sa.Column("item_ref", sa.Text, nullable=False),
        sa.Column("error_type", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failed_at", UTCDateTime, nullable=False),
        sa.Column("replayed_at", UTCDateTime),
    )
    op.create_index(
        "dead_letters_open_idx",
        "dead_letters",
        ["job_id", "item_ref"],
        unique=True,
        postgresql_where=sa.text("replayed_at IS NULL"),
        sqlite_where=sa.text("replayed_at IS NULL"),
    )
