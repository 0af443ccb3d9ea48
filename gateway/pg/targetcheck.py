"""`gateway target check`: log in as each configured login and list what it can do that its scope must not.

The read-only promise is layered: the parser, the role, and this check that the role really is what the
gateway assumes. Each finding comes with the SQL a DBA runs (as a superuser, in the target's database) to
take the right away. Checked per login, by its scope's SQL mode (read < write < admin; admin: nothing):

- role attributes: SUPERUSER, CREATEROLE, CREATEDB, BYPASSRLS, REPLICATION (read, write)
- membership in privileged roles (pg_write_all_data, pg_signal_backend, pg_read_server_files, ...) (read, write)
- INSERT/UPDATE/DELETE/TRUNCATE on any table or view, USAGE/UPDATE on any sequence (read)
- EXECUTE on side-effect functions: set_config, backend signals, functions that run SQL text
  (query_to_xml, ts_stat, dblink...), server files (read, write); advisory locks, large objects,
  pg_notify (read)
- CREATE on a schema or the database, TEMP on the database (read, write)
- LISTEN and NOTIFY need no privilege at all: only the parser refuses them (pg_notify is checked above)
- default_transaction_read_only off as the role's own default (read: the gateway pins it per session,
  but a role that is read-only by itself does not depend on the gateway's startup packet)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from gateway.config import Login, Target
from gateway.pg.tls import upstream_context
from gateway.policy import Policies

# Functions neither read nor write scope may run (the inspector refuses them there too): they change
# settings (set_config can do what SET ROLE does), signal other backends (the gateway's other sessions
# share the login), touch server files, reach other servers, or run SQL given as text, which no parser
# sees. Matched by name in any schema (dblink lives wherever it was installed). Functions whose EXECUTE
# is granted to PUBLIC but that check an attribute themselves (replication slots need REPLICATION,
# binary_upgrade_* need binary-upgrade mode) are left out: the attribute check covers them.
DENIED_FUNCTIONS: frozenset[str] = frozenset(
    """
    set_config pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_switch_wal
    pg_create_restore_point pg_backup_start pg_backup_stop pg_start_backup pg_stop_backup pg_promote
    pg_wal_replay_pause pg_wal_replay_resume pg_log_backend_memory_contexts pg_logical_emit_message
    pg_truncate_visibility_map pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file lo_import lo_export
    query_to_xml query_to_xml_and_xmlschema query_to_xmlschema ts_stat ts_rewrite
    """.split()
)
DENIED_PREFIXES = ("dblink", "pg_ls_", "pg_file_", "pg_stat_reset", "pg_stat_statements_reset")
# What a read scope must not do besides: take locks other sessions wait on, write large objects (they
# outlive the session), send notifications.
READ_DENIED_FUNCTIONS: frozenset[str] = DENIED_FUNCTIONS | frozenset(
    """
    pg_advisory_lock pg_advisory_lock_shared pg_advisory_xact_lock pg_advisory_xact_lock_shared
    pg_try_advisory_lock pg_try_advisory_lock_shared pg_try_advisory_xact_lock pg_try_advisory_xact_lock_shared
    pg_advisory_unlock pg_advisory_unlock_shared pg_advisory_unlock_all
    lo_create lo_creat lo_unlink lo_write lowrite lo_put lo_from_bytea lo_truncate lo_truncate64 pg_notify
    """.split()
)
_PURE = frozenset({"pg_catalog.ts_rewrite(tsquery, tsquery, tsquery)"})  # the overload that runs no SQL text

PRIVILEGED_ROLES = (
    "pg_write_all_data", "pg_signal_backend", "pg_read_server_files", "pg_write_server_files",
    "pg_execute_server_program", "pg_checkpoint", "pg_create_subscription", "pg_use_reserved_connections",
)  # fmt: skip

# The queries below are built from this module's constants only (S608 is silenced for that reason):
# every value from the server or the config goes in as a bind parameter.
_ME = "(SELECT oid FROM pg_roles WHERE rolname = current_user)"


def _grantees(acl: str, kind: str, owner: str, priv: str) -> str:
    """SQL: (granted to PUBLIC, granted to the login itself) for one privilege; NULL acl means the default."""
    src = f"aclexplode(COALESCE({acl}, acldefault('{kind}', {owner})))"
    public = f"EXISTS (SELECT 1 FROM {src} a WHERE a.grantee = 0 AND a.privilege_type = {priv}) AS via_public"  # noqa: S608
    direct = f"EXISTS (SELECT 1 FROM {src} a WHERE a.grantee = {_ME} AND a.privilege_type = {priv}) AS direct"  # noqa: S608
    return f"{public}, {direct}"


_ATTRS = """SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication
    FROM pg_roles WHERE rolname = current_user"""
_MEMBERSHIPS = f"""SELECT r.rolname,
        EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = r.oid AND m.member = {_ME}) AS direct
    FROM pg_roles r
    WHERE r.rolname <> current_user AND pg_has_role(current_user, r.oid, 'MEMBER')
      AND (r.rolname = ANY($1::text[]) OR r.rolsuper OR r.rolcreaterole OR r.rolbypassrls)
    ORDER BY 1"""  # noqa: S608
# INSERT and UPDATE may be granted on single columns (has_table_privilege does not see those); a REVOKE on
# the table takes the column grants away too.
_TABLES = f"""SELECT format('%I.%I', n.nspname, c.relname) AS name, p.priv,
        pg_has_role(current_user, c.relowner, 'USAGE') AS owner,
        {_grantees("c.relacl", "r", "c.relowner", "p.priv")},
        EXISTS (SELECT 1 FROM pg_attribute at, aclexplode(at.attacl) a WHERE at.attrelid = c.oid
                AND a.privilege_type = p.priv AND a.grantee IN (0, {_ME})) AS on_columns
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p(priv)
    WHERE c.relkind IN ('r', 'p', 'v', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_%'
      AND (has_table_privilege(c.oid, p.priv)
           OR (p.priv IN ('INSERT', 'UPDATE') AND has_any_column_privilege(c.oid, p.priv)))
    ORDER BY 1, 2"""  # noqa: S608
_SEQUENCES = f"""SELECT format('%I.%I', n.nspname, c.relname) AS name, p.priv,
        pg_has_role(current_user, c.relowner, 'USAGE') AS owner,
        {_grantees("c.relacl", "s", "c.relowner", "p.priv")}
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN unnest(ARRAY['USAGE', 'UPDATE']) AS p(priv)
    WHERE c.relkind = 'S' AND n.nspname NOT LIKE 'pg\\_%' AND has_sequence_privilege(c.oid, p.priv)
    ORDER BY 1, 2"""  # noqa: S608
_FUNCTIONS = f"""SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)) AS sig,
        pg_has_role(current_user, p.proowner, 'USAGE') AS owner,
        {_grantees("p.proacl", "f", "p.proowner", "'EXECUTE'")}
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE (p.proname = ANY($1::text[]) OR p.proname LIKE ANY($2::text[]))
      AND has_function_privilege(p.oid, 'EXECUTE')
    ORDER BY 1"""  # noqa: S608
_SCHEMAS = f"""SELECT quote_ident(n.nspname) AS name, pg_has_role(current_user, n.nspowner, 'USAGE') AS owner,
        {_grantees("n.nspacl", "n", "n.nspowner", "'CREATE'")}
    FROM pg_namespace n
    WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND has_schema_privilege(n.oid, 'CREATE')
    ORDER BY 1"""  # noqa: S608
_DATABASE = """SELECT quote_ident(d.datname) AS name, p.priv, pg_has_role(current_user, d.datdba, 'USAGE') AS owner,
        {grantees}
    FROM pg_database d CROSS JOIN unnest(ARRAY['CREATE', 'TEMPORARY']) AS p(priv)
    WHERE d.datname = current_database() AND has_database_privilege(d.oid, p.priv)
    ORDER BY 2""".format(grantees=_grantees("d.datacl", "d", "d.datdba", "p.priv"))  # noqa: S608


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a login can do that its scope must not, and the SQL that takes it away."""

    what: str
    fix: str


