"""The one place that leans on asyncssh's internals: auditing agent and X11 requests, corking socket writes.

asyncssh answers these session channel requests inside the channel, with no application hook (there is
none in ``SSHServerSession`` nor ``SSHServer``), and its server grants agent forwarding by default. The
listener turns both off with public options (``agent_forwarding=False``, ``x11_forwarding=False``), so
asyncssh refuses them whatever happens here; this module adds the audit record (and a second refusal) by
overriding asyncssh's private per-request handlers on the channel. `check_internals` says whether those
internals still look as expected; ``tests/ssh/test_asyncssh_compat.py`` fails loudly on an asyncssh
upgrade that changes them, and the listener logs it at start.

Corking: asyncssh writes every packet to its transport as it is made (``SSHConnection._send``), and sends an
``MSG_IGNORE`` before each one, so a relayed 256 KiB read becomes ~16 ``send()`` calls on the other leg,
each running loopback TCP in the sender's context (the largest single cost of the relay in py-spy, see
docs/benchmarks.md, SSH). `cork` swaps the connection's transport for a `CorkedTransport` that gathers the
writes of one event-loop pass and hands them to the real transport in one ``writelines`` (one ``writev``).

Idle memory: every asyncssh connection and channel holds an ``asyncio.Event`` (``_close_event``), and each
Event builds its waiters' deque (~760 bytes) at once, though nobody waits on most of them; four of them a
session. `lazy_close_event` swaps an untouched one for a `LazyEvent`, whose deque comes with its first waiter.

SASLprep: asyncssh runs RFC 4013 SASLprep over every password it receives, a pure-Python pass per character
(~1.1 ms for a 900-character approval token, on the set-up path of every password login).
`install_fast_saslprep` puts a printable-ASCII fast path in front of it (the identity there); anything
else still goes through asyncssh's own.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from typing import Any, Literal, cast

import asyncssh
import asyncssh.auth
import asyncssh.saslprep

from gateway.sessions import LiveSession

AGENT_HANDLER = "_process_auth_agent_req_at_openssh_dot_com_request"
X11_HANDLER = "_process_x11_req_request"
SEND = "_send"
"""asyncssh writes each packet with ``self._transport.write(data)`` here (what `cork` batches)."""
DISPATCH = "_service_next_request"
"""asyncssh calls ``_process_<request type>_request(packet)`` from here and reports a bool result itself."""


def check_internals() -> list[str]:
    """What no longer matches the asyncssh internals this module overrides (empty: all as expected)."""
    problems: list[str] = []
    chan = asyncssh.SSHServerChannel
    for name in (AGENT_HANDLER, X11_HANDLER):
        fn = getattr(chan, name, None)
        if fn is None or not callable(fn):
            problems.append(f"asyncssh.SSHServerChannel.{name} is gone")
            continue
        params = list(inspect.signature(fn).parameters)
        if params != ["self", "packet"]:
            problems.append(f"asyncssh.SSHServerChannel.{name}{tuple(params)}: expected (self, packet)")
    dispatch = getattr(asyncssh.channel.SSHChannel, DISPATCH, None)
    if dispatch is None:
        problems.append(f"asyncssh.channel.SSHChannel.{DISPATCH} is gone")
    else:
        source = inspect.getsource(dispatch)
        if "_process_" not in source or "_request" not in source:
            problems.append(f"asyncssh.channel.SSHChannel.{DISPATCH} no longer dispatches to _process_*_request")
    send = getattr(asyncssh.connection.SSHConnection, SEND, None)
    if send is None or "self._transport.write(" not in inspect.getsource(send):
        problems.append(f"asyncssh.connection.SSHConnection.{SEND} no longer writes to self._transport")
    auth_prep = getattr(asyncssh.auth, "saslprep", None)
    if auth_prep not in (asyncssh.saslprep.saslprep, ascii_saslprep):
        problems.append("asyncssh.auth no longer calls asyncssh.saslprep.saslprep on passwords")
    create = getattr(asyncssh.SSHServerConnection, "create_server_channel", None)
    if create is None:
        problems.append("asyncssh.SSHServerConnection.create_server_channel is gone")
    for cls in (asyncssh.connection.SSHConnection, asyncssh.channel.SSHChannel):
        if "self._close_event = asyncio.Event()" not in inspect.getsource(cls.__init__):
            problems.append(f"{cls.__name__} no longer makes its _close_event as expected (LazyEvent)")
    if set(vars(asyncio.Event)) - {"__init__", "__repr__", "__doc__", "__module__", "is_set", "set", "clear", "wait"}:
        problems.append("asyncio.Event has members LazyEvent does not expect")
    if chan.__dictoffset__ == 0:  # the swapped-in class keeps the session in the instance's __dict__
        problems.append("asyncssh.SSHServerChannel uses __slots__: a channel can no longer carry its session")
    return problems


_SASLPREP = asyncssh.saslprep.saslprep


def ascii_saslprep(s: str) -> str:
    """SASLprep with a fast path: printable ASCII (0x20-0x7e) is left as it is by RFC 4013's every step
    (nothing mapped, NFKC-stable, none prohibited, no bidi characters, all assigned)."""
    if s.isascii() and s.isprintable():
        return s
    return _SASLPREP(s)


def install_fast_saslprep() -> bool:
    """Use `ascii_saslprep` for the passwords asyncssh receives; False when asyncssh no longer looks as expected."""
    if getattr(asyncssh.auth, "saslprep", None) not in (_SASLPREP, ascii_saslprep):
        return False
    asyncssh.auth.saslprep = ascii_saslprep  # type: ignore[attr-defined]
    return True


class AuditedChannel(asyncssh.SSHServerChannel[bytes]):
    """An SSHServerChannel whose agent and X11 forwarding requests are refused and audited.

    No new state beyond the session: it is adopted by swapping ``__class__`` on the channel asyncssh built,
    so asyncssh's constructor stays its own business.
    """

    _gw_session: LiveSession

    @classmethod
    def adopt(cls, chan: asyncssh.SSHServerChannel[bytes], session: LiveSession) -> AuditedChannel:
        """Turn a channel made by ``create_server_channel`` into an audited one."""
        chan.__class__ = cls
        lazy_close_event(chan)
        audited = cast(AuditedChannel, chan)
        audited._gw_session = session
        return audited

    # asyncssh reports a handler's bool result itself (DISPATCH); its own agent handler returns None only
    # because it answers later, from a task.
    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: Any) -> bool:  # type: ignore[override]
        """ssh -A: the engineer's agent is never exposed to the target."""
        packet.check_end()
        self._gw_session.audit_soon("ssh.forward", severity="warning", kind="agent", allowed=False)
        return False

    def _process_x11_req_request(self, packet: Any) -> bool:
        """ssh -X / -Y: refused."""
        self._gw_session.audit_soon("ssh.forward", severity="warning", kind="x11", allowed=False)
        return False


