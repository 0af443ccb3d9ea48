"""Reviewer commands: sessions, show, replay, search."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import CliError, Commands, iso, print_json, print_table, say, services_from, since_arg
from gateway.durations import format_duration
from gateway.recording.check import check_recording
from gateway.recording.reader import statements
from gateway.review import replay as replay_mod
from gateway.review.search import compile_regex
from gateway.review.search import search as search_recordings
from gateway.store import AuditEvent, SessionRecord, Store

SESSION_HELP = (
    "session id (a unique prefix of 6+ characters works), or a grant id (g_...) or request id (r_...): "
    "its newest session"
)


def register(sub: Commands) -> None:
    """Add the reviewer commands."""
    p = sub.add_parser("sessions", help="list sessions (who, target, scope, grant, duration, end reason, violations)")
    p.add_argument("--user")
    p.add_argument("--target")
    p.add_argument("--since", help="only sessions started within this, e.g. 24h, 7d")
    p.add_argument("--live", action="store_true", help="only live sessions")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("show", help="one session's timeline: request, approvals, grant, connect, activity, end")
    p.add_argument("session", help=SESSION_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "replay",
        help="play a recording (SSH at real speed; Postgres transcript)",
        description="Play an SSH session's recording at real speed, or print a Postgres session's transcript.",
        epilog=f"keys while an SSH recording plays: {replay_mod.PLAYBACK_KEYS}",
    )
    p.add_argument("session", help=SESSION_HELP)
    p.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--idle-limit", type=float, default=None, help="cap pauses at this many seconds")
    p.add_argument("--print", dest="print_only", action="store_true", help="no timing: print the final text")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("search", help="search commands and statements across sessions")
    p.add_argument("pattern")
    p.add_argument("--since", help="only sessions started within this, e.g. 7d")
    p.add_argument("--regex", action="store_true", help="pattern is a regular expression (RE2 syntax: linear time)")
    p.add_argument("--case-sensitive", action="store_true", help="match case exactly (default: ignore case)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)


async def _session_rows(store: Store, sessions: list[SessionRecord]) -> list[dict[str, Any]]:
    out = []
    for s in sessions:
        g = await store.get_grant(s.grant_id)
        end = s.ended_at if s.ended_at is not None else time.time()
        out.append(
            {
                "id": s.id,
                "user": s.user,
                "target": s.target,
                "scope": s.scope,
                "protocol": s.protocol,
                "grant": s.grant_id,
                "approvers": list(g.approvers) if g else [],
                "break_glass": bool(g and g.break_glass),
                "reason": g.reason if g else "",
                "started_at": s.started_at,
                "ended_at": s.ended_at,
                "duration": round(end - s.started_at, 3),
                "end_reason": s.end_reason,
                "statements": s.stats.get("statements", 0),
                "commands": s.stats.get("commands", 0),
                "violations": s.stats.get("denied", 0) + s.stats.get("violations", 0),
                "recording": s.recording_path,
            }
        )
    return out


async def cmd_sessions(args: argparse.Namespace) -> int:
    """List sessions, newest first."""
    async with services_from(args, read_only=True) as svc:
        found = await svc.store.list_sessions(
            user=args.user, target=args.target, since=since_arg(args.since), live=True if args.live else None
        )
        rows = await _session_rows(svc.store, found)
    if args.json:
        print_json(rows)
        return 0
    print_table(
        [
            "SESSION",
            "USER",
            "TARGET",
            "SCOPE",
            "STARTED (UTC)",
            "DURATION",
            "END",
            "ACTIVITY",
            "VIOLATIONS",
            "APPROVERS",
        ],
        [
            [
                r["id"],
                r["user"],
                r["target"],
                r["scope"],
                iso(r["started_at"]),
                format_duration(r["duration"]),
                r["end_reason"] or "live",
                r["statements"] or r["commands"],
                r["violations"],
                ",".join(r["approvers"]) or ("break-glass" if r["break_glass"] else "-"),
            ]
            for r in rows
        ],
    )
    return 0


async def _find_session(store: Store, sid: str) -> SessionRecord:
    """A session id (or unique prefix); a grant id (g_...) or request id (r_...) means that grant's newest session."""
    gid = sid
    if sid.startswith("r_"):
        req = await store.get_request(sid)
        gid = req.grant_id if req is not None and req.grant_id else ""
        if not gid:
            raise CliError(f"request {sid!r} has no grant (not found, or not approved)")
    if gid.startswith("g_"):
        found = await store.list_sessions(grant_id=gid)
        if not found:
            raise CliError(f"grant {gid} has no session yet (try `gateway sessions`)")
        return found[0]
    s = await store.get_session(sid)
    if s is None:
        raise CliError(f"no session {sid!r} (try `gateway sessions`)")
    return s