@dataclass(frozen=True, slots=True)
class LoginReport:
    """What was found for one configured login (error: it could not be checked at all)."""

    scope: str
    mode: str
    login: str
    findings: tuple[Finding, ...] = ()
    error: str | None = None


def _ident(name: str) -> str:
    """A role name quoted for SQL as quote_ident would."""
    return name if name.isidentifier() and name == name.lower() else '"' + name.replace('"', '""') + '"'


def _revoke(priv: str, obj: str, login: str, via_public: bool, direct: bool, owner: bool) -> str:
    """REVOKE from PUBLIC and/or the login, whichever holds it; an owner's rights need a new owner."""
    if owner:
        kind = obj.split()[0]
        return f"ALTER {kind} {obj.split(' ', 1)[1]} OWNER TO <an owner role>;  -- {_ident(login)} owns it"
    who = [w for w, has in (("PUBLIC", via_public), (_ident(login), direct)) if has]
    if not who:
        return f"REVOKE {priv} ON {obj} FROM <the role {_ident(login)} inherits it from>;"
    return f"REVOKE {priv} ON {obj} FROM {', '.join(who)};"


async def _findings(conn: asyncpg.Connection, login: str, mode: str) -> list[Finding]:
    """Every finding for one logged-in login."""
    out: list[Finding] = []
    me = _ident(login)
    attrs = await conn.fetchrow(_ATTRS)
    if attrs is not None:
        for col, word in (("rolsuper", "SUPERUSER"), ("rolcreaterole", "CREATEROLE"), ("rolcreatedb", "CREATEDB"),
                          ("rolbypassrls", "BYPASSRLS"), ("rolreplication", "REPLICATION")):  # fmt: skip
            if attrs[col]:
                out.append(Finding(f"role attribute {word}", f"ALTER ROLE {me} NO{word};"))
    for r in await conn.fetch(_MEMBERSHIPS, list(PRIVILEGED_ROLES)):
        role = _ident(r["rolname"])
        fix = f"REVOKE {role} FROM {me};" if r["direct"] else f"REVOKE {role} FROM <the role {me} is a member of>;"
        out.append(Finding(f"member of {r['rolname']}", fix))
    if mode == "read":
        for r in await conn.fetch(_TABLES):
            cols = r["on_columns"] and not (r["via_public"] or r["direct"])
            # A column grant to PUBLIC or the login: the table-level REVOKE from both takes it away.
            via_public, direct = (True, True) if cols else (r["via_public"], r["direct"])
            out.append(Finding(f"{r['priv']} on table {r['name']}" + (" (some columns)" if cols else ""),
                               _revoke(r["priv"], f"TABLE {r['name']}", login, via_public, direct,
                                       r["owner"])))  # fmt: skip
        for r in await conn.fetch(_SEQUENCES):
            out.append(Finding(f"{r['priv']} on sequence {r['name']} (nextval/setval)",
                               _revoke(r["priv"], f"SEQUENCE {r['name']}", login, r["via_public"], r["direct"],
                                       r["owner"])))  # fmt: skip
    names = READ_DENIED_FUNCTIONS if mode == "read" else DENIED_FUNCTIONS
    prefixes = [p.replace("_", "\\_") + "%" for p in DENIED_PREFIXES]
    for r in await conn.fetch(_FUNCTIONS, sorted(names), prefixes):
        if r["sig"] in _PURE:
            continue
        out.append(Finding(f"EXECUTE {r['sig']}",
                           _revoke("EXECUTE", f"FUNCTION {r['sig']}", login, r["via_public"], r["direct"],
                                   r["owner"])))  # fmt: skip
    for r in await conn.fetch(_SCHEMAS):
        out.append(Finding(f"CREATE on schema {r['name']}",
                           _revoke("CREATE", f"SCHEMA {r['name']}", login, r["via_public"], r["direct"],
                                   r["owner"])))  # fmt: skip
    for r in await conn.fetch(_DATABASE):
        priv = "TEMP" if r["priv"] == "TEMPORARY" else r["priv"]
        what = "TEMP on database (temporary tables)" if priv == "TEMP" else "CREATE on database (new schemas)"
        out.append(Finding(what, _revoke(priv, f"DATABASE {r['name']}", login, r["via_public"], r["direct"],
                                         r["owner"])))  # fmt: skip
    if mode == "read" and await conn.fetchval("SHOW default_transaction_read_only") != "on":
        db = await conn.fetchval("SELECT quote_ident(current_database())")
        out.append(Finding("default_transaction_read_only is off for the role (the gateway pins it per session)",
                           f"ALTER ROLE {me} IN DATABASE {db} SET default_transaction_read_only = on;"))  # fmt: skip
    return out