class LazyEvent(asyncio.Event):
    """An `asyncio.Event` whose waiters' deque is made by the first `wait` (none for an event nobody awaits)."""

    _waiters: Any = ()  # what `set` iterates and `repr` counts until someone waits

    def __init__(self) -> None:
        self._value = False  # asyncio.Event.__init__ without the deque (its loop check is for the loop= argument)

    async def wait(self) -> Literal[True]:
        """As `asyncio.Event.wait`, with the deque made first."""
        if not self._value and type(self._waiters) is tuple:
            self._waiters = collections.deque()
        return await super().wait()


def lazy_close_event(obj: Any) -> bool:
    """Swap an asyncssh connection's or channel's untouched ``_close_event`` for a `LazyEvent`."""
    event = getattr(obj, "_close_event", None)
    if type(event) is not asyncio.Event or event.is_set() or event._waiters:
        return False
    obj._close_event = LazyEvent()
    return True


class CorkedTransport:
    """A transport whose writes within one event-loop pass go out together (everything else delegated)."""

    __slots__ = ("_loop", "_out", "_t")

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._out: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue `data`; the first write of a pass schedules the flush (after this pass's callbacks)."""
        if not self._out:
            self._loop.call_soon(self.flush)
        self._out.append(data)

    def flush(self) -> None:
        """Hand the queued writes to the real transport, in order, in one call."""
        out, self._out = self._out, []
        if out and not self._t.is_closing():
            self._t.writelines(out)

    def get_write_buffer_size(self) -> int:
        """The real transport's buffer plus what is queued here."""
        return self._t.get_write_buffer_size() + sum(map(len, self._out))

    def write_eof(self) -> None:
        """Queued data first."""
        self.flush()
        self._t.write_eof()

    def close(self) -> None:
        """Queued data first (a disconnect message is usually among it)."""
        self.flush()
        self._t.close()

    def abort(self) -> None:
        """As the real transport's abort, after handing over what is queued (as uncorked writes would have)."""
        self.flush()
        self._t.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


def cork(conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection) -> None:
    """Batch `conn`'s packet writes per event-loop pass, and make its close event lazy (from connection_made)."""
    transport = getattr(conn, "_transport", None)
    # uvloop's transports are not asyncio.Transport subclasses: what matters is that writelines exists.
    if transport is not None and not isinstance(transport, CorkedTransport) and hasattr(transport, "writelines"):
        conn._transport = CorkedTransport(transport, asyncio.get_running_loop())  # type: ignore[assignment]
    lazy_close_event(conn)


def hang_up(conn: asyncssh.SSHServerConnection) -> None:
    """Close `conn`'s TCP connection once what is queued has been sent, without an SSH disconnect message.

    OpenSSH acts on a DISCONNECT as soon as it parses it, dropping channel output it has read but not yet
    written: a client that was not scheduled while the gateway ended its session reads the output, the
    notice and the DISCONNECT in one go and prints none of them. A plain close reaches it after the output.
    asyncssh then sees the connection lost as usual.
    """
    transport = getattr(conn, "_transport", None)  # a CorkedTransport: its close sends what is queued first
    if transport is not None and not transport.is_closing():
        transport.close()
