"""Schema objects copied from the source catalog rather than from pg_dump's script.

Comments, grants, sequence states and materialized-view contents need decisions pg_dump cannot
make for a subset of a database: grants to roles the target lacks are listed instead of failing
the run, a sequence's ``is_called`` matters (pg_sequences hides ``last_value`` before the first
``nextval``), a materialized view must be refreshed from the migrated rows. Every statement is
built by the source server with ``format('%I', ...)``/``regclass`` output under an empty
search_path, so names are exact and quoted.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, Engine, text

from custody.identifiers import quote_pg
from custody.migration.scope import (
    PG_CLASS,
    PG_COLLATION,
    PG_PROC,
    PG_TYPE,
    ObjectId,
    SchemaScope,
    TableScope,
)


def _qualified(c: Connection) -> None:
    """Make regclass/regtype/regprocedure print schema-qualified names in this transaction."""
    c.execute(text("SELECT set_config('search_path', '', true)"))


def _pairs(objects: Iterable[ObjectId]) -> dict[str, list[int]]:
    items = sorted(objects)
    return {"c": [c for c, _ in items], "o": [o for _, o in items]}


def missing_on_target(source: Engine, target: Engine, objects: set[ObjectId]) -> set[ObjectId]:
    """The objects of ``objects`` that the target does not have yet (looked up by name).

    A second migration into the same database finds the types, functions and sequences the
    first one created: they are kept, not created twice.
    """
    with source.begin() as c:
        _qualified(c)
        rows = c.execute(
            text(
                "SELECT w.c, w.o, (pg_identify_object(w.c, w.o, 0)).identity "
                "FROM unnest(CAST(:c AS oid[]), CAST(:o AS oid[])) w(c, o)"
            ),
            _pairs(objects),
        ).all()
    checked = {PG_TYPE: "to_regtype", PG_PROC: "to_regprocedure", PG_CLASS: "to_regclass",
               PG_COLLATION: "to_regcollation"}  # fmt: skip
    missing = {(int(c_), int(o)) for c_, o, _ in rows if int(c_) not in checked}
    with target.connect() as c:
        for classid, oid, identity in rows:
            function = checked.get(int(classid))
            if function is None or identity is None:
                continue
            found = c.execute(text(f"SELECT {function}(:i) IS NOT NULL"), {"i": identity}).scalar()
            if not found:
                missing.add((int(classid), int(oid)))
    return missing


_COMMENTS = """
SELECT CASE
  WHEN d.classoid = 'pg_class'::regclass AND d.objsubid > 0 THEN
    format('COMMENT ON COLUMN %s IS %L',
           (pg_identify_object(d.classoid, d.objoid, d.objsubid)).identity, d.description)
  WHEN d.classoid = 'pg_class'::regclass THEN
    format('COMMENT ON %s %s IS %L', upper((pg_identify_object(d.classoid, d.objoid, 0)).type),
           (pg_identify_object(d.classoid, d.objoid, 0)).identity, d.description)
  WHEN d.classoid = 'pg_type'::regclass THEN
    format('COMMENT ON %s %s IS %L',
           CASE WHEN (SELECT typtype FROM pg_type WHERE oid = d.objoid) = 'd' THEN 'DOMAIN'
                ELSE 'TYPE' END,
           d.objoid::regtype, d.description)
  WHEN d.classoid = 'pg_proc'::regclass THEN
    format('COMMENT ON %s %s IS %L',
           CASE (SELECT prokind FROM pg_proc WHERE oid = d.objoid) WHEN 'a' THEN 'AGGREGATE'
                WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
           d.objoid::regprocedure, d.description)
  WHEN d.classoid = 'pg_constraint'::regclass THEN
    (SELECT format('COMMENT ON CONSTRAINT %I ON %s IS %L', k.conname,
                   CASE WHEN k.contypid <> 0 THEN 'DOMAIN ' || k.contypid::regtype::text
                        ELSE k.conrelid::regclass::text END, d.description)
     FROM pg_constraint k WHERE k.oid = d.objoid)
  WHEN d.classoid = 'pg_trigger'::regclass THEN
    (SELECT format('COMMENT ON TRIGGER %I ON %s IS %L', g.tgname, g.tgrelid::regclass,
                   d.description) FROM pg_trigger g WHERE g.oid = d.objoid)
  WHEN d.classoid = 'pg_rewrite'::regclass THEN
    (SELECT format('COMMENT ON RULE %I ON %s IS %L', w.rulename, w.ev_class::regclass,
                   d.description) FROM pg_rewrite w WHERE w.oid = d.objoid)
  END
FROM pg_description d JOIN unnest(CAST(:c AS oid[]), CAST(:o AS oid[])) w(c, o)
  ON d.classoid = w.c AND d.objoid = w.o
ORDER BY d.classoid, d.objoid, d.objsubid
"""


def comment_statements(source: Engine, objects: set[ObjectId]) -> list[str]:
    """``COMMENT ON`` statements for the objects (and their columns) that have comments."""
    with source.begin() as c:
        _qualified(c)
        return [s for s in c.execute(text(_COMMENTS), _pairs(objects)).scalars() if s]


_GRANTS = """
SELECT format('GRANT %s%s ON %s%s TO %s%s', a.privilege_type,
              CASE WHEN x.attname IS NULL THEN '' ELSE format(' (%I)', x.attname) END,
              CASE WHEN c.relkind = 'S' THEN 'SEQUENCE ' ELSE 'TABLE ' END, c.oid::regclass,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) AS statement,
       r.rolname AS role
