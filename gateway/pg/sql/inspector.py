"""Inspect SQL text and decide whether a scope may run it. Pure code: no I/O, no clock.

The Postgres front end calls `Inspector.check` for every Query and Parse message. How it works:
`sql.lex` splits the text into statements exactly as the server does (comments, dollar quotes,
E'' strings...), `sql.classify` says what each statement is, and `decide` applies the scope.
The upstream login's own privileges are the real wall (a read scope logs in as a SELECT-only
role); this is the second wall, and the record of intent.

What each mode allows (policy.mode; an unknown mode is treated as read):

read   SELECT/VALUES/TABLE (no SELECT INTO, no FOR UPDATE/SHARE, no data-modifying WITH), SHOW,
       EXPLAIN (with ANALYZE only of a read), DECLARE ... CURSOR FOR <read>, FETCH/MOVE/CLOSE,
       COPY (<read>)|table TO STDOUT, PREPARE x AS <read>, EXECUTE x when `prepared` says x is a read,
       BEGIN/START TRANSACTION (not READ WRITE), COMMIT/ROLLBACK/SAVEPOINT/RELEASE, SET/RESET of
       harmless settings (sql.functions.READ_SETTINGS; search_path only if pg_catalog is first or
       not listed), DEALLOCATE, DISCARD PLANS/TEMP/SEQUENCES, LISTEN/UNLISTEN (only subscribes this
       session). Every function called must be in the read allowlist (sql.functions.READ_FUNCTIONS,
       unqualified or pg_catalog.) or policy.extra_functions; with the target's catalogue, an
       unqualified name that has an overload outside pg_catalog must be in extra_functions (the
       server, not the name, decides which one runs). pg_sleep is allowed: it only holds this
       session's connection (statement_timeout bounds it). txid_current() is not a read.
write  read, plus INSERT/UPDATE/DELETE/MERGE (also in WITH), FOR UPDATE/SHARE, COPY FROM STDIN,
       LOCK, NOTIFY, CALL, READ WRITE transactions, RESET ALL, other non-custom settings,
       PREPARE TRANSACTION. Any function except sql.functions.WRITE_DENIED_FUNCTIONS (set_config,
       backend signals, server files, dblink, functions that run SQL text...) unless extra_functions
       lists it. Denied: DDL (incl. CREATE TEMP TABLE, SELECT INTO, TRUNCATE), DCL, SET ROLE /
       SESSION AUTHORIZATION and their RESET, DISCARD ALL, custom (dotted) settings, ALTER SYSTEM,
       COPY to/from a file or PROGRAM, DO, VACUUM/ANALYZE/CLUSTER/REINDEX/CHECKPOINT/REFRESH/LOAD,
       COMMIT/ROLLBACK PREPARED, unknown or unparseable statements.
calls  (read and write; sql.calls) "Every function called" means every call the server may make: `f(...)`
       in any clause, quoted or schema-qualified; attribute notation, which PostgreSQL reads as a call
       when x has no such column (`(x).f`, `t.f`, `(t.c).f` mean f(x), f(t), f(t.c)); conversions to
       a type whose cast, input or domain CHECK runs a user function; operators backed by user
       functions. gateway.pg.sql.catalog (the target's, passed in: no I/O here) tells a column from a
       call; without one, PostgreSQL 15's built-in names stand in and `(expr).name` naming no
       built-in is denied (rule "ambiguous-call"): it may be a user function nobody can see.
admin  everything, unparseable included (a lexer error means the server runs nothing either);
       unparseable statements still carry a keyword kind and every name they mention, for rules.
every  client encodings in which a quote can hide inside a character (SJIS, GBK, BIG5...; pg/encodings)
       and standard_conforming_strings other than on are refused (rule "encoding"): both change where
       the server thinks a string ends. The front end must pin both in the startup packet (so
       RESET/DEFAULT are safe), watch ParameterStatus, and decode text in the session's encoding.
       A set_config() whose value (or name and value) is a parameter `$n` is decided at each Bind from
       the values it carries (Statement.bind, checked by the front end: pg/machine); a value not sent as
       text stays refused, and so does the statement where no Bind decides (PREPARE, EXECUTE by SQL).

Policy rules then apply to every statement (kill > floor deny > rule deny), and detections add
alerts: UPDATE/DELETE without WHERE, statements touching sensitive tables.

Caching: the fingerprint keeps everything but literal values (and keeps those of SET and of
statements calling set_config, the only decisions that read a literal); sqlglot parses a rendering
in which every literal is the same constant, so a decision is a function of the fingerprint.
Decisions that read the statement text (pattern rules) or the session (EXECUTE) are recomputed, and
so are those of statements that may change the catalogue (DDL, DO, CALL: `on_ddl` hears of each).
Inspections do not depend on the catalogue; decisions do: `Inspector.use` drops them for a new one.
Before the lexer, `Inspector.check` tries the exact text, then (for texts of names, integers, whitespace
and a few operators only, see `skeleton`) the text with its integers blanked: ~3 us instead of ~9 us
for the pgbench/ORM pattern of one statement shape with ever-new ids.
sqlglot blocks the event loop ~6 us a token: past MAX_PARSE_TOKENS in one text, statements are
classified by keyword only (unparseable below admin).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.pg.sql.calls import function_floor, split_name
from gateway.pg.sql.catalog import Catalog
from gateway.pg.sql.classify import (
    IN_WITH,
    UNPARSEABLE,
    Budget,
    Facts,
    classify,
    dangerous_calls,
    lexing_calls,
    unparseable,
)
from gateway.pg.sql.lex import IDENT, QIDENT, LexError, Token, keeps_literals, render, split, tokenize
from gateway.pg.sql.settings import BIND_COMMANDS
from gateway.policy import Decision, SqlPolicy, SqlRule, Verdict

__all__ = [
    "Inspection", "Inspector", "Statement", "decide", "decide_function_call", "fingerprint", "inspect",
    "statement_name",
]  # fmt: skip

_RANK = {"read": 0, "write": 1, "admin": 2, "never": 3}
_MAX_CACHED_KEY = 8192  # longer texts are inspected every time rather than pinned in memory
# sqlglot takes ~6 us a token and blocks the event loop meanwhile: past this many tokens in one text,
# statements are classified by keyword only (so unparseable: denied below admin; admin rules still
# see keyword kinds and every name).
MAX_PARSE_TOKENS = 30000


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a possibly multi-statement text."""

    text: str  # the statement's own text (from its first token to its last; no `;`)
    kind: str  # read, write, ddl, dcl, session, transaction, admin, unknown
    command: str  # SELECT, INSERT, SET, BEGIN, COPY, EXPLAIN, PREPARE, DO, ...
    tables: frozenset[str]  # as written, unquoted names lowercased: "public.orders", "orders"
    functions: frozenset[str]  # called anywhere (subqueries, CTEs, LATERAL...), "pg_catalog.x" if so written
    has_where: bool  # False when an UPDATE or DELETE in it (CTEs included) has no WHERE
    reason: str  # why kind/needs are what they are; "could not be parsed safely: ..." when unknown
    needs: str  # the least mode that may run it: read, write, admin, or never
    # Calls the server may make that are not `name (`, resolved by decide() against the catalogue:
    attributes: frozenset[tuple[str, str]] = frozenset()  # (relation, name) of `x.name`: sql.parse
    types: frozenset[str] = frozenset()  # types converted to (x::t, CAST(x AS t), t 'literal')
    operators: frozenset[str] = frozenset()
    # A set_config() whose value is a parameter ($n): the encoding wall is decided at each Bind, from its values.
    bind: bool = False

    def again(self, text: str) -> Statement:
        """The same statement with another text (same fingerprint, other literals)."""
        return Statement(text, self.kind, self.command, self.tables, self.functions, self.has_where, self.reason,
                         self.needs, self.attributes, self.types, self.operators, self.bind)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Inspection:
    """Every statement of a text, its fingerprint, and the first parse error if any."""

    statements: tuple[Statement, ...]
    fingerprint: str  # literal-free, whitespace- and case-normalised; the cache key, and recorded
    error: str | None
    bind: bool = False  # some statement is decided at Bind too (Statement.bind)

    @property
    def prepares(self) -> dict[str, Inspection]:
        """SQL-level `PREPARE name AS ...` in this text: name -> an Inspection of that statement alone.

        The front end keeps these (with Parse messages' names) as `prepared` for later EXECUTEs.
        """
        out: dict[str, Inspection] = {}
        for s in self.statements:
            name = statement_name(s) if s.command == "PREPARE" and not s.reason.startswith(UNPARSEABLE) else None
            if name is not None:
                out[name] = Inspection((s,), fingerprint(s.text), None)
        return out