async def check_login(target: Target, login: Login, mode: str, *, limit: float = 10.0) -> LoginReport:
    """Log in upstream as `login` (no session settings of the gateway's) and collect its findings."""
    if mode == "admin":
        return LoginReport(login.scope, mode, login.user)
    ctx = upstream_context(target)
    try:
        conn = await asyncpg.connect(
            host=target.address.host, port=target.address.port, user=login.user, database=target.database,
            password=login.password.reveal() if login.password is not None else None, ssl=ctx or False,
            timeout=limit, server_settings={"application_name": "gateway:target-check"},
        )  # fmt: skip
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The exception's text only: never the password, never a DSN.
        return LoginReport(login.scope, mode, login.user, error=f"cannot log in: {type(exc).__name__}: {exc}")
    try:
        async with asyncio.timeout(limit * 3):
            return LoginReport(login.scope, mode, login.user, tuple(await _findings(conn, login.user, mode)))
    except (TimeoutError, asyncpg.PostgresError) as exc:
        return LoginReport(login.scope, mode, login.user, error=f"check failed: {type(exc).__name__}: {exc}")
    finally:
        await conn.close()


def scope_modes(target: Target, policies: Policies) -> dict[str, str]:
    """Each login scope's SQL mode as the listener applies it: the policy's, read when it names none."""
    modes: dict[str, str] = {}
    for scope in target.logins:
        sp = policies.scope(target.name, scope)
        sql = sp.sql if sp is not None else None
        modes[scope] = "admin" if scope == "admin" else (sql.mode if sql is not None else "read")
    return modes


