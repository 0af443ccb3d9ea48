"""The live-session block and registry: deadlines, warnings, revocation, kills from other processes, one end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Address, Login, Target
from gateway.policy import ScopePolicy, SqlPolicy
from gateway.scheduler import Scheduler
from gateway.sessions import EXPIRED, LiveSession, SessionRegistry, new_session_record
from gateway.store import GrantRecord, SqliteStore
from gateway.tokens import Claims, KeyRing

T0 = 1_700_000_000.0
TARGET = Target(
    "orders-db", "postgres", Address("127.0.0.1", 5432), {"read": Login("read", "app_ro")}, database="orders"
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Handle:
    """A front end's sides, recording and warnings that only record what they were asked."""

    def __init__(self, session: LiveSession) -> None:
        self.session = session
        self.closes: list[str] = []
        self.kills: list[str] = []
        self.warns: list[str] = []
        self.kill_at: float | None = None
        self.warn_at: float | None = None
        self.killed = asyncio.Event()
        self.sha = "ab" * 32
        self.release = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def close(self, reason: str) -> None:
        self.closes.append(reason)
        if self.session.killed:
            self.kills.append(reason)
            self.kill_at = time.monotonic()
            self.killed.set()

    async def seal(self, reason: str) -> str | None:
        return self.sha

    def warn(self, message: str) -> None:
        self.warns.append(message)
        self.warn_at = time.monotonic()

    async def block(self) -> None:
        """What a front end's handler does: enter the session's block and serve until the client leaves."""
        async with self.session as s:
            s.attach(sides=self, recording=self, warn=self.warn)
            await self.release.wait()

    async def leave(self, reason: str) -> None:
        """The client leaves: the block returns with that reason."""
        self.session.ending(reason)
        self.release.set()
        assert self.task is not None
        await self.task


class Env:
    def __init__(
        self, tmp_path: Path, store: SqliteStore, ring: KeyRing, clock: Clock, registry: SessionRegistry
    ) -> None:
        self.tmp_path, self.store, self.ring, self.clock, self.registry = tmp_path, store, ring, clock, registry
        self.handles: dict[str, Handle] = {}

    async def grant(self, gid: str, exp: float, user: str = "alice") -> None:
        await self.store.add_grant(GrantRecord(gid, user, "orders-db", "read", "INC-1", ("bob",), T0, T0, exp))

    async def session(self, sid: str, gid: str, exp: float, *, enter: bool = True, user: str = "alice") -> LiveSession:
        if await self.store.get_grant(gid) is None:
            await self.grant(gid, exp, user)
        claims = Claims(
            user, gid, "orders-db", "read", int(T0), int(T0), int(exp), "INC-1", ("bob",), "gateway", "gateway"
        )
        s = LiveSession(
            id=sid,
            claims=claims,
            target=TARGET,
            login=TARGET.logins["read"],
            policy=ScopePolicy("read", sql=SqlPolicy()),
            protocol="postgres",
            client_addr="10.0.0.9:1",
            started_at=self.clock(),
            recording_path=self.tmp_path / f"{sid}.sql.jsonl",
            store=self.store,
            registry=self.registry,
        )
        await self.store.add_session(new_session_record(s))
        self.registry.add(s)
        self.handles[sid] = Handle(s)
        if enter:
            await self.enter(sid)
        return s

    async def enter(self, sid: str) -> None:
        h = self.handles[sid]
        h.task = asyncio.ensure_future(h.block())
        await asyncio.sleep(0)

    async def events(self, type_: str, sid: str | None = None) -> list[Any]:
        return await self.store.events(types=[type_], session=sid)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ring = KeyRing.load_or_create(tmp_path / "keys")
    store = await SqliteStore(tmp_path / "gw.db", ring).open()
    clock = Clock(T0)
    registry = SessionRegistry(store, clock=clock, warn_before=1.0)
    e = Env(tmp_path, store, ring, clock, registry)
    yield e
    await registry.close_all("test over")
    await store.close()


# --- deadlines ---------------------------------------------------------------------------------------