async def cmd_show(args: argparse.Namespace) -> int:
    """Print one session's timeline from the audit log."""
    async with services_from(args, read_only=True) as svc:
        s = await _find_session(svc.store, args.session)
        grant = await svc.store.get_grant(s.grant_id)
        events = [e for e in await svc.store.events() if e.grant == s.grant_id and (not e.session or e.session == s.id)]
        request = await svc.store.get_request(grant.request_id) if grant and grant.request_id else None
        row = (await _session_rows(svc.store, [s]))[0]
    recorded: list[dict[str, Any]] = []
    if s.protocol == "postgres" and s.recording_path:
        recorded, seen = _recorded_statements(s)
        # A refusal is in both the audit log and the recording: list it once, from the recording (in order,
        # with its verdict). Audit events whose statement the recording lacks (damaged, missing) stay.
        events = [e for e in events if not (e.type == "statement.denied" and str(e.data.get("sql")) in seen)]
    timeline = sorted(_timeline(request, events) + recorded, key=lambda i: i["ts"])
    if args.json:
        print_json({"session": row, "timeline": timeline})
        return 0
    say(f"session {s.id}: {s.user} on {s.target} ({s.protocol}, scope {s.scope}) from {s.client_addr}")
    if grant is not None:
        who = ", ".join(grant.approvers) or ("break-glass" if grant.break_glass else "-")
        say(f'grant {grant.id}: reason "{grant.reason}"; approved by {who}; state {grant.state}')
    say(f"recording {s.recording_path}")
    for item in timeline:
        say(f"{iso(item['ts'])}  {item['what']:<18} {item['detail']}")

    return 0


def _timeline(request: Any, events: list[AuditEvent]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if request is not None:
        items.append({"ts": request.created_at, "what": "request", "detail": f"{request.requester}: {request.reason}"})
        for a in request.approvals:
            items.append({"ts": a.get("at", request.created_at), "what": "approval", "detail": str(a.get("by", a))})
    for e in events:
        items.append({"ts": e.ts, "what": e.type, "detail": _describe(e)})
    items.sort(key=lambda i: i["ts"])
    return items


_VERDICT_WORDS = {"allow": "allowed", "alert": "alert", "deny": "denied", "kill": "killed"}


def _recorded_statements(s: SessionRecord) -> tuple[list[dict[str, Any]], set[str]]:
    """Every statement of a SQL session's recording, with its verdict (the audit log holds only refusals), and
    the refused statements' text as the audit log holds it (its first 2000 characters).

    A missing or damaged recording gives what can be read (`gateway audit verify` reports the damage).
    """
    items: list[dict[str, Any]] = []
    refused: set[str] = set()
    try:
        for st in statements(Path(s.recording_path or "")):
            word = _VERDICT_WORDS.get(st.verdict, st.verdict)
            rule = f" [{st.rule}]" if st.rule else ""
            items.append({"ts": s.started_at + st.t, "what": "statement", "detail": f"{word}{rule}: {st.sql}"})
            if st.refused:
                refused.add(st.sql[:2000])
    except OSError:
        pass
    return items, refused


def _describe(e: AuditEvent) -> str:
    d = e.data
    if e.type == "session.receipt":  # the JWS itself is long; `gateway receipt` prints it
        return f"signed (key {d.get('kid')}), covers audit #{d.get('end_seq')}: gateway receipt {e.session}"
    for key in ("line", "sql", "summary", "reason", "path"):
        if d.get(key):
            extra = f" [{d['rule']}]" if d.get("rule") else ""
            return f"{d[key]}{extra}"
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()) if not isinstance(v, dict | list))[:200]


