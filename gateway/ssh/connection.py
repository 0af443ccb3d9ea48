"""One admitted SSH connection: its live session, upstream login, channels and recordings, and its kill handle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh

from gateway.recording import schema
from gateway.sessions import LiveSession
from gateway.ssh.reaper import reap_after
from gateway.ssh.recordings import SessionRecordings
from gateway.ssh.relay import ChannelRelay

log = logging.getLogger(__name__)

CLOSE_GRACE = 1.0
"""Seconds the peers get to acknowledge channel closes before the connections are dropped."""


class SshConnection:
    """Everything of one engineer's connection; `finish` tears all of it down, once."""

    def __init__(self, session: LiveSession, client: asyncssh.SSHServerConnection,
                 upstream: asyncssh.SSHClientConnection) -> None:  # fmt: skip
        self.session = session
        self.client = client
        self._upstream = upstream
        self.recordings = SessionRecordings(session, on_failure=self._recording_failed)
        self.channels: list[ChannelRelay] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: asyncio.Future[None] | None = None
        self.on_finished: Callable[[SshConnection], None] | None = None
        session.bind(kill=self.kill, warn=self.warn)

    @property
    def upstream(self) -> asyncssh.SSHClientConnection:
        """The gateway's login on the target."""
        return self._upstream

    def new_channel(self) -> ChannelRelay:
        """A relay for a new session channel."""
        relay = ChannelRelay(self, len(self.channels) + 1)
        self.channels.append(relay)
        return relay

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine tied to this connection (kept referenced until done)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A failed background task ends the session (never a silent half-dead relay)."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ssh session %s: task failed", self.session.id, exc_info=task.exception())
            self.kill_soon(f"internal error ({type(task.exception()).__name__})")

    def kill_soon(self, reason: str) -> None:
        """End the session from a callback (audited as a kill)."""
        self.spawn(self.session.kill(reason))

    def _recording_failed(self, reason: str) -> None:
        """Fail closed: a session that cannot be recorded does not go on."""
        self.kill_soon(f"recording failed: {reason}")

    def warn(self, message: str) -> None:
        """The registry's warning (deadline near) on every terminal of this connection."""
        for relay in self.channels:
            relay.write_notice(message)
        self.recordings.marker(schema.warning_marker(message))

    async def kill(self, reason: str) -> None:
        """The kill handle: tell the engineer, then end the session (its commands upstream too)."""
        self.recordings.marker(schema.kill_marker(reason))
        for relay in self.channels:
            relay.write_notice(f"{reason} - session closed")
        await self.finish(reason)

    def client_lost(self, exc: Exception | None) -> None:
        """The engineer's connection closed."""
        self.spawn(self.finish("client disconnected" if exc is None else f"client connection lost: {exc}"))

    def upstream_lost(self, exc: Exception | None) -> None:
        """The target's connection closed under us."""
        if self._finished is None:
            for relay in self.channels:
                relay.write_notice(f"connection to {self.session.target.name} lost")
        self.spawn(self.finish("upstream disconnected" if exc is None else f"upstream connection lost: {exc}"))

    async def finish(self, reason: str) -> None:
        """Close channels and both connections, seal the recordings, end the session. Idempotent."""
        if self._finished is not None:
            await asyncio.shield(self._finished)
            return
        self._finished = asyncio.get_running_loop().create_future()
        try:
            await self._teardown(reason)
        finally:
            self._finished.set_result(None)
            if self.on_finished is not None:
                self.on_finished(self)

    async def _teardown(self, reason: str) -> None:
        """End the upstream commands, close channels and connections, seal recordings, record the end."""
        started = [r for r in self.channels if r.started]
        for relay in started:
            relay.stop_input()
        # The commands end first, so their exit status or signal still reaches the engineer.
        await asyncio.gather(*(r.end_upstream() for r in self.channels if r.up is not None))
        for relay in started:
            relay.chan.close()
        waits = [r.chan.wait_closed() for r in started]
        waits += [r.up.wait_closed() for r in self.channels if r.up is not None]
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), CLOSE_GRACE)
        self.client.close()
        self._upstream.close()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._upstream.wait_closed(), CLOSE_GRACE)
        sha = await self.recordings.close(reason)
        policy = self.session.policy.ssh
        try:
            if policy is not None and policy.detached != "off":
                # Whatever the session detached (setsid nohup ... &) would keep its access: the session
                # is not over until that is ended too, so the sweep runs before the end is recorded.
                await reap_after(self.session, mode=policy.detached)
        finally:
            self.session.stats.update(channels=len(self.channels))
            await self.session.close(reason, recording_sha256=sha)