async def test_deadline_warns_then_kills(env: Env) -> None:
    exp = T0 + 600
    env.clock.now = exp - 1.3  # 1.3 s left: warning at 0.3 s (warn_before = 1 s), kill at 1.3 s
    start = time.monotonic()
    s = await env.session("s1", "g1", exp)
    h = env.handles["s1"]
    await asyncio.wait_for(h.killed.wait(), 3)
    assert h.kills == [EXPIRED]
    assert h.kill_at is not None and h.kill_at - start >= 1.2  # not early
    assert len(h.warns) == 1 and h.warn_at is not None and h.warn_at < h.kill_at
    assert "access window closes in 1 s" in h.warns[0]
    assert h.warn_at - start >= 0.2
    await asyncio.sleep(0.05)
    assert s.closed and s.end_reason == EXPIRED
    assert env.registry.get("s1") is None
    [kill] = await env.events("session.kill", "s1")
    assert (kill.actor, kill.data["reason"], kill.severity, kill.grant) == ("gateway", EXPIRED, "warning", "g1")
    [end] = await env.events("session.end", "s1")
    assert end.data["reason"] == EXPIRED
    row = await env.store.get_session("s1")
    assert row is not None and row.ended_at == env.clock.now and row.end_reason == EXPIRED


async def test_deadline_kill_ends_the_block_and_its_task(env: Env) -> None:
    exp = T0 + 600
    env.clock.now = exp - 0.2
    s = await env.session("s1", "g1", exp)
    h = env.handles["s1"]
    assert h.task is not None
    await asyncio.wait_for(h.task, 3)  # the kill cancelled the block; its exit ended the session
    assert h.kills == [EXPIRED] and s.closed and not s._tasks


async def test_session_already_past_its_deadline_is_killed_on_entry(env: Env) -> None:
    env.clock.now = T0 + 700
    s = await env.session("s1", "g1", T0 + 600)
    await asyncio.wait_for(env.handles["s1"].killed.wait(), 1)
    assert env.handles["s1"].kills == [EXPIRED]
    await asyncio.sleep(0.02)
    assert s.closed


async def test_no_timer_fires_before_the_block_and_none_after_it(env: Env) -> None:
    exp = T0 + 600
    env.clock.now = exp - 0.3
    s = await env.session("s1", "g1", exp, enter=False)
    await asyncio.sleep(0.4)
    assert not s.closed  # timers start when the front end enters the block
    await env.enter("s1")
    h = env.handles["s1"]
    await h.leave("client closed")
    await asyncio.sleep(0.45)
    assert h.kills == [] and h.warns == []  # the end cancelled the deadline timer
    assert h.closes == ["client closed"]
    assert [e.data["reason"] for e in await env.events("session.end", "s1")] == ["client closed"]
    assert await env.events("session.kill", "s1") == []


async def test_a_kill_before_the_block_ends_it_on_entry(env: Env) -> None:
    # Revocation can land between admission and the block's start: the block then ends at its first await.
    s = await env.session("s1", "g1", T0 + 600, enter=False)
    revoked = asyncio.ensure_future(env.registry.revoke("g1", "grant revoked: INC closed", by="carol"))
    await asyncio.sleep(0.05)
    assert s.closed
    await env.enter("s1")
    assert await asyncio.wait_for(revoked, 2) == 1
    h = env.handles["s1"]
    assert h.task is not None
    await h.task
    assert h.kills == ["grant revoked: INC closed"]
    assert len(await env.events("session.end", "s1")) == 1


async def test_deadline_is_the_token_exp(env: Env) -> None:
    s = await env.session("s1", "g1", T0 + 123, enter=False)
    assert s.deadline == T0 + 123 and s.user == "alice" and s.scope == "read"
    assert "alice@orders-db/read" in repr(s)


# --- revocation and kills ----------------------------------------------------------------------------


async def test_revoke_kills_only_that_grants_sessions(env: Env) -> None:
    a1 = await env.session("a1", "gA", T0 + 600)
    b1 = await env.session("b1", "gB", T0 + 600, user="bob")
    assert await env.registry.revoke("gA", "grant revoked: INC closed", by="carol") == 1
    assert env.handles["a1"].kills == ["grant revoked: INC closed"]
    assert env.handles["b1"].kills == []
    assert a1.closed and not b1.closed
    assert [s.id for s in env.registry.live()] == ["b1"]
    [kill] = await env.events("session.kill")
    assert (kill.session, kill.actor, kill.data["reason"]) == ("a1", "carol", "grant revoked: INC closed")
    assert await env.registry.revoke("gA", "again", by="carol") == 0
    assert await env.registry.revoke("g-unknown", "x", by="carol") == 0
    assert env.handles["b1"].kills == []