async def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a session's recording."""
    # The store stays open while a live session is followed: whether it still runs is read through it.
    async with services_from(args, read_only=True) as svc:
        s = await _find_session(svc.store, args.session)
        return await _replay(args, s, svc.store)


async def _replay(args: argparse.Namespace, s: SessionRecord, store: Store) -> int:
    ended = s.ended_at is not None
    if not s.recording_path:
        raise CliError(f"session {s.id} has no recording")
    path = Path(s.recording_path)
    if not path.exists():  # noqa: ASYNC240 - one stat before the replay starts
        raise CliError(f"recording {path} is missing (deleted?); `gateway audit verify` reports it")
    if ended and s.recording_sha256:
        problem = check_recording(path, s.recording_sha256)
        if problem:  # still shown: what is there is evidence too
            say(f"gateway: warning: {problem}; `gateway audit verify` reports it", err=True)
    if s.protocol == "postgres":
        result = replay_mod.print_statements(path, sys.stdout, color=sys.stdout.isatty())
    elif args.print_only:
        result = replay_mod.print_cast(path, sys.stdout)
    else:
        async with _LiveWatch(store, s.id, live=not ended) as watch:
            result = await replay_mod.play(
                path,
                sys.stdout,
                speed=args.speed,
                idle_limit=args.idle_limit,
                keys=_keys(),
                follow=not ended,
                is_live=watch.is_live,
            )
    for w in result.warnings:
        say(f"gateway: warning: {w}", err=True)
    return 0


class _LiveWatch:
    """Whether a followed session still runs, read through the Store every `every` seconds while a replay plays."""

    def __init__(self, store: Store, session_id: str, *, live: bool, every: float = 0.5) -> None:
        self.store = store
        self.session_id = session_id
        self.live = live
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def is_live(self) -> bool:
        """The last answer (replay calls this from its loop, without awaiting)."""
        return self.live

    async def _poll(self) -> None:
        while self.live:
            await asyncio.sleep(self.every)
            try:
                s = await self.store.get_session(self.session_id)
            except Exception:  # a store that cannot be read says nothing more: stop following at the file's end
                self.live = False
                raise
            self.live = s is not None and s.ended_at is None

    async def __aenter__(self) -> _LiveWatch:
        if self.live:
            self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _keys() -> Any:
    """Single keypresses from a terminal (space, '.', '+', '-', 'q'); None when stdin is not a terminal."""
    if not sys.stdin.isatty():
        return None
    return _terminal_keys()


async def _terminal_keys() -> Any:
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(fd, lambda: queue.put_nowait(sys.stdin.read(1)))
    try:
        while True:
            yield await queue.get()
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


async def cmd_search(args: argparse.Namespace) -> int:
    """Search statements and commands across recordings; exit 1 when nothing matches."""
    if args.regex:
        try:
            compile_regex(args.pattern)
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
    async with services_from(args, read_only=True) as svc:
        sessions = await svc.store.list_sessions(since=since_arg(args.since))
    started = {s.id: s for s in sessions}
    recs = [(s.id, Path(s.recording_path), s.protocol) for s in sessions if s.recording_path]
    hits = list(search_recordings(recs, args.pattern, regex=args.regex, ignore_case=not args.case_sensitive))
    rows: list[dict[str, Any]] = [
        {
            "session": h.session_id,
            "user": started[h.session_id].user,
            "target": started[h.session_id].target,
            "ts": started[h.session_id].started_at + h.t,
            "kind": h.kind,
            "text": h.text,
        }
        for h in hits
    ]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            say(f"{iso(r['ts'])}  {r['session']}  {r['user']}@{r['target']}  {r['kind']:<9}  {r['text']}")
    return 0 if hits else 1
