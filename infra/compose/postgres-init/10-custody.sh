#!/bin/sh
# Runs once, when the postgres container creates its data volume: custody's roles and database
# (the same script a DBA runs on a real cluster), then Prefect's own role and database.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_password="$CUSTODY_OWNER_PASSWORD" \
  -v ingest_password="$CUSTODY_INGEST_PASSWORD" \
  -v reporting_password="$CUSTODY_REPORTING_PASSWORD" \
  -f /custody-sql/10-roles.sql
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v prefect_password="$PREFECT_DB_PASSWORD" <<'SQL'
SELECT 'CREATE ROLE prefect LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'prefect') \gexec
ALTER ROLE prefect PASSWORD :'prefect_password';
SELECT 'CREATE DATABASE prefect OWNER prefect'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'prefect') \gexec
SQL
