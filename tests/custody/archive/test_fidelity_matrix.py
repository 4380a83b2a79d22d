"""Archive fidelity matrix: every case archives, deletes and restores exactly, or is refused first.

Each case is a small table of one kind (a type family and its edge values, an encoding, a
collation, identity and generated columns, inheritance, partitions, foreign key actions,
triggers, a key type). Archived through the real batch work (COPY, Parquet, a real S3 server,
the manifest, read-back verification, delete) and restored, it is checked independently of the
product: row text and per-column text and binary (``COPY ... (FORMAT BINARY)``) digests of the
table before and after, and the Parquet read with plain pyarrow against the source values. One
value of the first uploaded object is changed in S3 (with a manifest checksum to match, so only
the content comparison can notice) and verification must refuse to delete. Refused cases check
the message and that nothing was written or deleted.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import io
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from custody.archive import manifest
from custody.archive.checks import ArchiveRefusedError, inspect_table
from custody.archive.generic import ArchiveRestoreError
from custody.archive.plan import plan_eligible_ranges
from custody.archive.restore import restore_object
from custody.archive.work import (
    ArchiveRangeWork,
    ArchiveTarget,
    ArchiveVerificationError,
    archive_id_for,
    connect,
)
from custody.chunks.models import Chunk
from custody.migration.catalog import TableInfo
from custody.settings import reset_settings_cache
from custody.storage import LockMode, open_store
from custody.storage.s3 import ensure_bucket
from tests.support.seaweed import S3Server

CUTOFF = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SETTINGS = (
    "SET client_encoding = 'UTF8'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; "
    "SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; "
    "SET lc_monetary = 'C'"
)


@dataclass(frozen=True)
class Case:
    """One table: DDL and rows (``{t}`` the table, ``{p}`` a prefix for helper objects)."""

    id: str
    setup: str
    time_column: str = "ts"
    refused: str | None = None  # a part of the refusal message
    batch_size: int = 1000
    together: tuple[str, ...] = ()  # helper tables (by suffix) archived in the same run
    latin1: bool = False


def typed(kind: str, *values: str, id_type: str = "bigint") -> str:
    """A table (id, ts, v kind): one row per value before the cutoff, the first again after."""
    rows = [f"({i}, '2026-01-0{1 + i % 9} 10:00+00', {v})" for i, v in enumerate(values, 1)]
    rows.append(f"({len(values) + 1}, '2026-06-01 00:00+00', {values[0]})")
    return (
        f"CREATE TABLE {{t}} (id {id_type} PRIMARY KEY, ts timestamptz NOT NULL, v {kind});"
        f"INSERT INTO {{t}} (id, ts, v) VALUES {', '.join(rows)};"
    )


def keyed(kind: str, *keys: str) -> str:
    """A table keyed by ``kind``: two rows per batch, the last key after the cutoff."""
    rows = [f"({k}, '2026-01-02 00:00+00', 'r{i}')" for i, k in enumerate(keys[:-1])]
    rows.append(f"({keys[-1]}, '2026-06-01 00:00+00', 'late')")
    return (
        f"CREATE TABLE {{t}} (k {kind} PRIMARY KEY, ts timestamptz NOT NULL, note text);"
        f"INSERT INTO {{t}} VALUES {', '.join(rows)};"
    )


BOM = "E'\\uFEFF'"
CASES = [
    # --- numbers
    Case("int2", typed("smallint", "-32768", "0", "32767", "NULL")),
    Case("int4", typed("integer", "-2147483648", "2147483647", "7")),
    Case("int8", typed("bigint", "-9223372036854775808", "9223372036854775807", "0")),
    Case(
        "float4",
        typed(
            "real",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'-0'",
            "1.17549435e-38",
            "3.4028235e38",
            "0.1",
        ),
    ),
    Case(
        "float8",
        typed(
            "double precision",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'-0'",
            "5e-324",
            "1.7976931348623157e308",
            "0.1",
        ),
    ),
    Case(
        "numeric",
        typed(
            "numeric",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "-0.000",
            "123456789012345678901234567890.123456789012",
            "1e-300",
        ),
    ),
    Case("numeric_12_4", typed("numeric(12,4)", "1.5", "-99999999.9999", "0", "NULL")),
    Case("numeric_nan_typmod", typed("numeric(12,4)", "'NaN'", "2.25")),
    Case("numeric_3_5", typed("numeric(3,5)", "0.00123", "-0.00999", "0")),
    Case(
        "numeric_40_2", typed("numeric(40,2)", "12345678901234567890123456789012345678.91", "-0.01")
    ),
    Case("numeric_neg_scale", typed("numeric(5,-2)", "1234500", "-100")),
    Case("money", typed("money", "'12.34'", "'-1,234,567.89'", "0")),
    Case("boolean", typed("boolean", "true", "false", "NULL")),
    # --- text
    Case(
        "text",
        typed(
            "text",
            "''",
            "' '",
            "'ünïcödé 漢字 😀'",
            "E'line\\nbreak\\r\\n'",
            "E'\\\\.'",
            "'a,b\"c'",
            "'NULL'",
            "NULL",
        ),
    ),
    Case(
        "varchar_char",
        typed("varchar(5)", "'ab'", "'abcde'", "''")
        + "ALTER TABLE {t} ADD COLUMN c char(5) DEFAULT 'ab', ADD COLUMN n name DEFAULT 'x', "
        "ADD COLUMN q \"char\" DEFAULT 'q';",
    ),
    Case(
        "bom_first_value",
        "CREATE TABLE {t} (v text, id int PRIMARY KEY, ts timestamptz NOT NULL);"
        f"INSERT INTO {{t}} VALUES ({BOM} || 'abc', 1, '2026-01-01'), ('abc', 2, '2026-01-02'),"
        f" ({BOM}, 3, '2026-01-03');",
    ),
    Case(
        "bom_nondeterministic",
        "CREATE COLLATION {p}_ci (provider = icu, locale = 'und-u-ks-level2', "
        "deterministic = false);"
        "CREATE TABLE {t} (v text COLLATE {p}_ci, id int PRIMARY KEY, ts timestamptz NOT NULL);"
        f"INSERT INTO {{t}} VALUES ({BOM} || 'abc', 1, '2026-01-01'), ('ABC', 2, '2026-01-02'),"
        " ('abc', 3, '2026-01-03');",
    ),
    Case("bytea", typed("bytea", "'\\x'", "'\\x00ff10'", "NULL", "decode('DEADBEEF', 'hex')")),
    Case(
        "bit_varbit",
        typed("bit(3)", "B'101'", "B'000'") + "ALTER TABLE {t} ADD COLUMN w varbit DEFAULT B'1';",
    ),
    Case("uuid", typed("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "gen_random_uuid()")),
    # --- dates and times
    Case(
        "date",
        typed(
            "date",
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 BC'",
            "'0001-01-01'",
            "'9999-12-31'",
            "'10000-01-01'",
            "'2026-02-28'",
        ),
    ),
    Case("date_plain", typed("date", "'2026-02-28'", "'1970-01-01'", "NULL")),
    Case(
        "timestamp",
        typed(
            "timestamp",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00:00.5 BC'",
            "'294276-12-31 23:59:59.999999'",
            "'2000-01-01 00:00:00.000001'",
        ),
    ),
    Case(
        "timestamptz",
        typed(
            "timestamptz",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00 BC'",
            "'12000-01-01 00:00+00'",
            "'2026-01-01 12:00:00.123456+05:30'",
        ),
    ),
    Case("timestamptz_plain", typed("timestamptz(3)", "'2026-01-01 12:00:00.123+00'", "NULL")),
    Case(
        "time_timetz",
        typed("time", "'24:00:00'", "'00:00:00'", "'23:59:59.999999'")
        + "ALTER TABLE {t} ADD COLUMN z timetz DEFAULT '23:59:59.999999+14:59';",
    ),
    Case(
        "interval",
        typed("interval", "'1 year 2 mons -3 days 04:05:06.789'", "'-178000000 years'", "'0'"),
    ),
    # --- structured
    Case("json", typed("json", '\'{"a": 1, "a": 2}\'', "'  [1, 2.50 ]  '", "'\"\\u00e9\"'")),
    Case("jsonb", typed("jsonb", '\'{"b": [1, 2.50], "a": null}\'', "'\"\\u00e9\"'", "'1e400'")),
    Case(
        "xml",
        typed(
            "xml",
            "'<?xml version=\"1.0\"?>\n<a>1</a>'",
            '\'<?xml version="1.0" encoding="UTF-8"?><b>x</b>\'',
            "'text<b/>'",
            '\'<?xml version="1.0" standalone="yes"?><c/>\'',
        ),
    ),
    Case("xml_array", typed("xml[]", "ARRAY['<a/>'::xml]"), refused="xml inside an array"),
    Case(
        "network",
        typed("inet", "'192.168.0.1/24'", "'::1'")
        + "ALTER TABLE {t} ADD COLUMN c cidr DEFAULT '10.0.0.0/8', ADD COLUMN m macaddr "
        "DEFAULT '08:00:2b:01:02:03', ADD COLUMN m8 macaddr8 DEFAULT '08:00:2b:01:02:03:04:05';",
    ),
    Case(
        "geometry",
        typed("point", "'(1.5,-2)'", "'(NaN,Infinity)'")
        + "ALTER TABLE {t} ADD COLUMN l line DEFAULT '{1,2,3}', ADD COLUMN s lseg DEFAULT "
        "'[(0,0),(1,1)]', ADD COLUMN b box DEFAULT '(1,1),(0,0)', ADD COLUMN pa path DEFAULT "
        "'[(0,0),(1,1),(2,0)]', ADD COLUMN po polygon DEFAULT '((0,0),(1,1),(2,0))', "
        "ADD COLUMN c circle DEFAULT '<(0,0),1.5>';",
    ),
    Case(
        "text_search",
        typed("tsvector", "'a:1A fat:2B cat'", "''")
        + "ALTER TABLE {t} ADD COLUMN q tsquery DEFAULT 'fat & (rat | cat)';",
    ),
    Case(
        "ranges",
        typed("int4range", "'[1,5)'", "'empty'", "'(,)'")
        + "ALTER TABLE {t} ADD COLUMN r tstzrange DEFAULT '[2026-01-01,infinity)', "
        "ADD COLUMN n numrange DEFAULT '(1.5,2.25]', "
        "ADD COLUMN m int4multirange DEFAULT '{[1,3), [5,7)}';",
    ),
    Case(
        "arrays",
        typed("integer[]", "'{1,NULL,3}'", "'[0:1]={1,2}'", "'{{1,2},{3,4}}'", "'{}'")
        + 'ALTER TABLE {t} ADD COLUMN s text[] DEFAULT \'{"a,b","",NULL}\', '
        "ADD COLUMN n numeric[] DEFAULT '{NaN,1.50}';",
    ),
    Case(
        "enum",
        "CREATE TYPE {p}_mood AS ENUM ('sad', 'ok', 'happy');"
        + typed("{p}_mood", "'sad'", "'happy'", "NULL")
        + "ALTER TABLE {t} ADD COLUMN ms {p}_mood[] DEFAULT '{ok,sad}';",
    ),
    Case(
        "domains",
        "CREATE DOMAIN {p}_pos AS integer CHECK (VALUE > 0);"
        "CREATE DOMAIN {p}_amount AS numeric(5,2) NOT NULL; CREATE DOMAIN {p}_x AS xml;"
        + typed("{p}_pos", "1", "2147483647")
        + "ALTER TABLE {t} ADD COLUMN a {p}_amount DEFAULT 999.99, ADD COLUMN x {p}_x "
        "DEFAULT '<?xml version=\"1.0\"?><d/>';",
    ),
    Case(
        "composite",
        "CREATE TYPE {p}_pair AS (a integer, b text);"
        + typed("{p}_pair", "ROW(1, 'x,y')", "ROW(NULL, '')", "NULL"),
    ),
    Case(
        "composite_xml",
        "CREATE TYPE {p}_doc AS (a integer, d xml);" + typed("{p}_doc", "ROW(1, '<a/>')"),
        refused="xml inside an array or a composite",
    ),
    Case(
        "system_types",
        typed("pg_lsn", "'16/B374D848'", "'0/0'")
        + "ALTER TABLE {t} ADD COLUMN o oid DEFAULT 4294967295, ADD COLUMN r regclass "
        "DEFAULT 'pg_class', ADD COLUMN ty regtype DEFAULT 'integer', "
        "ADD COLUMN sn pg_snapshot DEFAULT '10:20:10,14,15';",
    ),
    Case(
        "dropped_and_odd_names",
        "CREATE TABLE {t} (id int PRIMARY KEY, gone text, ts timestamptz NOT NULL, "
        '"a b" text, "ünï" int, "q""uote" text); ALTER TABLE {t} DROP COLUMN gone;'
        "INSERT INTO {t} VALUES (1, '2026-01-01', 'x', 1, 'y'), (2, '2026-09-01', 'z', 2, 'w');",
    ),
    # --- every row eligible, with columns that hash_record_extended cannot hash
    Case(
        "all_eligible_json_point",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, j json, p point);"
        "INSERT INTO {t} VALUES (1, '2026-01-01', '{\"a\":1}', '(1,2)'), "
        "(2, '2026-01-02', '[]', NULL);",
    ),
    Case(
        "all_eligible_text",
        typed("text", "'a'", "'b'").replace("'2026-06-01 00:00+00'", "'2026-02-01 00:00+00'"),
    ),
    # --- encodings and collations
    Case(
        "latin1",
        "CREATE TABLE {t} (id text PRIMARY KEY, ts timestamptz NOT NULL, v text, "
        "c char(4)); INSERT INTO {t} VALUES ('café', '2026-01-01', 'ñandú ÿ ß', 'é'), "
        "('zoë', '2026-01-02', '', 'ab'), ('ÿ', '2026-09-01', 'late', 'x');",
        latin1=True,
    ),
    Case("latin1_int_key", typed("text", "'Ærø'", "'¿qué?'", "NULL"), latin1=True),
    Case(
        "nondeterministic_column",
        "CREATE COLLATION {p}_ci (provider = icu, locale = 'und-u-ks-level2', "
        "deterministic = false);" + typed("text COLLATE {p}_ci", "'a'", "'A'", "'ä'"),
    ),
    Case(
        "nondeterministic_key",
        "CREATE COLLATION {p}_ci (provider = icu, locale = 'und-u-ks-level2', "
        "deterministic = false);" + keyed("text COLLATE {p}_ci", "'b'", "'a'", "'C'", "'d'", "'e'"),
    ),
    Case("icu_key", keyed('text COLLATE "en-US-x-icu"', "'b'", "'a'", "'C'", "'ä'", "'z'")),
    Case("c_key", keyed('text COLLATE "C"', "'b'", "'a'", "'C'", "'ä'", "'z'"), batch_size=2),
    # --- keys of every orderable type
    Case(
        "uuid_key",
        keyed(
            "uuid",
            "'00000000-0000-0000-0000-000000000002'",
            "'00000000-0000-0000-0000-000000000001'",
            "gen_random_uuid()",
            "'ffffffff-0000-0000-0000-000000000000'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        ),
        batch_size=2,
    ),
    Case(
        "timestamptz_key",
        keyed(
            "timestamptz",
            "'2026-01-01 00:00:00.000001+00'",
            "'-infinity'",
            "'2020-01-01 00:00+05'",
            "'2026-01-01 00:00+00'",
            "'infinity'",
        ),
        batch_size=2,
    ),
    Case(
        "timestamp_key",
        keyed(
            "timestamp",
            "'2026-01-01 00:00:00.5'",
            "'0044-03-15 BC'",
            "'2020-01-01'",
            "'9999-01-01'",
        ),
        batch_size=2,
    ),
    Case(
        "date_key",
        keyed("date", "'2026-01-01'", "'2020-01-01'", "'1999-12-31'", "'2030-01-01'"),
        batch_size=2,
    ),
    Case("numeric_key", keyed("numeric", "1.5", "-2", "1e20", "0.000001", "3"), batch_size=2),
    Case("smallint_key", keyed("smallint", "3", "-1", "2", "32767"), batch_size=2),
    Case("int_key", keyed("integer", "3", "-1", "2", "10"), batch_size=1),
    Case("varchar_key", keyed("varchar(10)", "'b'", "'a '", "'a'", "'zz'"), batch_size=2),
    Case("char_key", keyed("char(3)", "'b'", "'a'", "'c'", "'zz'"), batch_size=2),
    Case("bytea_key", keyed("bytea", "'\\x00'", "'\\x'", "'\\xff'", "'\\x10'"), batch_size=2),
    Case(
        "inet_key",
        keyed("inet", "'10.0.0.1'", "'::1'", "'192.168.0.0/16'", "'10.0.0.2'"),
        batch_size=2,
    ),
    Case(
        "no_primary_key",
        "CREATE TABLE {t} (id int, ts timestamptz);",
        refused="needs a single-column primary key",
    ),
    Case(
        "composite_key",
        "CREATE TABLE {t} (a int, b int, ts timestamptz, PRIMARY KEY (a, b));",
        refused="needs a single-column primary key",
    ),
    Case(
        "text_time_column",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts text);",
        refused="must exist and be a timestamp",
    ),
    # --- time columns
    Case(
        "timestamptz3_cutoff",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz(3));"
        "INSERT INTO {t} VALUES (1, '2026-02-28 23:59:59.999+00'), (2, '2026-03-01 00:00+00'),"
        " (3, '-infinity'), (4, NULL);",
    ),
    Case(
        "timestamp_time_column",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamp(0));"
        "INSERT INTO {t} VALUES (1, '2026-02-28 23:59:59'), (2, '2026-03-01 00:00'), "
        "(3, '0044-03-15 BC');",
    ),
    # --- identity and generated columns
    Case(
        "identity_always_key",
        "CREATE TABLE {t} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "ts timestamptz NOT NULL, v text); INSERT INTO {t} (ts, v) VALUES "
        "('2026-01-01', 'a'), ('2026-01-02', 'b'), ('2026-09-01', 'c');",
    ),
    Case(
        "identity_by_default",
        "CREATE TABLE {t} (id int PRIMARY KEY, n int GENERATED BY DEFAULT AS IDENTITY, "
        "ts timestamptz NOT NULL); INSERT INTO {t} (id, n, ts) VALUES (1, 100, '2026-01-01');"
        "INSERT INTO {t} (id, ts) VALUES (2, '2026-01-02'), (3, '2026-09-01');",
    ),
    Case(
        "generated_stored",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, a numeric, "
        "b numeric GENERATED ALWAYS AS (a * 2) STORED, "
        "always_id int GENERATED ALWAYS AS IDENTITY);"
        "INSERT INTO {t} (id, ts, a) VALUES (1, '2026-01-01', 1.5), (2, '2026-01-02', NULL),"
        " (3, '2026-09-01', 7);",
    ),
    # --- inheritance and partitions
    Case(
        "inheritance_parent",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, v text);"
        "CREATE TABLE {p}_child (extra text) INHERITS ({t});"
        "INSERT INTO {t} VALUES (1, '2026-01-01', 'parent'), (2, '2026-09-01', 'late');"
        "INSERT INTO {p}_child VALUES (3, '2026-01-01', 'child', 'only in child');",
    ),
    Case(
        "inheritance_child",
        "CREATE TABLE {p}_base (id int, ts timestamptz NOT NULL, v text);"
        "CREATE TABLE {t} (extra text, PRIMARY KEY (id)) INHERITS ({p}_base);"
        "INSERT INTO {p}_base VALUES (1, '2026-01-01', 'base');"
        "INSERT INTO {t} VALUES (2, '2026-01-01', 'child', 'x'), (3, '2026-09-01', 'c', 'y');",
    ),
    Case(
        "partitioned",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, v text) "
        "PARTITION BY RANGE (id);"
        "CREATE TABLE {p}_lo PARTITION OF {t} FOR VALUES FROM (0) TO (10);"
        "CREATE TABLE {p}_hi PARTITION OF {t} FOR VALUES FROM (10) TO (100);"
        "INSERT INTO {t} VALUES (1, '2026-01-01', 'a'), (11, '2026-01-01', 'b'), "
        "(12, '2026-09-01', 'c');",
    ),
    Case(
        "partitioned_trigger",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, v text) "
        "PARTITION BY LIST (id);"
        "CREATE TABLE {p}_a PARTITION OF {t} FOR VALUES IN (1, 2);"
        "CREATE TABLE {p}_b PARTITION OF {t} DEFAULT;"
        "CREATE FUNCTION {p}_f() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.v := 'changed'; RETURN NEW; END $$;"
        "CREATE TRIGGER {p}_tr BEFORE INSERT ON {p}_a FOR EACH ROW EXECUTE FUNCTION {p}_f();"
        "ALTER TABLE {p}_a DISABLE TRIGGER {p}_tr;"
        "INSERT INTO {t} VALUES (1, '2026-01-01', 'a'), (5, '2026-01-01', 'b');"
        "ALTER TABLE {p}_a ENABLE TRIGGER {p}_tr;",
    ),
    # --- foreign keys
    Case(
        "fk_cascade_outside",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "CREATE TABLE {p}_ref (id int PRIMARY KEY, t_id int REFERENCES {t} ON DELETE CASCADE);"
        "INSERT INTO {t} VALUES (1, '2026-01-01'); INSERT INTO {p}_ref VALUES (1, 1);",
        refused="ON DELETE CASCADE",
    ),
    Case(
        "fk_set_null",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "CREATE TABLE {p}_ref (id int PRIMARY KEY, t_id int REFERENCES {t} ON DELETE SET NULL);"
        "INSERT INTO {t} VALUES (1, '2026-01-01'); INSERT INTO {p}_ref VALUES (1, 1);",
        refused="ON DELETE SET NULL",
    ),
    Case(
        "fk_set_default",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "INSERT INTO {t} VALUES (0, '2026-09-01'), (1, '2026-01-01');"
        "CREATE TABLE {p}_ref (id int PRIMARY KEY, t_id int DEFAULT 0 "
        "REFERENCES {t} ON DELETE SET DEFAULT); INSERT INTO {p}_ref VALUES (1, 1);",
        refused="ON DELETE SET DEFAULT",
    ),
    Case(
        "fk_self_cascade",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, "
        "parent int REFERENCES {t} ON DELETE CASCADE);",
        refused="ON DELETE CASCADE",
    ),
    Case(
        "fk_cascade_archived_together",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "CREATE TABLE {p}_ref (id int PRIMARY KEY, t_id int REFERENCES {t} ON DELETE CASCADE);"
        "INSERT INTO {t} VALUES (1, '2026-01-01'), (2, '2026-01-02'), (3, '2026-09-01');"
        "INSERT INTO {p}_ref VALUES (1, 3);",
        together=("ref",),
    ),
    Case(
        "fk_no_action_and_outgoing",
        "CREATE TABLE {p}_parent (id int PRIMARY KEY);"
        "INSERT INTO {p}_parent VALUES (1), (2);"
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, "
        "parent int REFERENCES {p}_parent);"
        "CREATE TABLE {p}_ref (id int PRIMARY KEY, t_id int REFERENCES {t} ON DELETE RESTRICT);"
        "INSERT INTO {t} VALUES (1, '2026-01-01', 1), (2, '2026-01-02', 2), "
        "(3, '2026-09-01', 1); INSERT INTO {p}_ref VALUES (1, 3);",
    ),
    # --- triggers and rules
    Case(
        "insert_trigger",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL, updated_at timestamptz);"
        "CREATE FUNCTION {p}_touch() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;"
        "CREATE TRIGGER {p}_touch BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION "
        "{p}_touch(); INSERT INTO {t} VALUES (1, '2026-01-01'), (2, '2026-09-01');",
    ),
    Case(
        "delete_trigger_audit",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "CREATE TABLE {p}_audit (n serial PRIMARY KEY, what text);"
        "CREATE FUNCTION {p}_log() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO {p}_audit (what) VALUES (TG_OP); RETURN NULL; END $$;"
        "CREATE TRIGGER {p}_log AFTER INSERT OR DELETE ON {t} FOR EACH STATEMENT "
        "EXECUTE FUNCTION {p}_log(); CREATE TRIGGER {p}_off AFTER DELETE ON {t} "
        "FOR EACH ROW EXECUTE FUNCTION {p}_log(); ALTER TABLE {t} DISABLE TRIGGER {p}_off;"
        "ALTER TABLE {t} ENABLE ALWAYS TRIGGER {p}_log;"
        "INSERT INTO {t} VALUES (1, '2026-01-01'), (2, '2026-09-01');",
    ),
    Case(
        "before_delete_skips",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "CREATE FUNCTION {p}_keep() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NULL; END $$;"
        "CREATE TRIGGER {p}_keep BEFORE DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {p}_keep();"
        "INSERT INTO {t} VALUES (1, '2026-01-01'), (2, '2026-09-01');",
    ),
    Case(
        "trigger_not_owner",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "CREATE FUNCTION {p}_f() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NEW; END $$;"
        "CREATE TRIGGER {p}_f BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {p}_f();"
        "GRANT SELECT, INSERT, DELETE ON {t} TO PUBLIC;",
        refused="does not own the table",
    ),
    Case(
        "delete_rule",
        "CREATE TABLE {t} (id int PRIMARY KEY, ts timestamptz NOT NULL);"
        "CREATE RULE {p}_keep AS ON DELETE TO {t} DO INSTEAD NOTHING;",
        refused="has rules on INSERT or DELETE",
    ),
]


# --- fixtures ----------------------------------------------------------------------------------


@dataclass
class Matrix:
    urls: dict[str, str]  # connection name -> url
    bucket: str
    client: Any
    role: str


@pytest.fixture(scope="module")
def matrix(pg_databases, pg_admin_url: str, s3_server: S3Server) -> Iterator[Matrix]:  # type: ignore[no-untyped-def]
    """One UTF8 and one LATIN1 database, one bucket and a role that owns nothing."""
    utf8 = pg_databases.create("fidelity")
    name = f"custody_test_fidl1_{uuid.uuid4().hex[:10]}"
    role = f"custody_fid_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    pg_databases.created.append(name)
    latin1 = utf8.rsplit("/", 1)[0] + f"/{name}"
    bucket = "fid-" + uuid.uuid4().hex[:12]
    client = s3_server.client()  # type: ignore[no-untyped-call]
    ensure_bucket(client, bucket, object_lock=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUSTODY_CONNECTIONS__FID", utf8)
        mp.setenv("CUSTODY_CONNECTIONS__FIDL1", latin1)
        mp.setenv("CUSTODY_OBJECT_STORE_URL", f"s3://{bucket}/matrix")
        mp.setenv("CUSTODY_S3_ENDPOINT_URL", s3_server.endpoint_url)
        mp.setenv("CUSTODY_S3_ACCESS_KEY_ID", s3_server.access_key)
        mp.setenv("CUSTODY_S3_SECRET_ACCESS_KEY", s3_server.secret_key)
        reset_settings_cache()
        for url in (utf8, latin1):
            with psycopg.connect(url, autocommit=True) as conn:
                manifest.ensure_manifest(conn)
        yield Matrix({"fid": utf8, "fidl1": latin1}, bucket, client, role)
    reset_settings_cache()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for url in (utf8, latin1):
            with psycopg.connect(url, autocommit=True) as db:
                db.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')


# --- independent checks ------------------------------------------------------------------------


def _conn(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(SETTINGS)
    return conn


def tables_of(conn: psycopg.Connection[Any], prefix: str) -> list[tuple[str, str, str]]:
    """(name, relkind, key) of the case's tables."""
    rows = conn.execute(
        "SELECT c.relname, c.relkind, (SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = c.oid AND "
        "i.indisprimary) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND c.relname LIKE %s "
        "ORDER BY 1",
        (prefix + "%",),
    ).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2] or "")) for r in rows]