class _Scan:
    """The lexer's view of a text: tokens, statement token ranges, fingerprint, lexer error."""

    __slots__ = ("bounds", "error", "fingerprint", "kept", "toks")

    def __init__(self, sql: str) -> None:
        self.error: str | None = None
        self.kept = False  # some statement keeps its literals in the fingerprint (SET, set_config)
        try:
            self.toks = tokenize(sql)
        except LexError as exc:
            self.toks, self.bounds, self.error = [], [], str(exc)
            self.fingerprint = f"<{exc}>"
            return
        self.bounds = split(self.toks)
        # A quoted "set_config" contains it too; U&"set_confi\0067" does not, hence "&".
        maybe = "set_config" in sql or "set_config" in sql.lower() or "&" in sql
        toks = self.toks
        keeps = [keeps_literals(toks, a, b, maybe) for a, b in self.bounds]
        self.kept = any(keeps)
        self.fingerprint = " ; ".join(render(toks, a, b, k) for (a, b), k in zip(self.bounds, keeps, strict=True))

    def texts(self, sql: str) -> list[str]:
        return [sql[self.toks[a][2] : self.toks[b - 1][3]] for a, b in self.bounds]


# The fast path for texts that differ only in numbers (pgbench -S, ORMs that inline ids): a text made only of
# ASCII names, unsigned integers, whitespace, `, ( ) ; .` and the operator characters `= < > ! * +` has no
# string, quoted name, comment, dollar quote, parameter or other literal form, so the lexer finds exactly:
# names (which swallow their own digits), integers (each maximal digit run that does not follow a name
# character; the grammar refuses one followed by a letter, `_`, `$` or `.`: 1e5, 0x1f, 1_000, 1.5), and
# punctuation/operators that depend only on these characters. Two such texts that are equal once every
# integer is replaced by `?` (their skeleton) therefore lex to the same tokens but for the integers'
# values: the same statements, the same fingerprint unless a statement keeps its literals (never cached
# by skeleton), the same inspection. tests/test_sqlinspect.py checks this against the lexer.
_SKELETON_TEXT = re.compile(
    r"(?:[ \t\n\r]++|[A-Za-z_][A-Za-z0-9_$]*+|[0-9]++(?![A-Za-z0-9_$.])|\.(?=[A-Za-z_*])|[,();=<>!*+])*+"
)
_SKELETON_INT = re.compile(r"(?<![A-Za-z0-9_$])[0-9]++")