FROM pg_class c
CROSS JOIN LATERAL (
  SELECT NULL::name AS attname, c.relacl AS acl
  UNION ALL SELECT t.attname, t.attacl FROM pg_attribute t
  WHERE t.attrelid = c.oid AND t.attnum > 0 AND NOT t.attisdropped AND t.attacl IS NOT NULL
) x
CROSS JOIN LATERAL aclexplode(x.acl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.oid = ANY(:o) AND a.grantee <> c.relowner
ORDER BY 1
"""


def grant_statements(
    source: Engine, target: Engine, relations: Iterable[int]
) -> tuple[list[str], list[str]]:
    """``GRANT`` statements for tables, columns, views and sequences; and the roles missing.

    Grants to the owner are the owner's own (the target's owner is whoever creates the tables);
    grants to a role the target does not have are left out and the role is named.
    """
    with source.begin() as c:
        _qualified(c)
        rows = c.execute(text(_GRANTS), {"o": sorted(relations)}).all()
    with target.connect() as c:
        roles = set(c.execute(text("SELECT rolname FROM pg_roles")).scalars())
    missing = sorted({r.role for r in rows if r.role is not None and r.role not in roles})
    return [r.statement for r in rows if r.role is None or r.role in roles], missing


def tables_without_post_data(target: Engine, schema: str, tables: list[TableScope]) -> list[str]:
    """Target tables (and partitions) with no key, index, exclusion or user trigger of their own.

    Post-data is decided per table: one the migration created gets the source's keys, indexes
    and triggers; one that already has any (a re-run, or a user's own table) is left as it is,
    whatever else the target schema holds.
    """
    bare = []
    with target.connect() as c:
        for table in tables:
            has_own = c.execute(
                text(
                    "WITH t AS (SELECT c.oid FROM pg_class c"
                    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
                    "  WHERE n.nspname = :s AND c.relname = :t), "
                    "g AS (SELECT oid AS relid FROM t UNION "
                    "  SELECT relid::oid FROM t, pg_partition_tree(t.oid)) "
                    "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid IN "
                    "  (SELECT relid FROM g))"
                    " OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid IN "
                    "  (SELECT relid FROM g) AND contype IN ('p', 'u', 'f', 'x', 't'))"
                    " OR EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid IN "
                    "  (SELECT relid FROM g) AND NOT tgisinternal)"
                ),
                {"s": schema, "t": table.name},
            ).scalar()
            if not has_own:
                bare.append(table.name)
    return bare


def unindexed_views(target: Engine, scope: SchemaScope) -> list[int]:
    """Source oids of the materialized views in scope that exist on the target without indexes."""
    out = []
    with target.connect() as c:
        for schema, name, oid, kind in scope.views:
            if kind != "m" or not scope.view_post_data.get(oid):
                continue
            indexed = c.execute(
                text(
                    "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND c.relname = :v"
                ),
                {"s": schema, "v": name},
            ).scalar_one()
            if not indexed:
                out.append(oid)
    return out


def refresh_materialized_views(source: Engine, target: Engine, scope: SchemaScope) -> int:
    """REFRESH, on the target, every materialized view in scope that the source has populated.

    pg_dump's schema creates them empty (``WITH NO DATA``); their rows come from the migrated
    tables, in creation order so that one reading another sees it filled.
    """
    views = [(s, n, o) for s, n, o, kind in scope.views if kind == "m"]
    if not views:
        return 0
    with source.connect() as c:
        populated = set(
            c.execute(
                text("SELECT oid FROM pg_class WHERE oid = ANY(:o) AND relispopulated"),
                {"o": [o for _, _, o in views]},
            ).scalars()
        )
    refreshed = 0
    with target.begin() as c:
        for schema, name, oid in sorted(views, key=lambda v: v[2]):
            if oid in populated:
                c.exec_driver_sql(f"REFRESH MATERIALIZED VIEW {quote_pg(schema)}.{quote_pg(name)}")
                refreshed += 1
    return refreshed


_SEQUENCE = """
SELECT format_type(s.seqtypid, NULL) AS type, s.seqincrement AS increment, s.seqmin AS min,
       s.seqmax AS max, s.seqstart AS start, s.seqcache AS cache, s.seqcycle AS cycle
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = :n
"""


def sync_sequences(
    source: Engine, target: Engine, sequences: list[tuple[str, str]]
) -> tuple[int, list[str]]:
    """Give each target sequence the source's options, ``last_value`` and ``is_called``.

    Returns how many were set, and the sequences the target lacks.
    """
    done, missing = 0, []
    with source.connect() as s, target.begin() as t:
        for schema, name in sequences:
            qualified = f"{quote_pg(schema)}.{quote_pg(name)}"
            options = s.execute(text(_SEQUENCE), {"s": schema, "n": name}).one()
            value, called = s.exec_driver_sql(
                f"SELECT last_value, is_called FROM {qualified}"
            ).one()
            theirs = t.execute(text(_SEQUENCE), {"s": schema, "n": name}).first()
            if theirs is None:
                missing.append(f"{schema}.{name}")
                continue
            if tuple(theirs) != tuple(options):
                t.exec_driver_sql(
                    f"ALTER SEQUENCE {qualified} AS {options.type} "
                    f"INCREMENT BY {int(options.increment)} MINVALUE {int(options.min)} "
                    f"MAXVALUE {int(options.max)} START WITH {int(options.start)} "
                    f"CACHE {int(options.cache)} {'' if options.cycle else 'NO '}CYCLE"
                )
            t.execute(
                text("SELECT setval(CAST(:q AS regclass), :v, :c)"),
                {"q": qualified, "v": int(value), "c": bool(called)},
            )
            done += 1
    return done, missing