async def check_target(target: Target, modes: Mapping[str, str]) -> list[LoginReport]:
    """Check every configured login of a Postgres target; `modes` maps scope -> SQL mode (default read)."""
    return [
        await check_login(target, login, modes.get(scope, "read")) for scope, login in sorted(target.logins.items())
    ]


def render(target: str, reports: Sequence[LoginReport]) -> str:
    """The report as a table a DBA can read: one row per finding, with the SQL that fixes it."""
    rows: list[tuple[str, str, str]] = []
    for r in reports:
        who = f"{r.login} ({r.scope}, {r.mode})"
        if r.error is not None:
            rows.append((who, r.error, "-"))
        elif not r.findings:
            rows.append((who, "nothing beyond its scope" if r.mode != "admin" else "admin scope: not checked", "-"))
        for f in r.findings:
            rows.append((who, f.what, f.fix))
    head = ("LOGIN (SCOPE, MODE)", "CAN", "FIX (run as a superuser in the target database)")
    w0 = max(len(head[0]), *(len(r[0]) for r in rows)) if rows else len(head[0])
    w1 = min(60, max(len(head[1]), *(len(r[1]) for r in rows))) if rows else len(head[1])
    lines = [f"target {target}: {count_findings(reports)} finding(s)", f"{head[0]:<{w0}}  {head[1]:<{w1}}  {head[2]}"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def count_findings(reports: Sequence[LoginReport]) -> int:
    """Findings plus logins that could not be checked (both make the check fail)."""
    return sum(len(r.findings) + (r.error is not None) for r in reports)