def skeleton(sql: str) -> str | None:
    """`sql` with every integer literal replaced by `?`, for texts in the fast-path grammar above; else None."""
    if _SKELETON_TEXT.fullmatch(sql) is None:
        return None
    return _SKELETON_INT.sub("?", sql)


def skeleton_texts(sql: str) -> list[str]:
    """The statement texts of a fast-path text (no quotes or comments: every `;` ends a statement)."""
    return [t for p in sql.split(";") if (t := p.strip(" \t\n\r"))]


def fingerprint(sql: str) -> str:
    """Literal-stripped, normalised form of `sql` (tokenizer only, no parse); stable across literal values."""
    return _Scan(sql).fingerprint


def inspect(sql: str) -> Inspection:
    """Split and classify every statement of `sql`; never raises."""
    return _inspect(sql, _Scan(sql))


def _inspect(sql: str, scan: _Scan) -> Inspection:
    if scan.error is not None:
        # The server rejects the whole text before running any of it; keep the text for pattern rules.
        stmt = _statement(sql.strip(), unparseable(scan.error), scan.toks)
        return Inspection((stmt,), scan.fingerprint, scan.error)
    cached = _INSPECTIONS.get(scan.fingerprint)
    if cached is not None:
        return _retext(cached, scan.texts(sql))
    budget = Budget(MAX_PARSE_TOKENS)
    stmts = tuple(
        _statement(text, _classify(scan.toks[a:b], budget), scan.toks[a:b])
        for text, (a, b) in zip(scan.texts(sql), scan.bounds, strict=True)
    )
    error = next((s.reason for s in stmts if s.reason.startswith(UNPARSEABLE)), None)
    ins = Inspection(stmts, scan.fingerprint, error, any(s.bind for s in stmts))
    if len(scan.fingerprint) <= _MAX_CACHED_KEY:
        _INSPECTIONS.put(scan.fingerprint, ins)
    return ins


