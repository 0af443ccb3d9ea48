"""This replica in a shared store: push-woken revocation sweeps, heartbeats, and reaping replicas that went silent.

A replica killed with -9 leaves its sessions' upstream sides behind: its TCP connections close with the
process, but a Postgres backend busy in a statement only notices when it next writes, and sshd does not
signal a command without a PTY (it runs on, reparented to init, until it writes to its closed output). The
survivor that claims the replica ends them: the Postgres backends by their `gateway:<user>:<session>` tag
(the lingering-access sweep, run at once), the SSH processes by the detached-process sweep (gateway/ssh/
reaper.py: it logs in as each lost session's login and ends the processes no live session owns), unless
the scope's policy says `detached: "off"`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import __version__
from gateway.config import Login, Target
from gateway.services import Services
from gateway.store import REPLICA_LOST, NodeRecord, SessionRecord, StoreError

log = logging.getLogger(__name__)


class ReplicaError(StoreError):
    """This replica cannot join the store (its node id is taken by a running replica)."""


class Replica:
    """Heartbeat and reaper passes as plain methods with the clock passed in (the scheduler runs `tick`)."""

    def __init__(self, svc: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.svc = svc
        self.clock = clock
        self.started_at = clock()
        self._sweeping: asyncio.Task[None] | None = None
        self._again = False
        # Ending a lost replica's upstream sides logs in to targets (seconds each): never inside the tick,
        # where it would delay this replica's own heartbeat until the others think it lost too.
        self._upstream_work: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Claim this node id, end what its previous process left open, and listen for other replicas'
        revocations and kills (a no-op on SQLite, where the poll does it)."""
        await self._claim_node_id()
        now = self.clock()
        await self.beat(now)
        left = [s for s in await self.svc.store.list_sessions(live=True) if s.node == self.svc.store.node]
        if left:  # a process killed with -9 and restarted before any survivor reaped it (or a single node)
            await self._ended(self.svc.store.node, left, now, "restarted")
        await self.svc.store.listen(self.wake)

    async def _claim_node_id(self) -> None:
        """Refuse to run under the node id of a replica that is still heartbeating (two processes, one id)."""
        store, cfg = self.svc.store, self.svc.config
        row = next((n for n in await store.list_nodes() if n.id == store.node), None)
        if row is None or row.state != "up" or self.clock() - row.heartbeat_at >= cfg.lost_after:
            return
        # Fresh and up: a live twin, or this id's previous process that died a moment ago. A twin beats again.
        await asyncio.sleep(1.5 * cfg.heartbeat)
        again = next((n for n in await store.list_nodes() if n.id == store.node), None)
        if again is not None and again.heartbeat_at > row.heartbeat_at:
            age = self.clock() - again.heartbeat_at
            raise ReplicaError(
                f"node id {store.node!r} is in use by a running replica (it heartbeat {age:.1f} s ago): "
                "give each replica its own [store] node"
            )

    def wake(self, _payload: str) -> None:
        """A revocation or kill was pushed: sweep now (coalesced: one sweep runs, at most one more follows)."""
        if self._sweeping is not None and not self._sweeping.done():
            self._again = True
            return
        self._sweeping = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        while True:
            self._again = False
            try:
                await self.svc.registry.sweep()
            except Exception:
                log.exception("pushed sweep failed; the reconcile poll retries")
            if not self._again:
                return

    async def beat(self, now: float) -> None:
        """Say this replica is alive, with its live session count."""
        node = NodeRecord(self.svc.store.node, __version__, self.started_at, now, len(self.svc.registry))
        await self.svc.store.heartbeat(node)

    async def reap(self, now: float) -> int:
        """End the sessions of replicas silent for longer than lost_after (exactly one survivor claims each)."""
        claimed = await self.svc.store.claim_lost_nodes(older_than=now - self.svc.config.lost_after, now=now)
        for node, sessions in claimed.items():
            await self._ended(node, sessions, now, "stopped heartbeating")
        return sum(len(s) for s in claimed.values())

    async def _ended(self, node: str, sessions: list[SessionRecord], now: float, what: str) -> None:
        """Alert, audit each end (replica_lost) and end the upstream sides of a lost replica's sessions."""
        await self.svc.alerts.emit(
            "replica.lost",
            f"replica {node} {what}; {len(sessions)} of its session(s) marked ended",
            severity="critical",
            data={"node": node, "sessions": [s.id for s in sessions]},
        )
        store = self.svc.store
        for s in sessions:
            if s.node == store.node:  # this replica's own leftovers: the claim of other replicas' is atomic
                await store.end_session(s.id, ended_at=now, reason=REPLICA_LOST, recording_sha256=None, stats={})
            await store.append(
                "session.end",
                actor=s.user,
                session=s.id,
                grant=s.grant_id,
                target=s.target,
                severity="warning",
                data={"reason": REPLICA_LOST, "node": node, "recording": s.recording_path},
            )
        task = asyncio.ensure_future(self.end_upstreams(sessions, now))
        self._upstream_work.add(task)
        task.add_done_callback(self._upstream_work.discard)

    async def upstreams_done(self, limit: float = 30.0) -> None:
        """Wait for the upstream ends under way (a stop, and tests)."""
        if self._upstream_work:
            await asyncio.wait(list(self._upstream_work), timeout=limit)

    async def end_upstreams(self, sessions: list[SessionRecord], now: float) -> None:
        """End what a lost replica's sessions still hold upstream (Postgres backends, SSH processes)."""
        if any(s.protocol == "postgres" for s in sessions):
            from gateway.detect.pgsweep import PgSweeper

            try:  # every backend tagged with an ended session is terminated, audited and alerted
                await PgSweeper(self.svc.config, self.svc.store, self.svc.alerts).once(now)
            except Exception:
                log.exception("the sweep of a lost replica's Postgres backends failed; the periodic sweep retries")
        logins: dict[tuple[str, str], tuple[_Login, str, list[str]]] = {}
        for s in sessions:
            target = self.svc.config.targets.get(s.target)
            scope = self.svc.policies.scope(s.target, s.scope)
            login = target.logins.get(s.scope) if target is not None else None
            mode = scope.ssh.detached if scope is not None and scope.ssh is not None else "off"
            if s.protocol != "ssh" or target is None or login is None or mode == "off":
                continue
            entry = logins.setdefault((target.name, login.user), (_Login(target, login), mode, []))
            entry[2].append(s.id)
        for upstream, mode, ids in logins.values():
            await self._sweep_ssh(upstream, mode, ids)

    async def _sweep_ssh(self, upstream: _Login, mode: str, ids: list[str]) -> None:
        """One detached-process sweep of a login the lost sessions used; what it found is audited and alerted."""
        from gateway.ssh.reaper import own_account, sweep

        store, where = self.svc.store, f"{upstream.login.user}@{upstream.target.name}"
        if own_account(upstream):  # never the developer's own processes (see reaper.reap_after)
            return
        try:
            live = {r.id for r in await store.list_sessions(target=upstream.target.name, live=True)}
            result = await sweep(upstream, live, kill=mode == "kill")
        except Exception as exc:
            why = str(exc) or type(exc).__name__
            await self.svc.alerts.emit("ssh.detached.unchecked", f"could not check {where} for processes left by "
                                       f"lost session(s) {', '.join(ids)}: {why}", severity="warning",
                                       target=upstream.target.name, data={"sessions": ids, "reason": why})  # fmt: skip
            return
        if not result.found:
            return
        procs = [{"pid": d.pid, "args": d.args[:300], "session": d.marker or None} for d in result.found]
        for sid in ids:
            mine = [p for p in procs if p["session"] == sid]
            await store.append("ssh.detached", session=sid, target=upstream.target.name, severity="critical",
                               data={"login": upstream.login.user, "processes": mine, "mode": mode,
                                     "killed": list(result.killed), "forced": list(result.forced)})  # fmt: skip
        ended = "ended" if mode == "kill" else "NOT ended (detached: alert)"
        await self.svc.alerts.emit("ssh.detached", f"{len(procs)} process(es) of {where} outlived lost session(s) "
                                   f"{', '.join(ids)}: {ended}", severity="critical", target=upstream.target.name,
                                   data={"login": upstream.login.user, "processes": procs})  # fmt: skip

    async def stopped(self) -> None:
        """A clean stop: the row says so, and no survivor reaps this replica."""
        now = self.clock()
        node = NodeRecord(self.svc.store.node, __version__, self.started_at, now, 0, "stopped")
        await self.svc.store.heartbeat(node)

    async def tick(self, now: float) -> None:
        """One scheduler pass: heartbeat, then reap."""
        await self.beat(now)
        await self.reap(now)


@dataclass(frozen=True, slots=True)
class _Login:
    """A lost session's upstream login, for the SSH sweep (which needs only the target and the login)."""

    target: Target
    login: Login