async def test_revoke_kills_every_session_of_the_grant(env: Env) -> None:
    """Two live sessions of one grant are killed concurrently (asyncio.gather): both must end."""
    a1 = await env.session("a1", "gA", T0 + 600)
    a2 = await env.session("a2", "gA", T0 + 600)
    b1 = await env.session("b1", "gB", T0 + 600, user="bob")
    outcome: object = None
    try:
        outcome = await env.registry.revoke("gA", "grant revoked: INC closed", by="carol")
    except Exception as exc:  # reported below, after what matters most
        outcome = exc
    assert env.handles["a1"].kills == env.handles["a2"].kills == ["grant revoked: INC closed"], outcome
    assert a1.closed and a2.closed and not b1.closed
    assert outcome == 2
    kills = await env.events("session.kill")
    assert sorted((e.session, e.actor) for e in kills) == [("a1", "carol"), ("a2", "carol")]
    assert len(await env.events("session.end")) == 2
    assert (await env.store.verify()).ok


async def test_kill_by_id(env: Env) -> None:
    await env.session("s1", "g1", T0 + 600)
    await env.session("s2", "g1", T0 + 600)
    assert await env.registry.kill("s1", "security: suspicious", by="dave")
    assert not await env.registry.kill("s1", "again", by="dave")
    assert not await env.registry.kill("nope", "x", by="dave")
    assert env.handles["s1"].kills == ["security: suspicious"] and env.handles["s2"].kills == []


async def test_sweep_picks_up_another_processs_revocation_and_kill_request(env: Env) -> None:
    await env.session("a1", "gA", T0 + 600)
    await env.session("b1", "gB", T0 + 600)
    await env.session("b2", "gB", T0 + 600)
    await env.session("c1", "gC", T0 + 600)
    other = await SqliteStore(env.store.path, env.ring).open()  # the CLI or another replica
    try:
        await other.revoke_grant("gA", by="carol", reason="INC closed", now=T0 + 5)
        await other.request_kill("b2", "security team: suspicious")
    finally:
        await other.close(checkpoint=False)
    await env.registry.sweep()
    assert env.handles["a1"].kills == ["grant revoked: INC closed"]
    assert env.handles["b2"].kills == ["security team: suspicious"]
    assert env.handles["b1"].kills == [] and env.handles["c1"].kills == []
    assert sorted(s.id for s in env.registry.live()) == ["b1", "c1"]
    actors = {e.session: e.actor for e in await env.events("session.kill")}
    assert actors == {"a1": "carol", "b2": "gateway"}
    # a second sweep does nothing more
    await env.registry.sweep()
    assert len(await env.events("session.kill")) == 2


async def test_sweep_ends_sessions_of_an_expired_grant(env: Env) -> None:
    await env.session("s1", "g1", T0 + 600)
    other = await SqliteStore(env.store.path, env.ring).open()
    try:
        assert await other.expire_grants(T0 + 600) == ["g1"]
    finally:
        await other.close(checkpoint=False)
    await env.registry.sweep()
    assert env.handles["s1"].kills == ["grant ended"]


async def test_scheduled_sweep_reaches_live_sessions_quickly(env: Env) -> None:
    """The sweep as the gateway runs it: a job of a real Scheduler on the real clock."""
    await env.session("s1", "g1", T0 + 600)
    scheduler = Scheduler()
    scheduler.every(0.05, "revocation-sweep", lambda now: env.registry.sweep())
    scheduler.start()
    try:
        other = await SqliteStore(env.store.path, env.ring).open()
        try:
            await other.revoke_grant("g1", by="carol", reason="now", now=T0)
        finally:
            await other.close(checkpoint=False)
        await asyncio.wait_for(env.handles["s1"].killed.wait(), 2)
        assert env.handles["s1"].kills == ["grant revoked: now"]
        assert scheduler.jobs["revocation-sweep"].failures == 0
    finally:
        await scheduler.stop()


async def test_sweep_with_nothing_live_does_not_touch_the_store(env: Env) -> None:
    await env.store.close(checkpoint=False)
    await env.registry.sweep()  # would raise StoreError if it queried the closed store
    await env.store.open()


# --- ends are recorded exactly once ------------------------------------------------------------------


async def test_kill_is_idempotent(env: Env) -> None:
    s = await env.session("s1", "g1", T0 + 600)
    env.clock.now = T0 + 42
    await asyncio.gather(s.kill("first", by="carol"), s.kill("second", by="dave"))
    await s.kill("third")
    assert env.handles["s1"].task is not None and env.handles["s1"].task.done()
    assert env.handles["s1"].kills == ["first"]
    assert [(e.actor, e.data["reason"]) for e in await env.events("session.kill", "s1")] == [("carol", "first")]
    [end] = await env.events("session.end", "s1")
    assert end.data["reason"] == "first" and end.data["duration"] == 42
    row = await env.store.get_session("s1")
    assert row is not None and (row.ended_at, row.end_reason) == (T0 + 42, "first")
    assert (await env.store.verify()).ok