def digests(url: str, prefix: str) -> dict[str, Any]:
    """Per table of the case: row text digest; per column text and binary (COPY) digests."""
    out: dict[str, Any] = {}
    with _conn(url) as conn:
        for name, relkind, key in tables_of(conn, prefix):
            source = f'ONLY "{name}"' if relkind == "r" else f'"{name}"'
            order = f'ORDER BY "{key}"' if key else "ORDER BY t::text"
            row = conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) "
                f"FROM {source} t"
            ).fetchone()
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    (f'"{name}"',),
                )
            ]
            quoted = ['"' + c.replace('"', '""') + '"' for c in columns]
            texts = ", ".join(f"{c}::text" for c in quoted)
            text = _copy(conn, f"COPY (SELECT {texts} FROM {source} t {order}) TO STDOUT")
            binary = _copy(
                conn,
                f"COPY (SELECT {', '.join(quoted)} FROM {source} t {order}) TO STDOUT "
                "(FORMAT BINARY)",
            )
            per_column = {
                column: (
                    hashlib.sha256(
                        b"\n".join(line.split(b"\t")[i] for line in text.splitlines())
                    ).hexdigest(),
                    hashlib.sha256(b"|".join(_binary_fields(binary, i))).hexdigest(),
                )
                for i, column in enumerate(columns)
            }
            out[name] = (row, per_column)
        out["_triggers"] = conn.execute(
            "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger "
            "WHERE NOT tgisinternal AND tgname LIKE %s ORDER BY 1, 2",
            (prefix + "%",),
        ).fetchall()
    return out


