"""A snapshot of what one target's PostgreSQL resolves names to: plain data the inspector reads.

sql.inspector decides on text; PostgreSQL decides on its catalogue. Where the two can disagree, this
snapshot says how the server will read a name:
- `x.name` calls name(x) when x has no column `name` and some one-argument function (or type) is
  called `name` (attribute notation): `unary` and `columns` tell a column from a call;
- an unqualified `lower(1)` runs public.lower(integer) if someone made one: `user_functions` holds
  every function name with an overload outside pg_catalog and information_schema;
- operators and type conversions can run user functions: `user_operators`, `user_types`.
Functions that belong to an extension shipped with PostgreSQL (contrib: pg_trgm, citext, ...) count
as built-ins: their code is the distribution's, installed by a superuser.

Built from rows of CATALOG_SQL by `build` (pure); gateway/pg/catalogload.py runs the query.
Every lookup is a set or dict membership test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["CATALOG_SQL", "CONTRIB", "SYSTEM_SCHEMAS", "Catalog", "build"]

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# Extensions shipped with PostgreSQL whose functions the read allowlist may name (similarity, digest...).
# Functions of any other extension are user functions. dblink and tablefunc are here only so that
# their names keep matching the denied list (dblink*, crosstab*), which checks names, not schemas.
CONTRIB = frozenset(
    "btree_gin btree_gist citext cube dblink earthdistance fuzzystrmatch hstore intarray isn lo ltree "
    "pg_trgm pgcrypto seg tablefunc tcn tsm_system_rows tsm_system_time unaccent uuid-ossp "
    "pg_stat_statements pg_buffercache pgrowlocks pgstattuple pg_visibility pg_walinspect amcheck "
    "pageinspect pg_freespacemap pg_prewarm plpgsql postgres_fdw file_fdw xml2 bloom intagg "
    "dict_int dict_xsyn adminpack old_snapshot sslinfo".split()
)

# One result: kind, name, detail, schema, extension. Readable by any login: these catalogues are
# granted to PUBLIC in every PostgreSQL, so the scope's own login sees the same rows as a superuser.
# search_path first, so that no operator in the query can resolve to one in a schema the login can
# write (everything else is qualified). Other sessions' temporary tables are left out: their columns
# say nothing about this session's names.
CATALOG_SQL = """\
SET search_path = pg_catalog, pg_temp;
SELECT 'f', p.proname, ((p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1) OR p.provariadic <> 0)::text,
       n.nspname, coalesce(e.extname, '')
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
       AND d.deptype = 'e'
  LEFT JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
UNION ALL
SELECT 't', t.typname, '', t.typnamespace::pg_catalog.regnamespace::text, '' FROM pg_catalog.pg_type t
 WHERE t.typelem = 0 OR t.typname !~ '^_'
UNION ALL
SELECT 'o', o.oprname, pn.nspname || '.' || p.proname, pn.nspname, coalesce(e.extname, '')
  FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
  LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
       AND d.deptype = 'e'
  LEFT JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
 WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'x', t.typname, pn.nspname || '.' || p.proname, pn.nspname, coalesce(e.extname, '')
  FROM pg_catalog.pg_type t
  JOIN (SELECT casttarget AS typ, castfunc AS fn FROM pg_catalog.pg_cast WHERE castfunc <> 0
        UNION SELECT oid, typinput FROM pg_catalog.pg_type
        UNION SELECT con.contypid, dep.refobjid FROM pg_catalog.pg_constraint con
              JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
               AND dep.objid = con.oid AND dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
             WHERE con.contypid <> 0) f ON f.typ = t.oid
  JOIN pg_catalog.pg_proc p ON p.oid = f.fn JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
  LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
       AND d.deptype = 'e'
  LEFT JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
 WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'c', c.relname, a.attname, c.oid::text, '' FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
 WHERE NOT a.attisdropped AND a.attnum <> 0 AND c.relkind IN ('r', 'v', 'm', 'f', 'p', 'c')
   AND c.relpersistence <> 't'"""


@dataclass(frozen=True, eq=False, slots=True)
class Catalog:
    """One target's names as its server resolves them (identity-hashed: one snapshot, one cache)."""

    unary: frozenset[str]  # callable with one argument in some schema, or a type name: `x.name` may call it
    user_functions: Mapping[str, frozenset[str]]  # name -> schemas of its overloads outside the system ones
    user_operators: Mapping[str, frozenset[str]]  # operator -> the user functions behind it
    user_types: Mapping[str, frozenset[str]]  # type -> user functions a conversion to it runs
    columns: Mapping[str, frozenset[str]]  # relation name -> columns every relation of that name has
    all_columns: frozenset[str]  # every column or composite-type field name
    loaded_at: float = field(default=0.0)


def _user(schema: str, extension: str) -> bool:
    return schema not in SYSTEM_SCHEMAS and extension not in CONTRIB


def build(rows: Iterable[tuple[str, str, str, str, str]], loaded_at: float = 0.0) -> Catalog:
    """A Catalog from CATALOG_SQL's rows (kind, name, detail, schema, extension)."""
    unary: set[str] = set()
    user: dict[str, set[str]] = {}
    operators: dict[str, set[str]] = {}
    types: dict[str, set[str]] = {}
    by_oid: dict[str, tuple[str, set[str]]] = {}
    for kind, name, detail, schema, ext in rows:
        if kind == "f":
            if detail == "true":
                unary.add(name)
            if _user(schema, ext):
                user.setdefault(name, set()).add(schema)
        elif kind == "t":
            unary.add(name)  # (x).typename is a cast, which may run the type's functions
        elif kind == "o" and _user(schema, ext):
            operators.setdefault(name, set()).add(detail)
        elif kind == "x" and _user(schema, ext):
            types.setdefault(name, set()).add(detail)
        elif kind == "c":
            by_oid.setdefault(schema, (name, set()))[1].add(detail)  # schema holds the relation's oid here
    columns: dict[str, frozenset[str]] = {}
    for relname, cols in by_oid.values():
        # Same-named relations in several schemas: only a column all of them have is surely a column.
        have = columns.get(relname)
        columns[relname] = frozenset(cols) if have is None else have & cols
    return Catalog(
        frozenset(unary),
        {k: frozenset(v) for k, v in user.items()},
        {k: frozenset(v) for k, v in operators.items()},
        {k: frozenset(v) for k, v in types.items()},
        columns,
        frozenset(c for _, cols in by_oid.values() for c in cols),
        loaded_at,
    )