def _classify(toks: list[Token], budget: Budget) -> Facts:
    try:
        return classify(toks, budget)
    except Exception as exc:  # a bug here must not let a statement through: fail closed
        return unparseable(f"internal error ({type(exc).__name__})")


def _statement(text: str, f: Facts, toks: list[Token]) -> Statement:
    functions = f.functions | dangerous_calls(toks) if toks else f.functions
    bind = False
    if f.needs != "never" and (why := lexing_calls(toks)) is not None:
        # A value that only the Bind message carries: decided there (the front end's Parse path), or refused.
        bind = f.command in BIND_COMMANDS and lexing_calls(toks, at_bind=True) is None
        if not bind:
            f = f._replace(needs="never", reason=why)
    return Statement(text, f.kind, f.command, f.tables, functions, f.has_where, f.reason, f.needs,
                     f.attributes, f.types, f.operators, bind)  # fmt: skip


def _retext(ins: Inspection, texts: list[str]) -> Inspection:
    """The cached inspection with this text's statement slices (same fingerprint, other literals)."""
    if len(texts) == 1 and len(ins.statements) == 1:  # the common case, without the generators
        s, t = ins.statements[0], texts[0]
        if s.text == t:
            return ins
        return Inspection((s.again(t),), ins.fingerprint, ins.error, ins.bind)
    if all(s.text == t for s, t in zip(ins.statements, texts, strict=True)):
        return ins
    stmts = tuple(s.again(t) for s, t in zip(ins.statements, texts, strict=True))
    return Inspection(stmts, ins.fingerprint, ins.error, ins.bind)


def statement_name(stmt: Statement) -> str | None:
    """The prepared-statement name of a PREPARE, EXECUTE or DEALLOCATE (as the server folds it)."""
    if stmt.command not in ("PREPARE", "EXECUTE", "DEALLOCATE"):
        return None
    try:
        toks = tokenize(stmt.text)
    except LexError:
        return None
    i = 2 if len(toks) > 2 and toks[1][0] == IDENT and toks[1][1] == "prepare" else 1
    if i < len(toks) and toks[i][0] in (IDENT, QIDENT):
        return toks[i][1]
    return None


# --- decide ----------------------------------------------------------------------------------------


def decide(
    ins: Inspection,
    policy: SqlPolicy,
    prepared: Mapping[str, Inspection] | None = None,
    catalog: Catalog | None = None,
) -> Decision:
    """The scope's decision on a whole text: mode floor, then rules, then detections.

    `prepared` maps prepared-statement names to the Inspection that created them (the Parse
    message's query, or the PREPARE statement); EXECUTE of a name not in it is denied below admin.
    `catalog` is the target's (gateway.pg.sql.catalog); without it, names are judged by PostgreSQL 15's
    built-ins and `(expr).name` that may be a call of an unknown function is denied below admin.
    """
    mode = policy.mode if policy.mode in ("read", "write", "admin") else "read"
    floor = next((d for s in ins.statements if (d := _floor(s, mode, policy, prepared, catalog)) is not None), None)
    stmts = list(_with_prepared(ins.statements, prepared))
    verdict, alerts = _rules(stmts, policy.rules)
    if verdict is not None and verdict.verdict is Verdict.KILL:
        return verdict
    if floor is not None:
        return floor
    if verdict is not None:
        return verdict
    alerts.extend(_detections(stmts, policy))
    return Decision.allow(*dict.fromkeys(alerts))


def decide_function_call(policy: SqlPolicy | None) -> Decision:
    """The FunctionCall protocol message: allowed only when the policy's mode is admin (no policy: read).

    It names a function by OID and carries no SQL, so there is nothing for the allowlists to check.
    """
    if policy is not None and policy.mode == "admin":
        return _ALLOW_DECISION
    mode = policy.mode if policy is not None else "read"
    return Decision.deny(
        "function-call", f"the FunctionCall protocol message is allowed only in admin mode, not {mode}"
    )


_ALLOW_DECISION = Decision(Verdict.ALLOW)