def _copy(conn: psycopg.Connection[Any], statement: str) -> bytes:
    with conn.cursor().copy(statement) as copy:
        return b"".join(bytes(block) for block in copy)


def _binary_fields(data: bytes, column: int) -> Iterator[bytes]:
    """One column's fields from COPY BINARY output: (length, bytes) per row, NULL as -1."""
    at = 11 + 4 + 4 + int.from_bytes(data[15:19], "big")  # signature, flags, header extension
    while True:
        count = int.from_bytes(data[at : at + 2], "big", signed=True)
        at += 2
        if count == -1:
            return
        for index in range(count):
            size = int.from_bytes(data[at : at + 4], "big", signed=True)
            at += 4
            value = data[at : at + max(size, 0)]
            at += max(size, 0)
            if index == column:
                yield size.to_bytes(4, "big", signed=True) + value


def expected_values(
    url: str, table: str, time_column: str, only: str
) -> tuple[list[str], list[Any]]:
    """The eligible rows as (text forms, native values where Python has them), by the test's SQL."""
    with _conn(url) as conn:
        cols = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), "
            "(SELECT typcategory FROM pg_type WHERE oid = atttypid) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (f'"{table}"',),
        ).fetchall()
        texts, natives = [], []
        for name, pg_type, _ in cols:
            col = '"' + name.replace('"', '""') + '"'
            if "xml" in pg_type or pg_type.endswith("_x"):
                col += "::text"  # the stored document; xml's output drops its declaration
            elif pg_type.startswith("reg"):
                col += "::oid"
            texts.append(f"CASE WHEN {col} IS NULL THEN NULL ELSE format('%%s', {col}) END")
            natives.append(col)
        where = f'FROM {only} "{table}" WHERE "{time_column}" < %s'
        text_rows = conn.execute(f"SELECT {', '.join(texts)} {where}", (CUTOFF,)).fetchall()
        native_columns: list[list[Any] | None] = []
        for native in natives:  # one column at a time: Python cannot hold some values
            try:
                with conn.cursor(binary=True) as cur:  # float4 as the float32 it is
                    found = cur.execute(f"SELECT {native} {where}", (CUTOFF,)).fetchall()
                native_columns.append([r[0] for r in found])
            except psycopg.DataError:  # infinity, BC, 24:00: compared as text only
                native_columns.append(None)
    return [str(c[0]) for c in cols], [text_rows, native_columns]


