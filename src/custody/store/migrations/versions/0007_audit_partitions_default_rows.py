"""Partition upkeep survives events already in the default partition (issue 15 item 8).

PostgreSQL refuses to create a month's partition while the default partition holds rows of that
month ("updated partition constraint for default partition would be violated"), so one event
that landed there first stopped ``audit partitions`` and ``audit-maintenance`` for good. The
function now moves such rows into the new partition in the same transaction: it detaches the
default partition, creates the month, copies the month's rows into it through the parent,
removes them from the detached default and attaches it again. Rows are moved whole, so the chain
verifies unchanged; nothing is lost if any step fails (the transaction rolls back).

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_SIGNATURE = "custody_audit_ensure_partitions(date, integer)"

_BODY = """
    CREATE OR REPLACE FUNCTION custody_audit_ensure_partitions(p_from date, p_months integer)
    RETURNS integer LANGUAGE plpgsql AS $$
    DECLARE
        m date := date_trunc('month', p_from)::date;
        part text;
        lo timestamptz;
        hi timestamptz;
        created integer := 0;
    BEGIN
        FOR i IN 1..p_months LOOP
            part := format('audit_log_y%sm%s', to_char(m, 'YYYY'), to_char(m, 'MM'));
            lo := m::timestamp AT TIME ZONE 'UTC';
            hi := (m + interval '1 month')::timestamp AT TIME ZONE 'UTC';
            IF to_regclass(part) IS NULL THEN
                IF EXISTS (SELECT 1 FROM audit_log_default
                           WHERE occurred_at >= lo AND occurred_at < hi) THEN
                    ALTER TABLE audit_log DETACH PARTITION audit_log_default;
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
                        part, lo, hi);
                    INSERT INTO audit_log SELECT * FROM audit_log_default
                        WHERE occurred_at >= lo AND occurred_at < hi;
                    ALTER TABLE audit_log_default DISABLE TRIGGER USER;
                    DELETE FROM audit_log_default WHERE occurred_at >= lo AND occurred_at < hi;
                    ALTER TABLE audit_log_default ENABLE TRIGGER USER;
                    ALTER TABLE audit_log ATTACH PARTITION audit_log_default DEFAULT;
                ELSE
                    EXECUTE format(
                        'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
                        part, lo, hi);
                END IF;
                EXECUTE format(
                    'CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON %I '
                    'FOR EACH STATEMENT EXECUTE FUNCTION custody_audit_log_immutable()', part);
                created := created + 1;
            END IF;
            m := (m + interval '1 month')::date;
        END LOOP;
        RETURN created;
    END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # CREATE OR REPLACE resets SECURITY DEFINER and SET clauses that `custody db roles` gave the
    # function; keep them, so ingest can still add months before the roles are re-applied.
    bind = op.get_bind()
    secdef, config = bind.exec_driver_sql(
        f"SELECT prosecdef, proconfig FROM pg_proc WHERE oid = '{_SIGNATURE}'::regprocedure"
    ).one()
    op.execute(_BODY)
    if secdef:
        op.execute(f"ALTER FUNCTION {_SIGNATURE} SECURITY DEFINER")
    for setting in config or []:
        name, _, value = setting.partition("=")
        op.execute(f"ALTER FUNCTION {_SIGNATURE} SET {name} = {value}")


def downgrade() -> None:
    """The earlier body refused such rows; keeping this one is harmless."""