def _floor(
    s: Statement, mode: str, policy: SqlPolicy, prepared: Mapping[str, Inspection] | None, catalog: Catalog | None
) -> Decision | None:
    """Why the scope's mode refuses this statement, or None."""
    if _is_execute(s) and mode != "admin":
        denied = _execute_floor(s, mode, policy, prepared, catalog)
        if denied is not None:
            return denied
    elif _RANK.get(s.needs, 3) > _RANK[mode]:
        return _refusal(s, mode)
    if mode == "admin":
        return None
    return function_floor(s, mode, policy.extra_functions, catalog)


def _is_execute(s: Statement) -> bool:
    """A well-formed EXECUTE, whose fate is the prepared statement's (a malformed one is unparseable)."""
    return s.command == "EXECUTE" and not s.reason.startswith(UNPARSEABLE)


def _refusal(s: Statement, mode: str) -> Decision:
    if s.needs == "never":
        return Decision.deny("encoding", s.reason)
    if s.kind == "unknown" or s.reason.startswith(UNPARSEABLE):
        return Decision.deny("unparseable", s.reason)
    rule = "read-only" if mode == "read" else "write-scope"
    if s.reason.endswith(IN_WITH):
        # The statement's own verb (SELECT) would mislead: name what the WITH clause does.
        return Decision.deny(rule, f"{s.reason} is not allowed in {mode} scope")
    why = f" ({s.reason})" if s.reason else ""
    return Decision.deny(rule, f"{s.command} is not allowed in {mode} scope{why}")


def _execute_floor(
    s: Statement, mode: str, policy: SqlPolicy, prepared: Mapping[str, Inspection] | None, catalog: Catalog | None
) -> Decision | None:
    name = statement_name(s)
    inner = prepared.get(name) if prepared is not None and name is not None else None
    if inner is None:
        rule = "read-only" if mode == "read" else "write-scope"
        return Decision.deny(rule, f"EXECUTE {name}: not a statement prepared in this session")
    d = decide(inner, policy, catalog=catalog)
    if not d.allowed:
        return Decision(d.verdict, d.rule, f"EXECUTE {name}: {d.reason}")
    return None


def _with_prepared(stmts: Iterable[Statement], prepared: Mapping[str, Inspection] | None) -> Iterable[Statement]:
    """Statements for rules: an EXECUTE also stands for the statements it runs."""
    for s in stmts:
        yield s
        if _is_execute(s) and prepared is not None:
            inner = prepared.get(statement_name(s) or "")
            if inner is not None:
                yield from inner.statements


def _rules(stmts: list[Statement], rules: tuple[SqlRule, ...]) -> tuple[Decision | None, list[str]]:
    """The strongest refusal among matching rules (kill over deny, then first), and rule alerts."""
    refusal: Decision | None = None
    alerts: list[str] = []
    for s in stmts:
        for rule in rules:
            if not _rule_matches(rule, s):
                continue
            if rule.action is Verdict.ALERT:
                alerts.append(rule.name)
                continue
            why = f"rule {rule.name}: {s.command}"
            if rule.action is Verdict.KILL:
                return Decision.kill(rule.name, why), alerts
            refusal = refusal or Decision.deny(rule.name, why)
    return refusal, alerts


def _rule_matches(rule: SqlRule, s: Statement) -> bool:
    """A rule matches when every field it sets matches; kinds also match command names (`delete`)."""
    if rule.kinds and s.kind not in rule.kinds and s.command.lower() not in rule.kinds:
        return False
    if rule.tables and not _meets(rule.tables, s.tables):
        return False
    if rule.functions and not _meets(rule.functions, s.functions):
        return False
    return rule.pattern is None or rule.pattern.search(s.text) is not None


def _meets(wanted: Iterable[str], have: Iterable[str]) -> str | None:
    """The first wanted name that names one we have; `orders` and `public.orders` meet (search_path)."""
    have = list(have)
    for w in wanted:
        ws, wb = split_name(w)
        for h in have:
            hs, hb = split_name(h)
            if w == h or (wb == hb and (not ws or not hs)):
                return w
    return None


def _detections(stmts: list[Statement], policy: SqlPolicy) -> list[str]:
    alerts: list[str] = []
    for s in stmts:
        if policy.alert_write_without_where and not s.has_where:
            alerts.append(f"write-without-where:{','.join(sorted(s.tables)) or s.command}")
        for t in sorted(s.tables):
            hit = _meets(sorted(policy.sensitive_tables), (t,))
            if hit:
                alerts.append(f"sensitive-table:{hit}")
    return alerts


# --- caches ----------------------------------------------------------------------------------------


