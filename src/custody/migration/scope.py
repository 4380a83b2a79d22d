"""Which schema objects a migration of some tables needs, read from the source catalog.

A table needs more than its own ``CREATE TABLE``: the types, domains and collations of its
columns (in any schema), the sequences its defaults and identities use, the extensions that own
any of those, its partitions, the functions its triggers and defaults call, and afterwards its
keys, indexes and triggers. Views and materialized views of the schema come along when everything
they read is migrated too. Foreign keys are kept only between migrated tables: one pointing at a
table not asked for cannot hold on the target and is listed instead.

Objects are named by catalog identity ``(classid, oid)``, the same pair pg_dump writes into its
table of contents, so the dump is filtered exactly, whatever the objects are called.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text

from custody.errors import InvalidIdentifierError

PG_TYPE, PG_PROC, PG_CLASS, PG_ATTRDEF, PG_CONSTRAINT, PG_TRIGGER, PG_REWRITE = (
    1247, 1255, 1259, 2604, 2606, 2620, 2618,
)  # fmt: skip
PG_NAMESPACE, PG_COLLATION, PG_POLICY = 2615, 3456, 3256
FIRST_USER_OID = 16384

ObjectId = tuple[int, int]


@dataclass(frozen=True)
class Extension:
    """An extension the migrated tables need, and the first column (or object) needing it."""

    name: str
    schema: str
    needed_by: str


@dataclass
class TableScope:
    """One selected table: its relations (itself and its partitions) and its post-data."""

    name: str
    oid: int
    relations: tuple[int, ...]
    post_data: set[ObjectId] = field(default_factory=set)
    post_tags: dict[str, ObjectId] = field(default_factory=dict)


@dataclass
class SchemaScope:
    """Everything a migration of ``tables`` of ``schema`` creates, in catalog identities."""

    schema: str
    tables: list[TableScope]
    pre_data: set[ObjectId] = field(default_factory=set)
    pre_tags: dict[str, ObjectId] = field(default_factory=dict)
    schemas: set[str] = field(default_factory=set)
    extensions: dict[str, Extension] = field(default_factory=dict)
    sequences: list[tuple[str, str]] = field(default_factory=list)
    views: list[tuple[str, str, int, str]] = field(default_factory=list)  # schema, name, oid, kind
    view_post_data: dict[int, set[ObjectId]] = field(default_factory=dict)
    large_object_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # CHECK constraints come with CREATE TABLE; listed so that their comments can follow.
    checks: set[ObjectId] = field(default_factory=set)

    @property
    def relation_oids(self) -> set[int]:
        """Every migrated table and partition."""
        return {oid for t in self.tables for oid in t.relations}

    @property
    def relations_in_scope(self) -> set[int]:
        """Tables, partitions, sequences, views and materialized views: what grants apply to."""
        return {oid for classid, oid in self.pre_data if classid == PG_CLASS}


def schema_scope(engine: Engine, schema: str, tables: list[str]) -> SchemaScope:
    """Read from the source catalog what migrating ``tables`` of ``schema`` involves."""
    with engine.connect() as c:
        scope = SchemaScope(schema=schema, tables=[_table(c, schema, name) for name in tables])
        scope.schemas.add(schema)
        rels = sorted(scope.relation_oids)
        scope.pre_data |= {(PG_CLASS, oid) for oid in rels}
        scope.pre_tags |= {
            f"TABLE ATTACH {r.nspname} {r.relname} {r.owner}": (PG_CLASS, int(r.oid))
            for r in c.execute(
                text(
                    "SELECT c.oid, n.nspname, c.relname, pg_get_userbyid(c.relowner) AS owner "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.oid = ANY(:r) AND c.relispartition"
                ),
                {"r": rels},
            )
        }
        _types(c, scope, rels)
        _defaults_and_sequences(c, scope, rels)
        functions = _functions(c, scope, rels)
        _views(c, scope, functions)
        for table in scope.tables:
            _post_data(c, scope, table)
        _large_objects(c, scope, rels)
    return scope


def _table(c: Connection, schema: str, name: str) -> TableScope:
    oid = c.execute(
        text(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = :t AND c.relkind IN ('r', 'p')"
        ),
        {"s": schema, "t": name},
    ).scalar()
    if oid is None:
        raise InvalidIdentifierError(f"table {schema}.{name} does not exist in the source")
    # A plain table has no partition tree: it is its own only member.
    members = c.execute(
        text(
            "SELECT relid::oid FROM pg_partition_tree(CAST(:o AS oid)) WHERE relid::oid <> :o "
            "ORDER BY level, relid"
        ),
        {"o": oid},
    ).scalars()
    return TableScope(name=name, oid=int(oid), relations=(int(oid), *(int(m) for m in members)))


_EXTENSION_OF = (
    "(SELECT e.extname || '|' || en.nspname FROM pg_depend d "
    "JOIN pg_extension e ON e.oid = d.refobjid JOIN pg_namespace en ON en.oid = e.extnamespace "
    "WHERE d.classid = {classid} AND d.objid = {oid} "
    "AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' LIMIT 1)"
)


def _need_extension(scope: SchemaScope, found: str, needed_by: str) -> None:
    name, ext_schema = found.split("|", 1)
    if name not in scope.extensions:
        scope.extensions[name] = Extension(name, ext_schema, needed_by)
        scope.schemas.add(ext_schema)


def _types(c: Connection, scope: SchemaScope, rels: list[int]) -> None:
    """Column types, followed through arrays, domains, composites and ranges, in any schema."""
    rows = c.execute(
        text(
            "WITH RECURSIVE t(oid, needed_by) AS ("
            "  SELECT a.atttypid, format('%s.%s', a.attrelid::regclass, quote_ident(a.attname))"
            "  FROM pg_attribute a WHERE a.attrelid = ANY(:r) AND a.attnum > 0"
            "  AND NOT a.attisdropped"
            "  UNION"
            "  SELECT x.dep, t.needed_by FROM t JOIN pg_type ty ON ty.oid = t.oid"
            "  CROSS JOIN LATERAL ("
            "    SELECT ty.typelem WHERE ty.typelem <> 0"
            "    UNION ALL SELECT ty.typbasetype WHERE ty.typbasetype <> 0"
            "    UNION ALL SELECT a.atttypid FROM pg_attribute a WHERE ty.typrelid <> 0"
            "      AND a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped"
            "    UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = ty.oid"
            "    UNION ALL SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = ty.oid"
            "  ) x(dep)"
            ") "
            "SELECT DISTINCT ON (ty.oid) ty.oid, n.nspname, t.needed_by, "
            "COALESCE("
            + _EXTENSION_OF.format(classid="'pg_type'::regclass", oid="ty.oid")
            + ","
            + _EXTENSION_OF.format(classid="'pg_type'::regclass", oid="ty.typelem")
            + ") AS ext "
            "FROM t JOIN pg_type ty ON ty.oid = t.oid "
            "JOIN pg_namespace n ON n.oid = ty.typnamespace WHERE ty.oid >= :first "
            "ORDER BY ty.oid, t.needed_by"
        ),
        {"r": rels, "first": FIRST_USER_OID},
    ).all()
    for oid, nspname, needed_by, ext in rows:
        if ext is not None:
            _need_extension(scope, ext, needed_by)
        else:
            scope.pre_data.add((PG_TYPE, int(oid)))
            scope.schemas.add(nspname)
    collations = c.execute(
        text(
            "SELECT DISTINCT co.oid, n.nspname FROM pg_attribute a "
            "JOIN pg_collation co ON co.oid = a.attcollation "
            "JOIN pg_namespace n ON n.oid = co.collnamespace "
            "WHERE a.attrelid = ANY(:r) AND co.oid >= :first"
        ),
        {"r": rels, "first": FIRST_USER_OID},
    ).all()
    for oid, nspname in collations:
        scope.pre_data.add((PG_COLLATION, int(oid)))
        scope.schemas.add(nspname)


def _defaults_and_sequences(c: Connection, scope: SchemaScope, rels: list[int]) -> None:
    """Column defaults, and the sequences owned by, identity of, or called from the tables."""
    scope.pre_data |= {
        (PG_ATTRDEF, int(oid))
        for oid in c.execute(
            text("SELECT oid FROM pg_attrdef WHERE adrelid = ANY(:r)"), {"r": rels}
        ).scalars()
    }
    rows = c.execute(
        text(
            "SELECT DISTINCT s.oid, n.nspname, s.relname, pg_get_userbyid(s.relowner) AS owner "
            "FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace "
            "WHERE s.relkind = 'S' AND s.oid IN ("
            "  SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
            "  AND d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY(:r)"
            "  AND d.deptype IN ('a', 'i')"
            "  UNION SELECT d.refobjid FROM pg_attrdef ad JOIN pg_depend d"
            "  ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid"
            "  AND d.refclassid = 'pg_class'::regclass WHERE ad.adrelid = ANY(:r)"
            ") ORDER BY n.nspname, s.relname"
        ),
        {"r": rels},
    ).all()
    for oid, nspname, relname, owner in rows:
        scope.pre_data.add((PG_CLASS, int(oid)))
        scope.pre_tags[f"SEQUENCE OWNED BY {nspname} {relname} {owner}"] = (PG_CLASS, int(oid))
        scope.schemas.add(nspname)
        scope.sequences.append((nspname, relname))


def _functions(c: Connection, scope: SchemaScope, rels: list[int]) -> set[int]:
    """Functions the tables call from triggers, defaults and checks, in any schema.

    The schema's other functions follow in ``_views`` when their signatures only use types that
    will exist on the target.
    """
    required = c.execute(
        text(
            "SELECT p.oid, n.nspname, p.oid::regprocedure::text AS sig, "
            + _EXTENSION_OF.format(classid="'pg_proc'::regclass", oid="p.oid")
            + " AS ext FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.oid >= :first AND p.oid IN ("
            "  SELECT tgfoid FROM pg_trigger WHERE tgrelid = ANY(:r) AND NOT tgisinternal"
            "  UNION SELECT d.refobjid FROM pg_depend d WHERE d.refclassid = 'pg_proc'::regclass"
            "  AND ((d.classid = 'pg_attrdef'::regclass AND d.objid IN"
            "        (SELECT oid FROM pg_attrdef WHERE adrelid = ANY(:r)))"
            "    OR (d.classid = 'pg_constraint'::regclass AND d.objid IN"
            "        (SELECT oid FROM pg_constraint WHERE conrelid = ANY(:r)))))"
        ),
        {"r": rels, "first": FIRST_USER_OID},
    ).all()
    included: set[int] = set()
    for oid, nspname, sig, ext in required:
        if ext is not None:
            _need_extension(scope, ext, f"function {sig}")
        else:
            included.add(int(oid))
            scope.schemas.add(nspname)
    scope.pre_data |= {(PG_PROC, oid) for oid in included}
    return included


def _available_types(c: Connection, scope: SchemaScope, rels: set[int]) -> set[int]:
    """Types that will exist on the target: in scope, row types of relations in scope, arrays."""
    own = [oid for classid, oid in scope.pre_data if classid == PG_TYPE]
    found = c.execute(
        text(
            "SELECT t.oid FROM pg_type t WHERE t.oid = ANY(:t) OR t.typrelid = ANY(:r) "
            "OR t.typelem IN (SELECT oid FROM pg_type WHERE oid = ANY(:t) OR typrelid = ANY(:r)) "
            "OR t.oid IN (SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_type'::regclass "
            "  AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' "
            "  AND d.refobjid IN (SELECT oid FROM pg_extension WHERE extname = ANY(:e)))"
        ),
        {"t": own, "r": sorted(rels), "e": sorted(scope.extensions)},
    ).scalars()
    return {int(t) for t in found}


def _views(c: Connection, scope: SchemaScope, functions: set[int]) -> None:
    """The schema's functions, views and materialized views whose dependencies are all in scope.

    Repeated to a fixed point: a view may read another view, a function may return a view's rows.
    """
    candidates = c.execute(
        text(
            "SELECT p.oid, ARRAY(SELECT unnest(COALESCE(p.proallargtypes, p.proargtypes::oid[]))"
            "  UNION SELECT p.prorettype) AS types, "
            "ARRAY(SELECT d.refobjid FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass "
            "  AND d.objid = p.oid AND d.refclassid = 'pg_proc'::regclass AND d.refobjid >= :first"
            ") AS procs "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = :s AND NOT EXISTS (SELECT 1 FROM pg_depend d "
            "  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
        ),
        {"s": scope.schema, "first": FIRST_USER_OID},
    ).all()
    views = c.execute(
        text(
            "SELECT v.oid, v.relname, v.relkind, "
            "ARRAY(SELECT DISTINCT d.refobjid FROM pg_rewrite w JOIN pg_depend d "
            "  ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid "
            "  WHERE w.ev_class = v.oid AND d.refclassid = 'pg_class'::regclass "
            "  AND d.refobjid <> v.oid AND d.refobjid >= :first) AS rels, "
            "ARRAY(SELECT DISTINCT d.refobjid FROM pg_rewrite w JOIN pg_depend d "
            "  ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid "
            "  WHERE w.ev_class = v.oid AND d.refclassid = 'pg_proc'::regclass "
            "  AND d.refobjid >= :first) AS procs, "
            "ARRAY(SELECT DISTINCT d.refobjid FROM pg_rewrite w JOIN pg_depend d "
            "  ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid "
            "  WHERE w.ev_class = v.oid AND d.refclassid = 'pg_type'::regclass "
            "  AND d.refobjid >= :first) AS types "
            "FROM pg_class v JOIN pg_namespace n ON n.oid = v.relnamespace "
            "WHERE n.nspname = :s AND v.relkind IN ('v', 'm') ORDER BY v.oid"
        ),
        {"s": scope.schema, "first": FIRST_USER_OID},
    ).all()
    # The schema's own types too, even those no column uses: values can name them (a regtype
    # column holding 'mood'), and pg_dump's schema copy always brought them.
    own_types = c.execute(
        text(
            "SELECT t.oid, ARRAY("
            "  SELECT t.typbasetype WHERE t.typbasetype <> 0"
            "  UNION ALL SELECT a.atttypid FROM pg_attribute a WHERE t.typrelid <> 0"
            "    AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped"
            "  UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid"
            ") AS deps "
            "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = :s AND t.typtype IN ('e', 'd', 'c', 'r') "
            "AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') "
            "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass "
            "  AND d.objid = t.oid AND d.deptype = 'e')"
        ),
        {"s": scope.schema},
    ).all()
    rels = set(scope.relation_oids)
    extension_procs = {
        int(p)
        for p in c.execute(
            text(
                "SELECT d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid "
                "WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'e' "
                "AND d.refclassid = 'pg_extension'::regclass AND e.extname = ANY(:e)"
            ),
            {"e": sorted(scope.extensions)},
        ).scalars()
    }
    chosen_views: list[int] = []
    changed = True
    while changed:
        changed = False
        types = _available_types(c, scope, rels)
        for oid, deps in own_types:
            if (PG_TYPE, oid) not in scope.pre_data and all(
                d < FIRST_USER_OID or d in types for d in deps
            ):
                scope.pre_data.add((PG_TYPE, int(oid)))
                changed = True
        for oid, sig_types, procs in candidates:
            if oid in functions:
                continue
            if all(t < FIRST_USER_OID or t in types for t in sig_types) and all(
                p in functions or p in extension_procs for p in procs
            ):
                functions.add(int(oid))
                changed = True
        for oid, _, _, view_rels, procs, view_types in views:
            if oid in rels:
                continue
            if (
                all(r in rels for r in view_rels)
                and all(p in functions or p in extension_procs for p in procs)
                and all(t in types for t in view_types)
            ):
                rels.add(int(oid))
                chosen_views.append(int(oid))
                changed = True
    scope.pre_data |= {(PG_PROC, oid) for oid in functions}
    scope.pre_data |= {(PG_CLASS, oid) for oid in chosen_views}
    by_oid = {int(v[0]): v for v in views}
    for oid in chosen_views:
        _, relname, relkind, *_ = by_oid[oid]
        scope.views.append((scope.schema, relname, oid, relkind))
        scope.view_post_data[oid] = {
            (PG_CLASS, int(i))
            for i in c.execute(
                text("SELECT indexrelid FROM pg_index WHERE indrelid = :o"), {"o": oid}
            ).scalars()
        }
    for oid, relname, relkind, *_ in views:
        if oid not in rels:
            kind = "materialized view" if relkind == "m" else "view"
            scope.notes.append(
                f"{kind} {relname}: not migrated (it reads a table or function not migrated)"
            )


def _post_data(c: Connection, scope: SchemaScope, table: TableScope) -> None:
    """Keys, indexes, triggers, rules and policies of one table and its partitions."""
    rels = list(table.relations)
    migrated = scope.relation_oids
    for oid, contype, confrelid, conname, parent, validated, ref in c.execute(
        text(
            "SELECT k.oid, k.contype, k.confrelid, k.conname, k.conparentid, k.convalidated, "
            "COALESCE(k.confrelid::regclass::text, '') FROM pg_constraint k "
            "WHERE k.conrelid = ANY(:r)"
        ),
        {"r": rels},
    ):
        if contype == "f" and confrelid not in migrated:
            if parent == 0:
                scope.notes.append(
                    f"foreign key {conname} on {table.name} -> {ref}: not migrated "
                    "(it references a table not migrated)"
                )
            continue
        if contype in ("p", "u", "x", "f", "t") or (contype == "c" and not validated):
            table.post_data.add((PG_CONSTRAINT, int(oid)))
        elif contype == "c":
            scope.checks.add((PG_CONSTRAINT, int(oid)))
    for oid, nspname, relname, owner, attached in c.execute(
        text(
            "SELECT i.indexrelid, n.nspname, c.relname, pg_get_userbyid(c.relowner), "
            "EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.indrelid = ANY(:r)"
        ),
        {"r": rels},
    ):
        table.post_data.add((PG_CLASS, int(oid)))
        if attached:
            table.post_tags[f"INDEX ATTACH {nspname} {relname} {owner}"] = (PG_CLASS, int(oid))
    for query, classid in (
        ("SELECT oid FROM pg_trigger WHERE tgrelid = ANY(:r) AND NOT tgisinternal", PG_TRIGGER),
        ("SELECT oid FROM pg_rewrite WHERE ev_class = ANY(:r) AND rulename <> '_RETURN'",
         PG_REWRITE),
        ("SELECT oid FROM pg_policy WHERE polrelid = ANY(:r)", PG_POLICY),
    ):  # fmt: skip
        table.post_data |= {
            (classid, int(o)) for o in c.execute(text(query), {"r": rels}).scalars()
        }


def _large_objects(c: Connection, scope: SchemaScope, rels: list[int]) -> None:
    """Columns that hold large-object references (``oid`` or the ``lo`` extension's domain)."""
    scope.large_object_columns = [
        f"{r.rel}.{r.col}"
        for r in c.execute(
            text(
                "SELECT a.attrelid::regclass::text AS rel, quote_ident(a.attname) AS col "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = ANY(:r) AND a.attnum > 0 AND NOT a.attisdropped "
                "AND (a.atttypid = 'oid'::regtype OR (t.typname = 'lo' AND t.typtype = 'd' "
                "AND t.typbasetype = 'oid'::regtype)) ORDER BY 1, 2"
            ),
            {"r": rels},
        )
    ]
