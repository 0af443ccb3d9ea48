"""One admitted SSH connection: its upstream login, channels and recordings; the session's sides and recording."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

import asyncssh

from gateway.recording import schema
from gateway.sessions import LiveSession
from gateway.ssh.asyncssh_compat import hang_up
from gateway.ssh.reaper import reap_after
from gateway.ssh.recordings import SessionRecordings
from gateway.ssh.relay import ChannelRelay

log = logging.getLogger(__name__)

CLOSE_GRACE = 1.0
"""Seconds the peers get to acknowledge channel closes before the connections are dropped."""


class SshConnection:
    """Everything of one engineer's connection: the session's sides (`close`) and recording (`seal`)."""

    def __init__(self, session: LiveSession, client: asyncssh.SSHServerConnection,
                 upstream: asyncssh.SSHClientConnection) -> None:  # fmt: skip
        self.session = session
        self.client = client
        self._upstream = upstream
        self.recordings = SessionRecordings(session, on_failure=self._recording_failed)
        self.channels: list[ChannelRelay] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Resolved with the reason when either connection goes: the session's block returns then.
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._closing = False
        session.attach(sides=self, recording=self, warn=self.warn)

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
        self.session.kill_soon(reason)

    def _recording_failed(self, reason: str) -> None:
        """Fail closed: a session that cannot be recorded does not go on."""
        self.kill_soon(f"recording failed: {reason}")

    def warn(self, message: str) -> None:
        """The registry's warning (deadline near) on every terminal of this connection."""
        for relay in self.channels:
            relay.write_notice(message)
        self.recordings.marker(schema.warning_marker(message))

    def client_lost(self, exc: Exception | None) -> None:
        """The engineer's connection closed."""
        self._lost("client disconnected" if exc is None else f"client connection lost: {exc}")

    def upstream_lost(self, exc: Exception | None) -> None:
        """The target's connection closed under us."""
        if not self._closing:
            for relay in self.channels:
                relay.write_notice(f"connection to {self.session.target.name} lost")
        self._lost("upstream disconnected" if exc is None else f"upstream connection lost: {exc}")

    def _lost(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)

    async def close(self, reason: str) -> None:
        """The session's end: tell a killed engineer why, end the remote commands, close channels and
        both connections, then end what the session detached upstream."""
        if self._closing:
            return
        self._closing = True
        if self.session.killed:
            self.recordings.marker(schema.kill_marker(reason))
            for relay in self.channels:
                # A channel that is closing already (its command just exited) cannot take the notice; the
                # teardown below must run regardless.
                with contextlib.suppress(OSError):
                    relay.write_notice(f"{reason} - session closed")
        started = [r for r in self.channels if r.started]
        for relay in started:
            relay.stop_input()
        # The commands end first (TERM/HUP, then KILL), so their exit status or signal still reaches the engineer.
        await asyncio.gather(*(r.end_upstream() for r in self.channels if r.up is not None))
        for relay in started:
            relay.chan.close()
        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + CLOSE_GRACE
        waits = [r.chan.wait_closed() for r in started]
        waits += [r.up.wait_closed() for r in self.channels if r.up is not None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), CLOSE_GRACE)
        if all(r.closed for r in started):
            self.client.close()  # the client has written out every channel's output: a DISCONNECT loses nothing
        else:
            hang_up(self.client)  # a client that has not read yet still prints what was sent
        self._upstream.close()
        # One grace for the client in all: a client that does not read keeps the hang-up's data queued, and is
        # cut off when it is over (a moment is left for the closes to complete).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(self.client.wait_closed(), self._upstream.wait_closed()),
                                   max(grace_ends - loop.time(), CLOSE_GRACE / 10))  # fmt: skip
        self.client.abort()
        self.session.stats.update(channels=len(self.channels))
        policy = self.session.policy.ssh
        if policy is not None and policy.detached != "off":
            # Whatever the session detached (setsid nohup ... &) is ended by a sweep that takes a second
            # or more (a new login): it runs once the end is recorded, so a kill or revoke is seen at once.
            mode = policy.detached
            self.session.after_end(lambda: reap_after(self.session, mode=mode))

    async def seal(self, reason: str) -> str | None:
        """Seal every channel's recording; the session's recording hash."""
        return await self.recordings.close(reason)
