"""The embedded store: one SQLite file (WAL), versioned migrations, append-only hash-chained audit table."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.store.audit import judge, mirror_checkpoint
from gateway.store.base import (
    REPLICA_LOST,
    SEVERITIES,
    Counts,
    NodeRecord,
    StoreConflict,
    StoreError,
    Wake,
)
from gateway.store.chain import GENESIS, Checkpoint, Verdict, chain_hash, checkpoint_message, event_body
from gateway.store.records import AuditEvent, GrantRecord, RequestRecord, SessionRecord, WebSignIn
from gateway.store.schema import (
    MIGRATIONS,
    event_row,
    grant_row,
    node_row,
    request_row,
    session_row,
    split_script,
    web_signin_row,
)
from gateway.tokens import KeyRing

T = TypeVar("T")

__all__ = ["SEVERITIES", "SqliteStore", "StoreError"]


class SqliteStore:
    """Grants, sessions, requests and the audit chain in one SQLite file; safe across processes."""

    def __init__(self, path: Path, ring: KeyRing | None = None, *, checkpoint_every: int = 100, node: str = "") -> None:
        self.path = path
        self.ring = ring
        self.checkpoint_every = checkpoint_every
        self.node = node
        self._db: aiosqlite.Connection | None = None
        # One connection is shared by every coroutine of this process: a statement that ran between
        # another coroutine's BEGIN and COMMIT would join (and could be rolled back with) that
        # transaction. Every write takes this lock; across processes BEGIN IMMEDIATE serialises.
        self._lock = asyncio.Lock()
        # Checkpoints are mirrored to a side file: deleting rows *and* their checkpoints from the
        # database still leaves a signed head outside it that verification compares against.
        self.checkpoint_file = path.with_name(path.name + ".checkpoints")
        # Called with every new checkpoint, outside the lock (gateway.anchors publishes them off the host).
        self.checkpoint_listeners: list[Callable[[Checkpoint], Awaitable[None]]] = []

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def open(self) -> SqliteStore:
        """Open (creating the file and folder if needed) and migrate."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=10000")
        await self._migrate()
        return self

    async def ping(self) -> None:
        """One round trip (health checks)."""
        async with self._read("SELECT 1") as cur:
            await cur.fetchone()

    async def close(self, *, checkpoint: bool = True) -> None:
        """Sign the head (on shutdown) and close."""
        if self._db is None:
            return
        if checkpoint and self.ring is not None:
            await self.checkpoint()
        await self._db.close()
        self._db = None

    async def _atomically(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` (BEGIN ... COMMIT) under the write lock to its end, even when the caller is cancelled.

        A kill cancels a session's task wherever it is; a cancelled await does not stop aiosqlite's thread
        from running the statement, so a cancel right after BEGIN left the connection inside a transaction
        that every later write failed on ("cannot start a transaction within a transaction").
        """

        async def run() -> T:
            async with self._lock:
                return await work()

        return await asyncio.shield(run())

    async def _write(self, sql: str, args: Iterable[Any] = ()) -> aiosqlite.Cursor:
        """One autocommitted write statement, never inside another coroutine's transaction."""
        async with self._lock:
            return await self.db.execute(sql, tuple(args))

    @asynccontextmanager
    async def _read(self, sql: str, args: Iterable[Any] = ()) -> AsyncIterator[aiosqlite.Cursor]:
        """A read cursor, held under the write lock until it is closed.

        In WAL mode an open read statement pins this connection to its snapshot: once another process (a
        worker, a replica, the CLI) has committed, the next write here fails at once with "database is
        locked", whatever busy_timeout says. So no write may start while a read of ours is open.
        """
        async with self._lock, self.db.execute(sql, tuple(args)) as cur:
            yield cur

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in split_script(script):
                    await self.db.execute(stmt)
                await self.db.execute(f"PRAGMA user_version = {i}")
                await self.db.execute("COMMIT")
            except Exception:
                await self.db.execute("ROLLBACK")
                raise

    # --- audit -------------------------------------------------------------------------------------

    async def append(
        self,
        type_: str,
        *,
        actor: str = "gateway",
        session: str = "",
        grant: str = "",
        target: str = "",
        severity: str = "info",
        data: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> AuditEvent:
        """Append one event to the chain (serialised across processes by an immediate transaction)."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        ts = time.time() if ts is None else float(ts)  # hashed as read back from the REAL column
        data = data or {}
        seq, prev, digest = await self._atomically(
            lambda: self._append_locked(ts, type_, actor, session, grant, target, severity, data)
        )
        if self.ring is not None and seq % self.checkpoint_every == 0:
            await self.checkpoint()
        return AuditEvent(seq, ts, type_, actor, session, grant, target, severity, data, prev, digest, self.node)

    async def _append_locked(
        self,
        ts: float,
        type_: str,
        actor: str,
        session: str,
        grant: str,
        target: str,
        severity: str,
        data: dict[str, Any],
    ) -> tuple[int, str, str]:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            async with self.db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1") as cur:
                last = await cur.fetchone()
            seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
            body = event_body(seq, ts, type_, actor, session, grant, target, severity, data, self.node)
            digest = chain_hash(prev, body)
            await self.db.execute(
                "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    seq,
                    ts,
                    type_,
                    actor,
                    session,
                    grant,
                    target,
                    severity,
                    json.dumps(data, sort_keys=True),
                    prev,
                    digest,
                    self.node,
                ),
            )
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return seq, prev, digest

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head with the gateway key; stored in the DB and mirrored to the side file."""
        if self.ring is None:
            return None
        async with self._lock:
            cp = await self._checkpoint_locked(self.ring)
        if cp is not None:
            for listener in self.checkpoint_listeners:
                await listener(cp)
        return cp

    async def head(self) -> tuple[int, str] | None:
        """The newest event's sequence number and chain hash, or None for an empty log."""
        async with self._read("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1") as cur:
            last = await cur.fetchone()
        return None if last is None else (int(last[0]), str(last[1]))

    async def _checkpoint_locked(self, ring: KeyRing) -> Checkpoint | None:
        async with self.db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1") as cur:
            last = await cur.fetchone()
        if last is None:
            return None
        seq, head = int(last[0]), str(last[1])
        kid, sig = ring.sign_bytes(checkpoint_message(seq, head))
        cp = Checkpoint(seq, head, kid, sig, time.time())
        await self.db.execute(
            "INSERT OR IGNORE INTO checkpoints VALUES (?,?,?,?,?)", (cp.seq, cp.head, cp.kid, cp.signature, cp.ts)
        )
        mirror_checkpoint(self.checkpoint_file, cp)
        return cp

    async def checkpoints(self) -> list[Checkpoint]:
        """The signed heads stored in the database, oldest first."""
        async with self._read("SELECT * FROM checkpoints ORDER BY seq") as cur:
            return [Checkpoint(r["seq"], r["head"], r["kid"], r["signature"], r["ts"]) for r in await cur.fetchall()]

    async def events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        types: Iterable[str] = (),
        session: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Audit events in chain order, filtered."""
        where: list[str] = ["1=1"]
        args: list[object] = []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        tlist = list(types)
        if tlist:
            where.append(f"type IN ({','.join('?' * len(tlist))})")
            args.extend(tlist)
        if session is not None:
            where.append("session = ?")
            args.append(session)
        sql = f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY seq"  # noqa: S608 - only placeholders
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        async with self._read(sql, args) as cur:
            rows = await cur.fetchall()
        return [event_row(r) for r in rows]

    async def verify(self) -> Verdict:
        """Walk the whole chain in stored order and every checkpoint (DB and side file)."""
        async with self._read("SELECT * FROM audit ORDER BY rowid") as cur:
            events = [event_row(r) async for r in cur]
        return judge(events, await self.checkpoints(), self.checkpoint_file, self.ring)

    # --- grants ------------------------------------------------------------------------------------

    async def add_grant(self, g: GrantRecord) -> None:
        """Store a newly issued grant."""
        try:
            await self._insert_grant(g)
        except sqlite3.IntegrityError:
            raise StoreConflict(f"grant {g.id} already exists") from None

    async def _insert_grant(self, g: GrantRecord) -> None:
        await self._write(
            "INSERT INTO grants (id,user,target,scope,reason,approvers,issued_at,not_before,expires_at,state,"
            "break_glass,request_id,max_sessions,workload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                g.id,
                g.user,
                g.target,
                g.scope,
                g.reason,
                json.dumps(list(g.approvers)),
                g.issued_at,
                g.not_before,
                g.expires_at,
                g.state,
                int(g.break_glass),
                g.request_id,
                g.max_sessions,
                None if g.workload is None else json.dumps(g.workload, sort_keys=True),
            ),
        )

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        """One grant by id (the token's jti)."""
        async with self._read("SELECT * FROM grants WHERE id = ?", (grant_id,)) as cur:
            r = await cur.fetchone()
        return grant_row(r) if r else None

    async def list_grants(self, *, user: str | None = None, state: str | None = None) -> list[GrantRecord]:
        """Grants, newest first."""
        where, args = ["1=1"], []
        if user:
            where.append("user = ?")
            args.append(user)
        if state:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT * FROM grants WHERE {' AND '.join(where)} ORDER BY issued_at DESC"  # noqa: S608
        async with self._read(sql, args) as cur:
            return [grant_row(r) for r in await cur.fetchall()]

    async def revoke_grant(self, grant_id: str, *, by: str, reason: str, now: float) -> GrantRecord:
        """Mark a grant revoked; raises StoreError for an unknown or already ended grant."""
        g = await self.get_grant(grant_id)
        if g is None:
            raise StoreError(f"no grant {grant_id!r}")
        if g.state != "active":
            raise StoreError(f"grant {grant_id} is already {g.state}")
        cur = await self._write(
            "UPDATE grants SET state='revoked', revoked_at=?, revoked_by=?, revoke_reason=?, "
            "changed_seq=(SELECT COALESCE(MAX(changed_seq),0)+1 FROM grants) WHERE id=? AND state='active'",
            (now, by, reason, grant_id),
        )
        if cur.rowcount != 1:  # ended by someone else between the read and the write
            raise StoreError(f"grant {grant_id} is no longer active")
        return replace(g, state="revoked", revoked_at=now, revoked_by=by, revoke_reason=reason)

    async def expire_grants(self, now: float) -> list[str]:
        """Mark active grants past their expiry as expired; returns their ids."""
        async with self._read("SELECT id FROM grants WHERE state='active' AND expires_at <= ?", (now,)) as cur:
            ids = [str(r[0]) for r in await cur.fetchall()]
        if ids:
            await self._write(
                f"UPDATE grants SET state='expired' WHERE state='active' AND id IN ({','.join('?' * len(ids))})",  # noqa: S608
                ids,
            )
        return ids

    async def revoked_grant_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of these grants are no longer active (revoked or expired)."""
        idl = list(ids)
        if not idl:
            return set()
        sql = f"SELECT id FROM grants WHERE state != 'active' AND id IN ({','.join('?' * len(idl))})"  # noqa: S608
        async with self._read(sql, idl) as cur:
            return {str(r[0]) for r in await cur.fetchall()}

    async def use_workload_token(self, key: str, *, expires_at: float, now: float, used_for: str) -> bool:
        """Mark a workload token used; False when it was used before (one insert: replicas cannot both win)."""
        async with self._lock:
            await self.db.execute("DELETE FROM workload_tokens WHERE expires_at < ?", (now - 3600,))
            cur = await self.db.execute(
                "INSERT OR IGNORE INTO workload_tokens VALUES (?,?,?,?)", (key, expires_at, now, used_for)
            )
        return cur.rowcount == 1

    # --- sessions ----------------------------------------------------------------------------------

    async def add_session(self, s: SessionRecord) -> None:
        """Store a session at its start (no limit: admission against a limit uses `admit_session`)."""
        await self._write(_INSERT_SESSION, _session_args(s, self.node))

    async def admit_session(self, s: SessionRecord, *, max_live: int | None) -> bool:
        """Insert a session only if its grant has fewer than `max_live` live sessions; False when full.

        The count and the insert are one immediate transaction: it takes SQLite's write lock before
        counting, so no other connection (another coroutine here, another process or replica on the same
        file) can insert between them. A PostgreSQL store does the same in one transaction that first
        takes `pg_advisory_xact_lock(hashtext('sessions:' || grant_id))`, then counts, inserts, commits.
        """
        return await self._atomically(lambda: self._admit_locked(s, max_live))

    async def _admit_locked(self, s: SessionRecord, max_live: int | None) -> bool:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            if max_live is not None:
                sql = "SELECT count(*) FROM sessions WHERE grant_id = ? AND ended_at IS NULL"
                async with self.db.execute(sql, (s.grant_id,)) as cur:
                    row = await cur.fetchone()
                if row is not None and int(row[0]) >= max_live:
                    await self.db.execute("ROLLBACK")
                    return False
            await self.db.execute(_INSERT_SESSION, _session_args(s, self.node))
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return True

    async def end_session(
        self, session_id: str, *, ended_at: float, reason: str, recording_sha256: str | None, stats: dict[str, Any]
    ) -> bool:
        """Record a session's end; False when it had ended already (the first end wins)."""
        cur = await self._write(
            "UPDATE sessions SET ended_at=?, end_reason=?, recording_sha256=?, stats=? WHERE id=? AND ended_at IS NULL",
            (ended_at, reason, recording_sha256, json.dumps(stats), session_id),
        )
        return bool(cur.rowcount)

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session by id (a unique prefix of at least 6 characters works too)."""
        async with self._read("SELECT * FROM sessions WHERE id = ?", (session_id,)) as cur:
            r = await cur.fetchone()
        if r is None and len(session_id) >= 6:
            async with self._read("SELECT * FROM sessions WHERE id LIKE ? LIMIT 2", (session_id + "%",)) as cur:
                found = list(await cur.fetchall())
            r = found[0] if len(found) == 1 else None
        return session_row(r) if r else None

    async def list_sessions(
        self,
        *,
        user: str | None = None,
        target: str | None = None,
        since: float | None = None,
        live: bool | None = None,
        grant_id: str | None = None,
    ) -> list[SessionRecord]:
        """Sessions, newest first."""
        where: list[str] = ["1=1"]
        args: list[object] = []
        for col, val in (("user", user), ("target", target), ("grant_id", grant_id)):
            if val:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        if live is not None:
            where.append("ended_at IS NULL" if live else "ended_at IS NOT NULL")
        sql = f"SELECT * FROM sessions WHERE {' AND '.join(where)} ORDER BY started_at DESC"  # noqa: S608
        async with self._read(sql, args) as cur:
            return [session_row(r) for r in await cur.fetchall()]

    async def request_kill(self, session_id: str, reason: str) -> None:
        """Ask whichever process runs a live session to end it (picked up by its watcher)."""
        await self._write("UPDATE sessions SET kill_requested=? WHERE id=? AND ended_at IS NULL", (reason, session_id))

    async def kill_requests(self, ids: Iterable[str]) -> dict[str, str]:
        """Kill requests pending for these live sessions."""
        idl = list(ids)
        if not idl:
            return {}
        marks = ",".join("?" * len(idl))
        sql = f"SELECT id, kill_requested FROM sessions WHERE kill_requested IS NOT NULL AND id IN ({marks})"  # noqa: S608
        async with self._read(sql, idl) as cur:
            return {str(r[0]): str(r[1]) for r in await cur.fetchall()}

    # --- requests ----------------------------------------------------------------------------------

    async def add_request(self, r: RequestRecord) -> None:
        """Store a new access request."""
        await self._write(
            "INSERT INTO requests (id,requester,target,scope,reason,ttl,created_at,state,approvals,decided_at,"
            "decided_by,comment,grant_id,expires_at,workload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.id,
                r.requester,
                r.target,
                r.scope,
                r.reason,
                r.ttl,
                r.created_at,
                r.state,
                json.dumps(list(r.approvals)),
                r.decided_at,
                r.decided_by,
                r.comment,
                r.grant_id,
                r.expires_at,
                None if r.workload is None else json.dumps(r.workload, sort_keys=True),
            ),
        )

    async def get_request(self, request_id: str) -> RequestRecord | None:
        """One request by id."""
        async with self._read("SELECT * FROM requests WHERE id = ?", (request_id,)) as cur:
            r = await cur.fetchone()
        return request_row(r) if r else None

    async def update_request(self, r: RequestRecord, *, expect_state: str, expect_approvals: int | None = None) -> bool:
        """Write a request's new state if it is still in `expect_state` (and has `expect_approvals`); else False."""
        sql = (
            "UPDATE requests SET state=?, approvals=?, decided_at=?, decided_by=?, comment=?, grant_id=? "
            "WHERE id=? AND state=?"
        )
        args: list[object] = [
            r.state,
            json.dumps(list(r.approvals)),
            r.decided_at,
            r.decided_by,
            r.comment,
            r.grant_id,
            r.id,
            expect_state,
        ]
        if expect_approvals is not None:
            # Approvals only grow, so their count is a version number: two replicas approving at once
            # cannot both win.
            sql += " AND json_array_length(approvals)=?"
            args.append(expect_approvals)
        cur = await self._write(sql, args)
        return cur.rowcount == 1

    async def list_requests(
        self, *, requester: str | None = None, state: str | None = None, target: str | None = None
    ) -> list[RequestRecord]:
        """Requests, newest first."""
        where, args = ["1=1"], []
        for col, val in (("requester", requester), ("state", state), ("target", target)):
            if val:
                where.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT * FROM requests WHERE {' AND '.join(where)} ORDER BY created_at DESC"  # noqa: S608
        async with self._read(sql, args) as cur:
            return [request_row(r) for r in await cur.fetchall()]

    # --- detection baselines -------------------------------------------------------------------------

    async def session_history(self) -> list[tuple[str, str, int, float]]:
        """Per (user, target): how many sessions, and the first one's start."""
        sql = "SELECT user, target, count(*), min(started_at) FROM sessions GROUP BY user, target"
        async with self._read(sql) as cur:
            return [(str(r[0]), str(r[1]), int(r[2]), float(r[3])) for r in await cur.fetchall()]

    async def baseline_seen(self) -> list[tuple[str, str, str, str]]:
        """Every (user, target, kind, value) a baseline holds."""
        async with self._read("SELECT user, target, kind, value FROM baseline_seen") as cur:
            return [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in await cur.fetchall()]

    async def add_baseline_seen(self, rows: list[tuple[str, str, str, str, float]]) -> None:
        """Remember first uses (user, target, kind, value, first_at); one already stored keeps its time."""
        async with self._lock:
            await self.db.executemany("INSERT OR IGNORE INTO baseline_seen VALUES (?,?,?,?,?)", rows)

    # --- metrics -----------------------------------------------------------------------------------

    async def counts(self) -> Counts:
        """Totals for the metrics endpoint."""

        async def one(sql: str) -> int:
            async with self._read(sql) as cur:
                return int((await cur.fetchone() or (0,))[0])

        rejected_sql = "SELECT json_extract(data, '$.code'), COUNT(*) FROM audit WHERE type='token.rejected' GROUP BY 1"
        async with self._read(rejected_sql) as cur:
            rejected = {str(r[0]): int(r[1]) for r in await cur.fetchall()}
        stats_sql = (
            "SELECT target, SUM(COALESCE(json_extract(stats,'$.statements'),0)), "
            "SUM(COALESCE(json_extract(stats,'$.denied'),0)), SUM(COALESCE(json_extract(stats,'$.commands'),0)) "
            "FROM sessions WHERE ended_at IS NOT NULL GROUP BY target"
        )
        async with self._read(stats_sql) as cur:
            ended = {str(r[0]): (float(r[1] or 0), float(r[2] or 0), float(r[3] or 0)) for r in await cur.fetchall()}
        return Counts(
            await one("SELECT COUNT(*) FROM requests WHERE state='pending'"),
            await one("SELECT COUNT(*) FROM grants WHERE state='active'"),
            await one("SELECT COUNT(*) FROM audit WHERE type='session.kill'"),
            rejected,
            ended,
        )

    # --- replicas ----------------------------------------------------------------------------------

    async def heartbeat(self, node: NodeRecord) -> None:
        """Record that a replica is alive (insert or refresh its row)."""
        await self._write(
            "INSERT INTO nodes VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET version=excluded.version, "
            "started_at=excluded.started_at, heartbeat_at=excluded.heartbeat_at, "
            "live_sessions=excluded.live_sessions, state=excluded.state",
            (node.id, node.version, node.started_at, node.heartbeat_at, node.live_sessions, node.state),
        )

    async def list_nodes(self) -> list[NodeRecord]:
        """Every replica that ever heartbeat, most recent first."""
        async with self._read("SELECT * FROM nodes ORDER BY heartbeat_at DESC") as cur:
            return [node_row(r) for r in await cur.fetchall()]

    async def claim_lost_nodes(self, *, older_than: float, now: float) -> dict[str, list[SessionRecord]]:
        """Mark replicas silent since `older_than` lost and end their live sessions (reason replica_lost), in
        one transaction, so exactly one survivor claims each; returns the sessions it ended, per replica."""
        sql = "SELECT count(*) FROM nodes WHERE state='up' AND heartbeat_at < ? AND id != ?"
        async with self._read(sql, (older_than, self.node)) as cur:
            row = await cur.fetchone()
        if not row or not row[0]:
            return {}  # the usual case, every heartbeat: no write transaction for nothing
        # A cancellation (the scheduler stopping) must not land between BEGIN and COMMIT.
        return await asyncio.shield(self._claim_lost(older_than, now))

    async def _claim_lost(self, older_than: float, now: float) -> dict[str, list[SessionRecord]]:
        out: dict[str, list[SessionRecord]] = {}
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                sql = "SELECT id FROM nodes WHERE state='up' AND heartbeat_at < ? AND id != ?"
                async with self.db.execute(sql, (older_than, self.node)) as cur:
                    lost = [str(r[0]) for r in await cur.fetchall()]
                for nid in lost:
                    await self.db.execute("UPDATE nodes SET state='lost' WHERE id=?", (nid,))
                    sql = "SELECT * FROM sessions WHERE node=? AND ended_at IS NULL"
                    async with self.db.execute(sql, (nid,)) as cur:
                        out[nid] = [session_row(r) for r in await cur.fetchall()]
                    # kill_requested too: should the replica come back, its watcher ends what it still holds.
                    await self.db.execute(
                        "UPDATE sessions SET ended_at=?, end_reason=?, kill_requested=? "
                        "WHERE node=? AND ended_at IS NULL",
                        (now, REPLICA_LOST, REPLICA_LOST, nid),
                    )
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return out

    async def listen(self, wake: Wake) -> None:
        """SQLite has no push: other processes' revocations and kills arrive through the watcher's poll."""

    # --- console sign-ins ----------------------------------------------------------------------------

    async def add_web_session(self, key: str, s: WebSignIn, *, now: float) -> None:
        """Store a sign-in (expired ones are dropped on the way)."""
        await self._write("DELETE FROM web_sessions WHERE expires_at <= ?", (now,))
        await self._write(
            "INSERT INTO web_sessions VALUES (?,?,?,?,?,?,?)",
            (key, s.user, json.dumps(list(s.groups)), int(s.admin), s.via, s.csrf, s.expires_at),
        )

    async def get_web_session(self, key: str, *, now: float) -> WebSignIn | None:
        """The sign-in under this key, unless it has expired."""
        sql = "SELECT * FROM web_sessions WHERE key = ? AND expires_at > ?"
        async with self._read(sql, (key, now)) as cur:
            r = await cur.fetchone()
        return web_signin_row(r) if r else None

    async def drop_web_session(self, key: str) -> None:
        """Sign out."""
        await self._write("DELETE FROM web_sessions WHERE key = ?", (key,))


_INSERT_SESSION = (
    "INSERT INTO sessions (id,grant_id,user,target,scope,protocol,client_addr,started_at,recording_path,stats,node)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def _session_args(s: SessionRecord, node: str) -> tuple[object, ...]:
    return (
        s.id,
        s.grant_id,
        s.user,
        s.target,
        s.scope,
        s.protocol,
        s.client_addr,
        s.started_at,
        s.recording_path,
        json.dumps(s.stats),
        s.node or node,
    )
