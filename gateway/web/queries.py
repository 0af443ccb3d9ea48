"""The Sessions page's query: filters and one page, in SQL on both stores (SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store import SessionRecord, Store
from gateway.store.schema import session_row
from gateway.store.sqlite import SqliteStore

PAGE = 50


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """What the reviewer asked for; None means any."""

    user: str | None = None
    target: str | None = None
    protocol: str | None = None
    since: float | None = None
    until: float | None = None
    violations: bool | None = None
    end_reason: str | None = None  # a substring of the end reason
    live: bool | None = None

    def matches(self, s: SessionRecord) -> bool:
        """The same filter in Python (stores without the SQL path)."""
        if (self.user and s.user != self.user) or (self.target and s.target != self.target):
            return False
        if self.protocol and s.protocol != self.protocol:
            return False
        if self.since is not None and s.started_at < self.since:
            return False
        if self.until is not None and s.started_at >= self.until:
            return False
        if self.violations is not None and (violations(s) > 0) != self.violations:
            return False
        if self.end_reason and self.end_reason.lower() not in (s.end_reason or "").lower():
            return False
        return self.live is None or (s.ended_at is None) == self.live


def violations(s: SessionRecord) -> int:
    """Refused statements plus refused commands (the CLI's count)."""
    return int(s.stats.get("denied", 0) or 0) + int(s.stats.get("violations", 0) or 0)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True, slots=True)
class _Dialect:
    """What differs between the two stores' SQL for this one query."""

    user: str  # the user column (a reserved word in PostgreSQL)
    denied: str  # a count in the stats JSON, by key
    like: str  # case-insensitive LIKE with a backslash escape

    def mark(self, n: int) -> str:
        return "?" if self is _SQLITE else f"${n}"


_SQLITE = _Dialect("user", "COALESCE(json_extract(stats, '$.{key}'), 0)", "LIKE {} ESCAPE '\\' COLLATE NOCASE")
_PG = _Dialect('"user"', "COALESCE((stats::jsonb->>'{key}')::float8, 0)", "ILIKE {} ESCAPE '\\'")


def page_query(d: _Dialect, f: SessionFilter, *, offset: int, limit: int) -> tuple[str, list[object]]:
    """The page's SQL and arguments for one store's dialect (values never enter the SQL text)."""
    where, args = ["1=1"], list[object]()

    def arg(value: object) -> str:
        args.append(value)
        return d.mark(len(args))

    for col, val in ((d.user, f.user), ("target", f.target), ("protocol", f.protocol)):
        if val:
            where.append(f"{col} = {arg(val)}")
    if f.since is not None:
        where.append(f"started_at >= {arg(f.since)}")
    if f.until is not None:
        where.append(f"started_at < {arg(f.until)}")
    if f.violations is not None:
        count = f"({d.denied.format(key='denied')} + {d.denied.format(key='violations')})"
        where.append(f"{count} {'>' if f.violations else '='} 0")
    if f.end_reason:
        where.append("end_reason " + d.like.format(arg(_like(f.end_reason))))
    if f.live is not None:
        where.append("ended_at IS NULL" if f.live else "ended_at IS NOT NULL")
    page = f"LIMIT {arg(limit)} OFFSET {arg(offset)}"
    sql = f"SELECT * FROM sessions WHERE {' AND '.join(where)} ORDER BY started_at DESC, id DESC {page}"  # noqa: S608 - fixed column names and placeholders only
    return sql, args


async def page_sessions(store: Store, f: SessionFilter, *, offset: int, limit: int = PAGE) -> list[SessionRecord]:
    """Sessions matching `f`, newest first, `limit` of them from `offset`: one SQL query on either store."""
    if isinstance(store, SqliteStore):
        sql, args = page_query(_SQLITE, f, offset=offset, limit=limit)
        async with store.db.execute(sql, args) as cur:
            return [session_row(r) for r in await cur.fetchall()]
    from gateway.store.postgres import PgStore  # asyncpg only where it is used

    if isinstance(store, PgStore):
        sql, args = page_query(_PG, f, offset=offset, limit=limit)
        return [session_row(r) for r in await store.pool.fetch(sql, *args)]
    rows = await store.list_sessions(user=f.user, target=f.target, since=f.since, live=f.live)
    return [s for s in rows if f.matches(s)][offset : offset + limit]