def _may_ddl(s: Statement) -> bool:
    """Whether running the statement may change the catalogue: DDL, DO, anything admin-only, CALL."""
    return s.needs == "admin" or s.command == "CALL"


class _Lru(OrderedDict[str, Inspection]):
    """A bounded map, oldest entry evicted first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: Inspection) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


# Inspections depend on the fingerprint only, so every session shares them.
_INSPECTIONS = _Lru(4096)


class Inspector:
    """Per-scope (and target catalogue) checker: caches decisions by fingerprint so a hot statement parses once.

    A new catalogue means a new Inspector: decisions depend on it, inspections do not.
    """

    def __init__(self, policy: SqlPolicy, size: int = 4096, *, catalog: Catalog | None = None) -> None:
        self.policy = policy
        self.catalog = catalog
        self._size = size
        self._cache: OrderedDict[str, tuple[str, Inspection, Decision | None]] = OrderedDict()
        # The first text of each fingerprint, exactly (a loop re-sending one statement skips the lexer);
        # texts that only share a fingerprint are not added, so varying literals do not churn it.
        self._texts: OrderedDict[str, tuple[Inspection, Decision]] = OrderedDict()
        # Texts that differ only in integer literals (see skeleton()), for static decisions: skeleton -> same.
        self._skeletons: OrderedDict[str, tuple[Inspection, Decision]] = OrderedDict()
        # Pattern rules read literals and comments, which the fingerprint drops: decide every time.
        self._text_rules = any(r.pattern is not None for r in policy.rules)
        # Told (no I/O here) when a DDL statement is allowed: the target's catalogue is then out of date.
        self.on_ddl: Callable[[], None] | None = None

    def use(self, catalog: Catalog | None) -> None:
        """Judge with another catalogue snapshot from now on (the decision caches are dropped)."""
        if catalog is not self.catalog:
            self.catalog = catalog
            self._cache.clear()
            self._texts.clear()
            self._skeletons.clear()

    def check(self, sql: str, prepared: Mapping[str, Inspection] | None = None) -> tuple[Inspection, Decision]:
        """Inspect and decide one Query/Parse text."""
        same = self._texts.get(sql)
        if same is not None:
            self._texts.move_to_end(sql)
            return same
        skel = skeleton(sql) if not self._text_rules and len(sql) <= _MAX_CACHED_KEY else None
        if skel is not None:
            shaped = self._skeletons.get(skel)
            if shaped is not None:
                self._skeletons.move_to_end(skel)
                return _retext(shaped[0], skeleton_texts(sql)), shaped[1]
        scan = _Scan(sql)
        key = scan.fingerprint
        hit = self._cache.get(key) if scan.error is None else None
        if hit is not None:
            self._cache.move_to_end(key)
            src, ins, decision = hit
            if sql != src:
                ins = _retext(ins, scan.texts(sql))
            if decision is None:
                decision = decide(ins, self.policy, prepared, self.catalog)
                self._told(ins, decision)
                return ins, decision
            if skel is not None and not scan.kept:
                self._skeleton(skel, ins, decision)
            return ins, decision
        ins = _inspect(sql, scan)
        decision = decide(ins, self.policy, prepared, self.catalog)
        self._told(ins, decision)
        if scan.error is None and len(key) <= _MAX_CACHED_KEY:
            # EXECUTE depends on the session; DDL is decided again so that on_ddl hears of every one.
            static = not self._text_rules and not any(_is_execute(s) or _may_ddl(s) for s in ins.statements)
            self._cache[key] = (sql, ins, decision if static else None)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
            if static:
                self._remember(sql, ins, decision)
                if skel is not None and not scan.kept:
                    self._skeleton(skel, ins, decision)
        return ins, decision

    def _told(self, ins: Inspection, decision: Decision) -> None:
        if self.on_ddl is not None and decision.allowed and any(_may_ddl(s) for s in ins.statements):
            self.on_ddl()

    def _skeleton(self, skel: str, ins: Inspection, decision: Decision) -> None:
        self._skeletons[skel] = (ins, decision)
        if len(self._skeletons) > self._size:
            self._skeletons.popitem(last=False)

    def _remember(self, sql: str, ins: Inspection, decision: Decision) -> None:
        if len(sql) <= _MAX_CACHED_KEY:
            self._texts[sql] = (ins, decision)
            if len(self._texts) > self._size:
                self._texts.popitem(last=False)
