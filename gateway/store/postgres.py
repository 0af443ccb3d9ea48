"""The shared store: PostgreSQL through an asyncpg pool; advisory locks serialise the chain, NOTIFY pushes kills."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.store.audit import judge, mirror_checkpoint
from gateway.store.base import REPLICA_LOST, SEVERITIES, Counts, NodeRecord, StoreConflict, StoreError, Wake
from gateway.store.chain import GENESIS, Checkpoint, Verdict, chain_hash, checkpoint_message, event_body
from gateway.store.pgschema import CHAIN_LOCK, CHANNEL, MIGRATIONS, SCHEMA_LOCK
from gateway.store.records import AuditEvent, GrantRecord, RequestRecord, SessionRecord, WebSignIn
from gateway.store.schema import event_row, grant_row, node_row, request_row, session_row, web_signin_row
from gateway.store.spool import Spool
from gateway.tokens import KeyRing

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 10.0
"""Seconds one statement may take: an unreachable store fails the operation rather than hanging it."""

UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # the connection is gone
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.OperatorInterventionError,  # 57: admin or crash shutdown, cannot connect now
)
"""What an unreachable store (not a refused statement) looks like to asyncpg."""

LISTEN_KEEPALIVE = 2.0
"""Seconds between liveness checks of the LISTEN connection (a silent network loss is noticed this fast)."""


def redact(url: str) -> str:
    """The URL without its password, for reprs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PgStore:
    """Grants, sessions, requests, replicas and the audit chain in one PostgreSQL database, shared by replicas."""

    def __init__(
        self,
        url: str,
        ring: KeyRing | None = None,
        *,
        checkpoint_every: int = 100,
        node: str = "",
        checkpoint_file: Path | None = None,
        pool_size: int = 10,
    ) -> None:
        self._url = url
        self.ring = ring
        self.checkpoint_every = checkpoint_every
        self.node = node
        self.checkpoint_file = checkpoint_file
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wake_tasks: set[asyncio.Task[Any]] = set()
        # Audit events and session ends the store could not take, until it can (store/spool.py).
        self.spool = Spool(checkpoint_file.with_name("audit.spool.jsonl")) if checkpoint_file is not None else None
        self._draining = asyncio.Lock()
        # One append of this process at a time waits on the chain's advisory lock: the others wait here,
        # without holding a pool connection that revocations and admissions need meanwhile.
        self._appending = asyncio.Lock()
        # Called with every new checkpoint (gateway.anchors publishes them off the host).
        self.checkpoint_listeners: list[Callable[[Checkpoint], Awaitable[None]]] = []

    def __repr__(self) -> str:
        return f"PgStore({redact(self._url)!r})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def open(self) -> PgStore:
        """Connect the pool and migrate (one replica at a time)."""
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self.pool_size, command_timeout=COMMAND_TIMEOUT
            )
            await self._migrate()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError, TimeoutError) as exc:
            await self.close(checkpoint=False)
            raise StoreError(f"cannot open the store {redact(self._url)}: {exc}") from None
        return self

    async def _migrate(self) -> None:
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await con.execute("CREATE TABLE IF NOT EXISTS gateway_schema (version integer NOT NULL)")
            version = await con.fetchval("SELECT max(version) FROM gateway_schema") or 0
            for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await con.execute(script)
                await con.execute("INSERT INTO gateway_schema VALUES ($1)", i)

    async def close(self, *, checkpoint: bool = True) -> None:
        """Sign the head (on shutdown), stop listening and close the pool."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._pool is None:
            return
        if checkpoint and self.ring is not None:
            try:
                await self.checkpoint()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("final checkpoint not written: %s", type(exc).__name__)
        pool, self._pool = self._pool, None
        await pool.close()

    async def ping(self) -> None:
        """One round trip (health checks)."""
        await self.pool.fetchval("SELECT 1")

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
        """Append one event; a transaction-level advisory lock makes every replica's appends one at a time.

        An unreachable store raises StoreError after the event is kept in the spool (written when it is back)."""
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        ts = time.time() if ts is None else float(ts)
        data = data or {}
        try:
            await self.drain()
            event = await self._append(type_, actor, session, grant, target, severity, data, ts)
        except UNREACHABLE as exc:
            self._keep("append", {"type": type_, "actor": actor, "session": session, "grant": grant,
                                  "target": target, "severity": severity, "data": data, "ts": ts})  # fmt: skip
            raise self._unreachable(exc, f"{type_} event") from None
        if self.ring is not None and event.seq % self.checkpoint_every == 0:
            await self.checkpoint()
        return event

    async def _append(
        self, type_: str, actor: str, session: str, grant: str, target: str, severity: str, data: dict[str, Any],
        ts: float,
    ) -> AuditEvent:  # fmt: skip
        async with self._appending, self.pool.acquire() as con, con.transaction():
            # The lock first, then the head: under READ COMMITTED the head is read by a later statement, so
            # it sees every append committed before the lock was granted.
            await con.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
            last = await con.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            seq, prev = (int(last["seq"]) + 1, str(last["hash"])) if last else (1, GENESIS)
            body = event_body(seq, ts, type_, actor, session, grant, target, severity, data, self.node)
            digest = chain_hash(prev, body)
            await con.execute(
                "INSERT INTO audit VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
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
            )
        return AuditEvent(seq, ts, type_, actor, session, grant, target, severity, data, prev, digest, self.node)

    def _keep(self, kind: str, fields: dict[str, Any]) -> None:
        """Spool a write the store could not take; without a spool (or a disk) it is logged as lost, loudly."""
        try:
            if self.spool is None:
                raise OSError("no spool file configured")
            self.spool.keep(kind, fields)
        except OSError as exc:
            log.critical("store unreachable and the spool refused a %s (%s): %s", kind, exc, fields.get("type", ""))

    def _unreachable(self, exc: BaseException, what: str) -> StoreError:
        # The exception's text, never the URL: asyncpg's messages name host and port, not the password.
        kept = f"kept in {self.spool.path} until it is back" if self.spool is not None else "NOT kept (no spool)"
        return StoreError(f"the store {redact(self._url)} is unreachable ({type(exc).__name__}); the {what} is {kept}")

    async def drain(self) -> int:
        """Write what the spool holds, in order (a no-op when empty); how many writes went in."""
        if self.spool is None or not self.spool.pending:
            return 0
        written = 0
        async with self._draining:
            for path, entries in self.spool.take():
                for i, e in enumerate(entries):
                    try:
                        if e["kind"] == "end_session":
                            await self._end_session(e["id"], e["ended_at"], e["reason"], e["sha"], e["stats"])
                        else:
                            data = {**e["data"], "spooled": True}
                            await self._append(e["type"], e["actor"], e["session"], e["grant"], e["target"],
                                               e["severity"], data, float(e["ts"]))  # fmt: skip
                    except BaseException:
                        self.spool.put_back(entries[i:])
                        path.unlink(missing_ok=True)
                        raise
                    written += 1
                path.unlink(missing_ok=True)
        if written:
            log.warning("wrote %d spooled store write(s) now that the store is reachable again", written)
        return written

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head with this replica's key; stored in the DB and mirrored to the side file."""
        if self.ring is None:
            return None
        last = await self.pool.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        if last is None:
            return None
        seq, head = int(last["seq"]), str(last["hash"])
        kid, sig = self.ring.sign_bytes(checkpoint_message(seq, head))
        cp = Checkpoint(seq, head, kid, sig, time.time())
        await self.pool.execute(
            "INSERT INTO checkpoints VALUES ($1,$2,$3,$4,$5) ON CONFLICT (seq) DO NOTHING",
            cp.seq,
            cp.head,
            cp.kid,
            cp.signature,
            cp.ts,
        )
        mirror_checkpoint(self.checkpoint_file, cp)
        for listener in self.checkpoint_listeners:
            await listener(cp)
        return cp

    async def head(self) -> tuple[int, str] | None:
        """The newest event's sequence number and chain hash, or None for an empty log."""
        last = await self.pool.fetchrow("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        return None if last is None else (int(last["seq"]), str(last["hash"]))

    async def checkpoints(self) -> list[Checkpoint]:
        """The signed heads stored in the database, oldest first."""
        rows = await self.pool.fetch("SELECT * FROM checkpoints ORDER BY seq")
        return [Checkpoint(r["seq"], r["head"], r["kid"], r["signature"], r["ts"]) for r in rows]

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
        q = _Where()
        if since is not None:
            q.add("ts >= {}", since)
        if until is not None:
            q.add("ts < {}", until)
        tlist = list(types)
        if tlist:
            q.add("type = ANY({})", tlist)
        if session is not None:
            q.add("session = {}", session)
        sql = f"SELECT * FROM audit WHERE {q.sql} ORDER BY seq"  # noqa: S608 - only placeholders
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [event_row(r) for r in await self.pool.fetch(sql, *q.args)]

    async def verify(self) -> Verdict:
        """Walk the whole chain and every checkpoint (DB and side file)."""
        events = [event_row(r) for r in await self.pool.fetch("SELECT * FROM audit ORDER BY seq")]
        return judge(events, await self.checkpoints(), self.checkpoint_file, self.ring)

    # --- grants ------------------------------------------------------------------------------------

    async def add_grant(self, g: GrantRecord) -> None:
        """Store a newly issued grant."""
        try:
            await self.pool.execute(_INSERT_GRANT, *_grant_args(g))
        except asyncpg.UniqueViolationError:
            raise StoreConflict(f"grant {g.id} already exists") from None

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        """One grant by id (the token's jti)."""
        r = await self.pool.fetchrow("SELECT * FROM grants WHERE id = $1", grant_id)
        return grant_row(r) if r else None

    async def list_grants(self, *, user: str | None = None, state: str | None = None) -> list[GrantRecord]:
        """Grants, newest first."""
        q = _Where()
        if user:
            q.add('"user" = {}', user)
        if state:
            q.add("state = {}", state)
        sql = f"SELECT * FROM grants WHERE {q.sql} ORDER BY issued_at DESC"  # noqa: S608
        return [grant_row(r) for r in await self.pool.fetch(sql, *q.args)]

    async def revoke_grant(self, grant_id: str, *, by: str, reason: str, now: float) -> GrantRecord:
        """Mark a grant revoked and tell every replica (NOTIFY at commit); StoreError if unknown or ended."""
        async with self.pool.acquire() as con, con.transaction():
            r = await con.fetchrow(
                "UPDATE grants SET state='revoked', revoked_at=$2, revoked_by=$3, revoke_reason=$4 "
                "WHERE id=$1 AND state='active' RETURNING *",
                grant_id,
                now,
                by,
                reason,
            )
            if r is not None:
                await con.execute("SELECT pg_notify($1, $2)", CHANNEL, f"grant:{grant_id}")
                return grant_row(r)
        g = await self.get_grant(grant_id)
        if g is None:
            raise StoreError(f"no grant {grant_id!r}")
        raise StoreError(f"grant {grant_id} is already {g.state}")

    async def expire_grants(self, now: float) -> list[str]:
        """Mark active grants past their expiry as expired; returns their ids."""
        rows = await self.pool.fetch(
            "UPDATE grants SET state='expired' WHERE state='active' AND expires_at <= $1 RETURNING id", now
        )
        return sorted(str(r["id"]) for r in rows)

    async def revoked_grant_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of these grants are no longer active (revoked or expired)."""
        idl = list(ids)
        if not idl:
            return set()
        rows = await self.pool.fetch("SELECT id FROM grants WHERE state != 'active' AND id = ANY($1)", idl)
        return {str(r["id"]) for r in rows}

    async def use_workload_token(self, key: str, *, expires_at: float, now: float, used_for: str) -> bool:
        """Mark a workload token used; False when it was used before (one insert: replicas cannot both win)."""
        await self.pool.execute("DELETE FROM workload_tokens WHERE expires_at < $1", now - 3600)
        status = await self.pool.execute(
            "INSERT INTO workload_tokens VALUES ($1,$2,$3,$4) ON CONFLICT (key) DO NOTHING",
            key,
            expires_at,
            now,
            used_for,
        )
        return bool(status == "INSERT 0 1")

    # --- sessions ----------------------------------------------------------------------------------

    async def add_session(self, s: SessionRecord) -> None:
        """Store a session at its start (no limit: admission against a limit uses `admit_session`)."""
        await self.pool.execute(_INSERT_SESSION, *_session_args(s, self.node))

    async def admit_session(self, s: SessionRecord, *, max_live: int | None) -> bool:
        """Insert a session only if its grant has fewer than `max_live` live sessions, atomically across replicas:
        the count and the insert run under a transaction-level advisory lock keyed by the grant."""
        async with self.pool.acquire() as con, con.transaction():
            if max_live is not None:
                await con.execute("SELECT pg_advisory_xact_lock(hashtext('sessions:' || $1))", s.grant_id)
                n = await con.fetchval(
                    "SELECT count(*) FROM sessions WHERE grant_id = $1 AND ended_at IS NULL", s.grant_id
                )
                if int(n) >= max_live:
                    return False
            await con.execute(_INSERT_SESSION, *_session_args(s, self.node))
        return True

    async def end_session(
        self, session_id: str, *, ended_at: float, reason: str, recording_sha256: str | None, stats: dict[str, Any]
    ) -> bool:
        """Record a session's end; False when it had ended already (the first end wins: a survivor may have
        reaped it while this replica was cut off). Spooled when the store is unreachable."""
        try:
            return await self._end_session(session_id, ended_at, reason, recording_sha256, stats)
        except UNREACHABLE as exc:
            self._keep("end_session", {"id": session_id, "ended_at": ended_at, "reason": reason,
                                       "sha": recording_sha256, "stats": stats})  # fmt: skip
            raise self._unreachable(exc, f"end of session {session_id}") from None

    async def _end_session(
        self, session_id: str, ended_at: float, reason: str, sha: str | None, stats: dict[str, Any]
    ) -> bool:
        status = await self.pool.execute(
            "UPDATE sessions SET ended_at=$1, end_reason=$2, recording_sha256=$3, stats=$4 "
            "WHERE id=$5 AND ended_at IS NULL",
            ended_at,
            reason,
            sha,
            json.dumps(stats),
            session_id,
        )
        return bool(status == "UPDATE 1")

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """One session by id (a unique prefix of at least 6 characters works too)."""
        r = await self.pool.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
        if r is None and len(session_id) >= 6:
            found = await self.pool.fetch("SELECT * FROM sessions WHERE starts_with(id, $1) LIMIT 2", session_id)
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
        q = _Where()
        for col, val in (('"user"', user), ("target", target), ("grant_id", grant_id)):
            if val:
                q.add(f"{col} = {{}}", val)
        if since is not None:
            q.add("started_at >= {}", since)
        if live is not None:
            q.add("ended_at IS NULL" if live else "ended_at IS NOT NULL")
        sql = f"SELECT * FROM sessions WHERE {q.sql} ORDER BY started_at DESC"  # noqa: S608
        return [session_row(r) for r in await self.pool.fetch(sql, *q.args)]

    async def request_kill(self, session_id: str, reason: str) -> None:
        """Ask whichever replica runs a live session to end it: NOTIFY now, its reconcile poll otherwise."""
        async with self.pool.acquire() as con, con.transaction():
            done = await con.execute(
                "UPDATE sessions SET kill_requested=$1 WHERE id=$2 AND ended_at IS NULL", reason, session_id
            )
            if done.endswith(" 1"):
                await con.execute("SELECT pg_notify($1, $2)", CHANNEL, f"session:{session_id}")

    async def kill_requests(self, ids: Iterable[str]) -> dict[str, str]:
        """Kill requests pending for these live sessions."""
        idl = list(ids)
        if not idl:
            return {}
        rows = await self.pool.fetch(
            "SELECT id, kill_requested FROM sessions WHERE kill_requested IS NOT NULL AND id = ANY($1)", idl
        )
        return {str(r["id"]): str(r["kill_requested"]) for r in rows}

    # --- requests ----------------------------------------------------------------------------------

    async def add_request(self, r: RequestRecord) -> None:
        """Store a new access request."""
        try:
            await self.pool.execute(_INSERT_REQUEST, *_request_args(r))
        except asyncpg.UniqueViolationError:
            raise StoreConflict(f"request {r.id} already exists") from None

    async def get_request(self, request_id: str) -> RequestRecord | None:
        """One request by id."""
        r = await self.pool.fetchrow("SELECT * FROM requests WHERE id = $1", request_id)
        return request_row(r) if r else None

    async def update_request(self, r: RequestRecord, *, expect_state: str, expect_approvals: int | None = None) -> bool:
        """Compare-and-set: write a request's new state if it is still in `expect_state` (with `expect_approvals`)."""
        sql = (
            "UPDATE requests SET state=$1, approvals=$2, decided_at=$3, decided_by=$4, comment=$5, grant_id=$6 "
            "WHERE id=$7 AND state=$8"
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
            # cannot both win (the row lock makes the second re-check after the first commits).
            sql += " AND jsonb_array_length(approvals::jsonb) = $9"
            args.append(expect_approvals)
        status = await self.pool.execute(sql, *args)
        return bool(status == "UPDATE 1")

    async def list_requests(
        self, *, requester: str | None = None, state: str | None = None, target: str | None = None
    ) -> list[RequestRecord]:
        """Requests, newest first."""
        q = _Where()
        for col, val in (("requester", requester), ("state", state), ("target", target)):
            if val:
                q.add(f"{col} = {{}}", val)
        sql = f"SELECT * FROM requests WHERE {q.sql} ORDER BY created_at DESC"  # noqa: S608
        return [request_row(r) for r in await self.pool.fetch(sql, *q.args)]

    # --- detection baselines -------------------------------------------------------------------------

    async def session_history(self) -> list[tuple[str, str, int, float]]:
        """Per (user, target): how many sessions, and the first one's start."""
        sql = 'SELECT "user", target, count(*), min(started_at) FROM sessions GROUP BY "user", target'
        return [(str(r[0]), str(r[1]), int(r[2]), float(r[3])) for r in await self.pool.fetch(sql)]

    async def baseline_seen(self) -> list[tuple[str, str, str, str]]:
        """Every (user, target, kind, value) a baseline holds."""
        rows = await self.pool.fetch('SELECT "user", target, kind, value FROM baseline_seen')
        return [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def add_baseline_seen(self, rows: list[tuple[str, str, str, str, float]]) -> None:
        """Remember first uses (user, target, kind, value, first_at); one already stored keeps its time."""
        sql = "INSERT INTO baseline_seen VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
        await self.pool.executemany(sql, rows)

    # --- metrics -----------------------------------------------------------------------------------

    async def counts(self) -> Counts:
        """Totals for the metrics endpoint."""
        p = self.pool
        rejected = await p.fetch(
            "SELECT data::jsonb->>'code' AS code, count(*) AS n FROM audit WHERE type='token.rejected' GROUP BY 1"
        )
        ended = await p.fetch(
            "SELECT target, sum(coalesce((stats::jsonb->>'statements')::float8, 0)) AS a, "
            "sum(coalesce((stats::jsonb->>'denied')::float8, 0)) AS b, "
            "sum(coalesce((stats::jsonb->>'commands')::float8, 0)) AS c "
            "FROM sessions WHERE ended_at IS NOT NULL GROUP BY target"
        )
        return Counts(
            int(await p.fetchval("SELECT count(*) FROM requests WHERE state='pending'")),
            int(await p.fetchval("SELECT count(*) FROM grants WHERE state='active'")),
            int(await p.fetchval("SELECT count(*) FROM audit WHERE type='session.kill'")),
            {str(r["code"]): int(r["n"]) for r in rejected},
            {str(r["target"]): (float(r["a"] or 0), float(r["b"] or 0), float(r["c"] or 0)) for r in ended},
        )

    # --- replicas ----------------------------------------------------------------------------------

    async def heartbeat(self, node: NodeRecord) -> None:
        """Record that a replica is alive (insert or refresh its row); first, write what was spooled."""
        await self.drain()
        await self.pool.execute(
            "INSERT INTO nodes VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (id) DO UPDATE SET version=excluded.version, "
            "started_at=excluded.started_at, heartbeat_at=excluded.heartbeat_at, "
            "live_sessions=excluded.live_sessions, state=excluded.state",
            node.id,
            node.version,
            node.started_at,
            node.heartbeat_at,
            node.live_sessions,
            node.state,
        )

    async def list_nodes(self) -> list[NodeRecord]:
        """Every replica that ever heartbeat, most recent first."""
        return [node_row(r) for r in await self.pool.fetch("SELECT * FROM nodes ORDER BY heartbeat_at DESC")]

    async def claim_lost_nodes(self, *, older_than: float, now: float) -> dict[str, list[SessionRecord]]:
        """Mark replicas silent since `older_than` lost and end their live sessions (replica_lost) in one
        transaction: the row lock on each node makes exactly one survivor claim it."""
        out: dict[str, list[SessionRecord]] = {}
        async with self.pool.acquire() as con, con.transaction():
            lost = await con.fetch(
                "UPDATE nodes SET state='lost' WHERE state='up' AND heartbeat_at < $1 AND id != $2 RETURNING id",
                older_than,
                self.node,
            )
            for r in lost:
                nid = str(r["id"])
                # kill_requested too: should the replica come back, its watcher ends what it still holds.
                rows = await con.fetch(
                    "UPDATE sessions SET ended_at=$1, end_reason=$2, kill_requested=$2 "
                    "WHERE node=$3 AND ended_at IS NULL RETURNING *",
                    now,
                    REPLICA_LOST,
                    nid,
                )
                out[nid] = [session_row(s) for s in rows]
        return out

    # --- push --------------------------------------------------------------------------------------

    async def listen(self, wake: Wake) -> None:
        """LISTEN for revocations and kills on a connection of its own, reconnecting when it drops; every
        (re)connect wakes once, so what was sent while it was down is reconciled at once."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_loop(wake), name="store-listen")

    async def _listen_loop(self, wake: Wake) -> None:
        while True:
            con: asyncpg.Connection | None = None
            try:
                con = await asyncpg.connect(self._url, timeout=COMMAND_TIMEOUT)
                dropped = asyncio.Event()
                con.add_termination_listener(lambda _c, ev=dropped: ev.set())
                await con.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: self._wake(wake, str(payload)))
                self._wake(wake, "reconnect")
                while not dropped.is_set():
                    try:
                        await asyncio.wait_for(dropped.wait(), LISTEN_KEEPALIVE)
                    except TimeoutError:
                        await con.fetchval("SELECT 1", timeout=LISTEN_KEEPALIVE)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store LISTEN connection lost (%s); the reconcile poll covers the gap", type(exc).__name__)
            finally:
                if con is not None and not con.is_closed():
                    con.terminate()
            await asyncio.sleep(0.5)

    def _wake(self, wake: Wake, payload: str) -> None:
        result = wake(payload)
        if result is not None:
            task = asyncio.ensure_future(result)
            self._wake_tasks.add(task)
            task.add_done_callback(self._wake_tasks.discard)

    # --- console sign-ins ----------------------------------------------------------------------------

    async def add_web_session(self, key: str, s: WebSignIn, *, now: float) -> None:
        """Store a sign-in (every replica behind the load balancer sees it; expired ones are dropped)."""
        await self.pool.execute("DELETE FROM web_sessions WHERE expires_at <= $1", now)
        await self.pool.execute(
            "INSERT INTO web_sessions VALUES ($1,$2,$3,$4,$5,$6,$7)",
            key, s.user, json.dumps(list(s.groups)), s.admin, s.via, s.csrf, s.expires_at,
        )  # fmt: skip

    async def get_web_session(self, key: str, *, now: float) -> WebSignIn | None:
        """The sign-in under this key, unless it has expired."""
        r = await self.pool.fetchrow("SELECT * FROM web_sessions WHERE key = $1 AND expires_at > $2", key, now)
        return web_signin_row(r) if r else None

    async def drop_web_session(self, key: str) -> None:
        """Sign out (on every replica at once)."""
        await self.pool.execute("DELETE FROM web_sessions WHERE key = $1", key)

    # --- moving an embedded store in -----------------------------------------------------------------

    async def is_empty(self) -> bool:
        """No audit event, grant, request or session yet (a migration target must be)."""
        n = await self.pool.fetchval(
            "SELECT (SELECT count(*) FROM audit) + (SELECT count(*) FROM grants) + "
            "(SELECT count(*) FROM requests) + (SELECT count(*) FROM sessions)"
        )
        return int(n) == 0

    async def import_all(
        self,
        grants: Sequence[GrantRecord],
        requests: Sequence[RequestRecord],
        sessions: Sequence[SessionRecord],
        events: Sequence[AuditEvent],
        checkpoints: Sequence[Checkpoint],
    ) -> None:
        """Copy records verbatim (hashes, seq numbers, end states) in one transaction, under the chain lock."""
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
            await con.executemany(_INSERT_GRANT_FULL, [_grant_full_args(g) for g in grants])
            await con.executemany(_INSERT_REQUEST, [_request_args(r) for r in requests])
            await con.executemany(_INSERT_SESSION_FULL, [_session_full_args(s) for s in sessions])
            await con.copy_records_to_table(
                "audit",
                records=[
                    (
                        e.seq,
                        e.ts,
                        e.type,
                        e.actor,
                        e.session,
                        e.grant,
                        e.target,
                        e.severity,
                        json.dumps(e.data, sort_keys=True),
                        e.prev_hash,
                        e.hash,
                        e.node,
                    )
                    for e in events
                ],
            )
            await con.executemany(
                "INSERT INTO checkpoints VALUES ($1,$2,$3,$4,$5)",
                [(c.seq, c.head, c.kid, c.signature, c.ts) for c in checkpoints],
            )


class _Where:
    """AND-ed conditions with numbered placeholders: values never enter the SQL text."""

    def __init__(self) -> None:
        self.parts: list[str] = ["true"]
        self.args: list[object] = []

    def add(self, cond: str, *values: object) -> None:
        marks = []
        for v in values:
            self.args.append(v)
            marks.append(f"${len(self.args)}")
        self.parts.append(cond.format(*marks))

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts)


_INSERT_GRANT = (
    'INSERT INTO grants (id,"user",target,scope,reason,approvers,issued_at,not_before,expires_at,state,break_glass,'
    "request_id,max_sessions,workload) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
)
_INSERT_GRANT_FULL = (
    'INSERT INTO grants (id,"user",target,scope,reason,approvers,issued_at,not_before,expires_at,state,break_glass,'
    "request_id,max_sessions,workload,revoked_at,revoked_by,revoke_reason) "
    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)"
)
_INSERT_SESSION = (
    'INSERT INTO sessions (id,grant_id,"user",target,scope,protocol,client_addr,started_at,recording_path,stats,'
    "node) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
)
_INSERT_SESSION_FULL = (
    'INSERT INTO sessions (id,grant_id,"user",target,scope,protocol,client_addr,started_at,recording_path,stats,'
    "node,ended_at,end_reason,recording_sha256,kill_requested) "
    "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
)
_INSERT_REQUEST = (
    "INSERT INTO requests (id,requester,target,scope,reason,ttl,created_at,state,approvals,decided_at,decided_by,"
    "comment,grant_id,expires_at,workload) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)"
)


def _grant_args(g: GrantRecord) -> tuple[object, ...]:
    return (
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
        g.break_glass,
        g.request_id,
        g.max_sessions,
        _json_or_none(g.workload),
    )


def _grant_full_args(g: GrantRecord) -> tuple[object, ...]:
    return (*_grant_args(g), g.revoked_at, g.revoked_by, g.revoke_reason)


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


def _session_full_args(s: SessionRecord) -> tuple[object, ...]:
    return (*_session_args(s, s.node), s.ended_at, s.end_reason, s.recording_sha256, s.kill_requested)


def _request_args(r: RequestRecord) -> tuple[object, ...]:
    return (
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
        _json_or_none(r.workload),
    )


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


__all__ = ["PgStore", "redact"]
