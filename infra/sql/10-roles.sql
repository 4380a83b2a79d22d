-- custody: the roles and the database, created once per PostgreSQL cluster by a DBA.
--
-- Run with psql as a role that may create roles and databases (e.g. postgres):
--
--   psql "postgresql://postgres@db.example.org/postgres" -f infra/sql/10-roles.sql
--
-- Then, connected as the owner (CUSTODY_DATABASE_URL=postgresql://custody_owner@.../custody):
--
--   custody db upgrade      # creates the tables, owned by custody_owner
--   custody db roles        # grants the two login roles exactly what they need
--
-- and give the pipelines CUSTODY_DATABASE_URL=postgresql://custody_ingest@.../custody.
--
-- Idempotent: roles and the database are created only when missing. Names can be changed with
-- psql variables (-v owner_role=... -v ingest_role=... -v reporting_role=... -v database=...).
-- Passwords are best set afterwards with psql's \password ROLE, which sends only a hash; for
-- automated setups, -v owner_password=... (and ingest_password, reporting_password) set them here.

\set ON_ERROR_STOP on
\if :{?owner_role} \else \set owner_role custody_owner \endif
\if :{?ingest_role} \else \set ingest_role custody_ingest \endif
\if :{?reporting_role} \else \set reporting_role custody_reporting \endif
\if :{?database} \else \set database custody \endif

-- The owner owns the schema objects and runs migrations; it is not a superuser and may not
-- create roles or databases. The two login roles inherit nothing and own nothing.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION', :'owner_role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner_role') \gexec
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT', r)
FROM unnest(ARRAY[:'ingest_role', :'reporting_role']) AS r
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec

-- A guard against accidents, not the barrier (the role may turn it off; the grants still hold).
ALTER ROLE :"reporting_role" SET default_transaction_read_only = on;

\if :{?owner_password}
ALTER ROLE :"owner_role" PASSWORD :'owner_password';
\endif
\if :{?ingest_password}
ALTER ROLE :"ingest_role" PASSWORD :'ingest_password';
\endif
\if :{?reporting_password}
ALTER ROLE :"reporting_role" PASSWORD :'reporting_password';
\endif

SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'owner_role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec

-- Only custody's roles may connect; only ingest may create temporary tables (lab upserts).
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"owner_role", :"ingest_role";
GRANT CONNECT ON DATABASE :"database" TO :"reporting_role";

\connect :"database"
-- PostgreSQL < 15 lets everyone create objects in schema public; 15+ already does not.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"owner_role";
GRANT USAGE ON SCHEMA public TO :"ingest_role", :"reporting_role";
