"""The Sessions page's query: filters and one page, in SQL on the SQLite store, by scan on any other store."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store import SessionRecord, Store
from gateway.store.schema import session_row
from gateway.store.sqlite import SqliteStore

PAGE = 50
VIOLATIONS_SQL = "(COALESCE(json_extract(stats, '$.denied'), 0) + COALESCE(json_extract(stats, '$.violations'), 0))"


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


async def page_sessions(store: Store, f: SessionFilter, *, offset: int, limit: int = PAGE) -> list[SessionRecord]:
    """Sessions matching `f`, newest first, `limit` of them from `offset`."""
    if not isinstance(store, SqliteStore):
        rows = await store.list_sessions(user=f.user, target=f.target, since=f.since, live=f.live)
        return [s for s in rows if f.matches(s)][offset : offset + limit]
    where, args = ["1=1"], list[object]()
    for col, val in (("user", f.user), ("target", f.target), ("protocol", f.protocol)):
        if val:
            where.append(f"{col} = ?")
            args.append(val)
    if f.since is not None:
        where.append("started_at >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("started_at < ?")
        args.append(f.until)
    if f.violations is not None:
        where.append(f"{VIOLATIONS_SQL} {'>' if f.violations else '='} 0")
    if f.end_reason:
        where.append("end_reason LIKE ? ESCAPE '\\' COLLATE NOCASE")
        args.append(_like(f.end_reason))
    if f.live is not None:
        where.append("ended_at IS NULL" if f.live else "ended_at IS NOT NULL")
    sql = f"SELECT * FROM sessions WHERE {' AND '.join(where)} ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?"  # noqa: S608 - only fixed column names are formatted in
    async with store.db.execute(sql, [*args, limit, offset]) as cur:
        return [session_row(r) for r in await cur.fetchall()]