def _same(got: Any, text: str | None, native: Any) -> bool:
    """An Arrow-native value against the source's native value, or its text where Python had
    none for the column (a finite timestamp in a column that also holds infinity)."""
    if native is not None or got is None:
        return bool(norm(got) == norm(native))
    if isinstance(got, dt.datetime):
        shown = got.strftime("%Y-%m-%d %H:%M:%S")
        if got.microsecond:
            shown += f".{got.microsecond:06d}".rstrip("0")
        return shown + ("+00" if got.tzinfo else "") == text
    if isinstance(got, dt.date):
        return got.isoformat() == text
    return False


def norm(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    return repr(value)


def check_parquet(m: Matrix, url: str, table: str, time_column: str, expected: Any) -> None:
    """Read the objects with plain pyarrow; every value is the source's, natively or as text."""
    names, (text_rows, native_columns) = expected
    with _conn(url) as conn:
        keys = conn.execute(
            "SELECT object_key, version_id FROM custody.archive_manifest "
            "WHERE table_name = %s AND status = 'verified'",
            (table,),
        ).fetchall()
    parts = []
    for key, version in keys:
        body = m.client.get_object(Bucket=m.bucket, Key=f"matrix/{key}", VersionId=version)
        parts.append(pq.read_table(io.BytesIO(body["Body"].read())))
    want = [
        [(text, None if natives is None else natives[index])
         for text, natives in zip(text_row, native_columns, strict=True)]
        for index, text_row in enumerate(text_rows)
    ]  # fmt: skip
    for part in parts:  # a column may be text in one object and native in another
        assert part.schema.names == names
        stored = []
        for field in part.schema:
            meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
            assert meta["pg_type"] and meta["custody.stored_as"]
            if meta["custody.stored_as"] == "text":
                assert field.type == pa.string(), field
            stored.append(meta["custody.stored_as"] == "text")
        for got in zip(*(part.column(n).to_pylist() for n in names), strict=True):
            match = next(
                (w for w in want if all(
                    g == text if is_text else _same(g, text, native)
                    for g, (text, native), is_text in zip(got, w, stored, strict=True)
                )),
                None,
            )  # fmt: skip
            assert match is not None, f"an archived row matches no source row ({names})"
            want.remove(match)
    assert want == [], "source rows missing from the archive"


def mutate(table: pa.Table, key: str) -> pa.Table:
    """The same object with one value changed (the first non-key, non-null cell)."""
    for index, name in enumerate(table.column_names):
        if name == key:
            continue
        values = table.column(index).to_pylist()
        if values[0] is None:
            continue
        values[0] = _changed(values[0])
        array = pa.array(values, type=table.schema.field(index).type)
        return table.set_column(index, table.schema.field(index), array)
    values = table.column(key).to_pylist()
    values[0] = _changed(values[0])
    index = table.schema.get_field_index(key)
    array = pa.array(values, type=table.schema.field(index).type)
    return table.set_column(index, table.schema.field(index), array)


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ 1
    if isinstance(value, float):
        return 1.5 if not math.isfinite(value) or value == 0 else value / 2
    if isinstance(value, decimal.Decimal):
        return -value if value != 0 else value.next_plus()
    if isinstance(value, dt.datetime):
        return value + dt.timedelta(microseconds=1)
    if isinstance(value, dt.date):
        return value + dt.timedelta(days=1)
    if isinstance(value, str):  # another last character: a new value, or one the type refuses
        return value[:-1] + chr(ord(value[-1]) + 1) if value else "x"
    raise AssertionError(f"no mutation for {type(value).__name__}")


# --- the run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_archive_restores_exactly_or_is_refused_first(case: Case, matrix: Matrix) -> None:
    database = "fidl1" if case.latin1 else "fid"
    url = matrix.urls[database]
    prefix = "f_" + case.id
    table = f"{prefix}_t"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(case.setup.replace("{t}", f'"{table}"').replace("{p}", prefix))
    before = digests(url, prefix)
    together = tuple(f"{prefix}_{t}" for t in case.together)

    if case.refused is not None:
        with (
            connect(_sqlalchemy_url(url)) as conn,
            pytest.raises(ArchiveRefusedError, match=case.refused) as refused,
        ):
            if case.id == "trigger_not_owner":
                conn.execute(f'SET ROLE "{matrix.role}"')
            inspect_table(conn, "public", table, case.time_column, together)
        assert repr(table) in str(refused.value)
        assert digests(url, prefix) == before and _manifest_rows(url, table) == 0
        assert not list(open_store().list(f"archive/{table}"))
        return

    with _conn(url) as conn:
        only = "ONLY" if tables_of(conn, table)[0][1] == "r" else ""
    expected = expected_values(url, table, case.time_column, only)
    work, chunks = _plan(database, url, table, case, together)
    _refuses_a_mutated_object(work, chunks[0], url, prefix, before, table)
    for chunk in chunks:
        assert work(chunk).verified
    eligible = len(expected[1][0])
    with _conn(url) as conn:
        left = conn.execute(
            f'SELECT count(*) FROM {only} "{table}" WHERE "{case.time_column}" < %s', (CUTOFF,)
        ).fetchone()
    assert left == (0,)
    after_archive = digests(url, prefix)
    assert {k: v for k, v in after_archive.items() if k != table} == {
        k: v for k, v in before.items() if k != table
    }, "another table changed"
    assert after_archive[table][0][0] == before[table][0][0] - eligible
    check_parquet(matrix, url, table, case.time_column, expected)

    with connect(_sqlalchemy_url(url)) as conn:
        rows = manifest.find(conn, table=table)
        assert sum(r.row_count for r in rows) == eligible
        assert sum(restore_object(conn, open_store(), r) for r in rows) == eligible
        assert sum(restore_object(conn, open_store(), r) for r in rows) == 0  # idempotent
    assert digests(url, prefix) == before


def _sqlalchemy_url(url: str) -> Any:
    from sqlalchemy.engine import make_url

    return make_url(url)


def _manifest_rows(url: str, table: str) -> int:
    with _conn(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM custody.archive_manifest WHERE table_name = %s", (table,)
        ).fetchone()
    return int(row[0]) if row else 0


def _plan(
    database: str, url: str, table: str, case: Case, together: tuple[str, ...]
) -> tuple[ArchiveRangeWork, list[Chunk]]:
    with connect(_sqlalchemy_url(url)) as conn:
        checked = inspect_table(conn, "public", table, case.time_column, together)
        info = TableInfo(
            schema="public", name=table, columns=tuple(c.name for c in checked.columns),
            key_column=checked.key_column, binary_safe=False, not_null=(),
            primary_key=(checked.key_column,), estimated_rows=0,
        )  # fmt: skip
        ranges = plan_eligible_ranges(conn, info, case.time_column, CUTOFF, case.batch_size)
    work = ArchiveRangeWork(
        database=database, policy="matrix", info=info, time_column=case.time_column,
        cutoff=CUTOFF, classification="phi", regulation="HIPAA",
        target=ArchiveTarget(None, "archive", LockMode.NONE, 1), archived_together=together,
    )  # fmt: skip
    job = f"fid-{table}"
    chunks = [
        Chunk(job_id=job, chunk_no=n, lower=lo, upper=hi) for n, (lo, hi) in enumerate(ranges)
    ]
    assert chunks, "nothing eligible"
    if case.batch_size < 3:
        assert len(chunks) > 1, "the key should have driven several batches"
    return work, chunks


def _refuses_a_mutated_object(
    work: ArchiveRangeWork, chunk: Chunk, url: str, prefix: str, before: Any, table: str
) -> None:
    """Upload, change one value in S3 (manifest checksum updated too), see nothing deleted."""
    store = open_store()
    with connect(_sqlalchemy_url(url)) as conn:
        row = work._upload(conn, _sqlalchemy_url(url), store, chunk, archive_id_for(chunk),
                           reuse=True)  # fmt: skip
        assert row is not None
        original = pq.read_table(io.BytesIO(store.get(row.object_key, row.version_id)))
        sink = io.BytesIO()
        pq.write_table(mutate(original, row.key_column), sink, compression="zstd")
        stored = store.put(row.object_key, sink.getvalue())
        conn.execute(
            "UPDATE custody.archive_manifest SET sha256 = %s, version_id = %s, bytes = %s "
            "WHERE archive_id = %s",
            (stored.sha256, stored.version_id, len(sink.getvalue()), row.archive_id),
        )
    with pytest.raises(ArchiveVerificationError, match=row.archive_id):
        work(chunk)
    assert digests(url, prefix) == before, "rows were deleted against a changed object"
    assert _status(url, row.archive_id) == "corrupt"
    del table


def _status(url: str, archive_id: str) -> str:
    with _conn(url) as conn:
        row = conn.execute(
            "SELECT status FROM custody.archive_manifest WHERE archive_id = %s", (archive_id,)
        ).fetchone()
    return str(row[0]) if row else ""


def test_restore_proves_itself_and_leaves_the_table_as_it_was(matrix: Matrix) -> None:
    """A changed object, a changed table, a row squatting on an archived key: each refused."""
    url, prefix = matrix.urls["fid"], "f_restore_proof"
    table = f"{prefix}_t"
    case = Case("restore_proof", typed("text", "'a'", "'b'", "'c'"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(case.setup.replace("{t}", f'"{table}"'))
    before = digests(url, prefix)
    work, chunks = _plan("fid", url, table, case, ())
    assert all(work(chunk).verified for chunk in chunks)
    archived = digests(url, prefix)
    store = open_store()
    with connect(_sqlalchemy_url(url)) as conn:
        [row] = manifest.find(conn, table=table)
        data = pq.read_table(io.BytesIO(store.get(row.object_key, row.version_id)))
        sink = io.BytesIO()
        pq.write_table(mutate(data, row.key_column), sink)
        changed = store.put(row.object_key, sink.getvalue())
        forged = manifest.ManifestRow(**{
            **row.__dict__, "sha256": changed.sha256 or "", "version_id": changed.version_id,
        })  # fmt: skip
        with pytest.raises(ArchiveRestoreError, match=f"archive {row.archive_id} .*do not hash"):
            restore_object(conn, store, forged)
        assert digests(url, prefix) == archived

        conn.execute(f"INSERT INTO \"{table}\" VALUES (1, '2026-01-02', 'squatter')")
        squatted = digests(url, prefix)
        with pytest.raises(ArchiveRestoreError, match="holds other rows under its keys"):
            restore_object(conn, store, row)
        assert digests(url, prefix) == squatted  # one transaction: nothing else went in
        conn.execute(f'DELETE FROM "{table}" WHERE id = 1')

        conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN v TYPE varchar(10)')
        with pytest.raises(ArchiveRestoreError, match="column 'v' is now character varying"):
            restore_object(conn, store, row)
        conn.execute(f'ALTER TABLE "{table}" ALTER COLUMN v TYPE text')
        assert restore_object(conn, store, row) == row.row_count
    assert digests(url, prefix) == before