async def test_a_failing_close_still_ends_the_session(env: Env) -> None:
    s = await env.session("s1", "g1", T0 + 600)

    async def broken(reason: str) -> None:
        raise ConnectionResetError("socket gone")

    env.handles["s1"].close = broken  # type: ignore[method-assign]
    await s.kill("revoked")
    assert s.closed
    assert len(await env.events("session.end", "s1")) == 1


async def test_an_unsealable_recording_is_in_the_end_reason(env: Env) -> None:
    s = await env.session("s1", "g1", T0 + 600)

    async def broken(reason: str) -> str | None:
        raise OSError(28, "No space left on device")

    env.handles["s1"].seal = broken  # type: ignore[method-assign]
    await env.handles["s1"].leave("client closed")
    [end] = await env.events("session.end", "s1")
    assert end.data["reason"].startswith("client closed; recording failed:") and end.data["recording_sha256"] is None
    assert s.end_reason == end.data["reason"]


async def test_cancelled_from_outside_ends_then_passes_it_on(env: Env) -> None:
    s = await env.session("s1", "g1", T0 + 600, enter=False)
    with pytest.raises(asyncio.CancelledError):
        async with s:
            raise asyncio.CancelledError
    assert [e.data["reason"] for e in await env.events("session.end", "s1")] == ["session task cancelled"]


async def test_end_listeners_get_the_final_record_once(env: Env) -> None:
    got: list[Any] = []

    async def listener(end: Any) -> None:
        got.append((end.session.id, end.reason, end.recording_sha256, end.killed_by))

    env.registry.end_listeners.append(listener)
    s = await env.session("s1", "g1", T0 + 600)
    await asyncio.gather(s.kill("enough", by="carol"), s.kill("again", by="dave"))
    assert got == [("s1", "enough", "ab" * 32, "carol")]


async def test_close_records_the_recording_hash(env: Env) -> None:
    s = await env.session("s1", "g1", T0 + 600)
    s.stats["statements"] = 3
    await env.handles["s1"].leave("client closed")
    [end] = await env.events("session.end", "s1")
    assert end.data == {
        "reason": "client closed",
        "duration": 0,
        "stats": {"statements": 3},
        "recording": str(env.tmp_path / "s1.sql.jsonl"),
        "recording_sha256": "ab" * 32,
    }
    row = await env.store.get_session("s1")
    assert row is not None and row.recording_sha256 == "ab" * 32 and row.stats == {"statements": 3}
    s.warn("too late")
    assert env.handles["s1"].warns == []  # nothing is shown once closed


async def test_close_all(env: Env) -> None:
    for i in range(3):
        await env.session(f"s{i}", f"g{i}", T0 + 600)
    await env.registry.close_all("gateway shutting down")
    assert len(env.registry) == 0
    assert all(h.kills == ["gateway shutting down"] for h in env.handles.values())
    assert len(await env.events("session.end")) == 3


async def test_after_end_work_runs_once_the_end_is_recorded_and_shutdown_waits_for_it(env: Env) -> None:
    """The detached-process sweep's slot: a kill returns (and session.end is stored) before it finishes, and
    close_all waits for it, so its audit event is written before the store closes."""
    s = await env.session("s1", "g1", T0 + 600)
    seen: list[int] = []
    release = asyncio.Event()

    async def work() -> None:
        seen.append(len(await env.events("session.end", "s1")))
        await release.wait()
        await s.audit("test.after_end")

    s.after_end(work)
    await asyncio.wait_for(env.registry.kill("s1", "enough", by="dave"), 2)  # does not wait for the work
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == [1] and await env.events("test.after_end") == []  # it began after the end was stored
    closing = asyncio.ensure_future(env.registry.close_all("gateway shutting down"))
    await asyncio.sleep(0.05)
    assert not closing.done()  # waiting for the after-end work
    release.set()
    await asyncio.wait_for(closing, 2)
    assert len(await env.events("test.after_end", "s1")) == 1 and not env.registry.finishing


async def test_audit_failure_ends_the_session(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: when an audit event cannot be written, the front end is told to close the connection,
    even though the `session.kill` event itself cannot be written either."""
    s = await env.session("s1", "g1", T0 + 600)

    async def broken_append(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(env.store, "append", broken_append)
    raised: BaseException | None = None
    try:
        await s.audit("sql.statement", sql="SELECT 1")
    except Exception as exc:
        raised = exc
    assert env.handles["s1"].kills == ["audit log unavailable (OSError)"]
    assert s.closed
    assert raised is None
