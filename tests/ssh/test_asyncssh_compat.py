"""asyncssh's internals that gateway/ssh/asyncssh_compat.py overrides: fails loudly when an upgrade changes them."""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

from gateway.ssh import asyncssh_compat
from gateway.ssh.asyncssh_compat import AGENT_HANDLER, X11_HANDLER, AuditedChannel, check_internals


def test_asyncssh_internals_are_as_expected() -> None:
    problems = check_internals()
    assert problems == [], (
        f"asyncssh {importlib.metadata.version('asyncssh')} changed what {asyncssh_compat.__name__} relies on: "
        f"{problems}; agent/X11 requests would no longer be audited. Look for a public hook, or adapt the overrides."
    )


def test_the_overrides_replace_asyncssh_handlers() -> None:
    for name in (AGENT_HANDLER, X11_HANDLER):
        assert name in vars(AuditedChannel), name  # defined here, so asyncssh's own is not what runs


def test_check_names_what_changed(monkeypatch: object) -> None:
    import asyncssh
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.delattr(asyncssh.SSHServerChannel, X11_HANDLER)
        mp.setattr(asyncssh.SSHServerChannel, AGENT_HANDLER, lambda self, packet, extra: None)
        problems = check_internals()
    finally:
        mp.undo()
    assert any("_process_x11_req_request is gone" in p for p in problems), problems
    assert any("expected (self, packet)" in p for p in problems), problems


async def test_corked_transport_sends_one_pass_in_one_writelines() -> None:
    """Real sockets: the writes of one loop pass arrive in order and reach the transport as one call."""
    import asyncio

    from gateway.ssh.asyncssh_compat import CorkedTransport

    got = bytearray()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.extend(await reader.read(-1))
        done.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    real = writer.transport
    calls: list[int] = []
    writelines = real.writelines

    def counting(data: Any) -> None:
        data = list(data)
        calls.append(len(data))
        writelines(data)

    real.writelines = counting  # type: ignore[method-assign,assignment]
    corked = CorkedTransport(real, asyncio.get_running_loop())
    for i in range(10):
        corked.write(b"%d," % i)
    assert calls == [] and corked.get_write_buffer_size() >= 20
    await asyncio.sleep(0)
    assert calls == [10]
    corked.write(b"last")
    corked.close()  # queued data goes before the close
    await asyncio.wait_for(done.wait(), 5)
    assert bytes(got) == b"0,1,2,3,4,5,6,7,8,9,last"
    server.close()
    await server.wait_closed()


def test_check_notices_when_send_stops_using_the_transport() -> None:
    import asyncssh
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(asyncssh.connection.SSHConnection, "_send", lambda self, data: None)
        problems = check_internals()
    finally:
        mp.undo()
    assert any("no longer writes to self._transport" in p for p in problems), problems


def test_fast_saslprep_matches_asyncssh_on_ascii_and_defers_the_rest() -> None:
    """Every ASCII character and some tokens: the same result (or the same refusal) as asyncssh's SASLprep."""
    import asyncssh.saslprep

    odd = ["", "a b", "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.sig-_~", "x\x7f", "caf\u00e9", "a\u00adb", "\u2163",
           "a\u3000b", "\u0627", "a\x00"]  # fmt: skip
    samples = [chr(c) for c in range(128)] + odd
    for s in samples:
        try:
            want: str | type[Exception] = asyncssh.saslprep.saslprep(s)
        except asyncssh.saslprep.SASLPrepError:
            want = asyncssh.saslprep.SASLPrepError
        try:
            got: str | type[Exception] = asyncssh_compat.ascii_saslprep(s)
        except asyncssh.saslprep.SASLPrepError:
            got = asyncssh.saslprep.SASLPrepError
        assert got == want, repr(s)


def test_fast_saslprep_is_what_asyncssh_calls_on_passwords() -> None:
    import asyncssh.auth

    assert asyncssh_compat.install_fast_saslprep()
    assert asyncssh.auth.saslprep is asyncssh_compat.ascii_saslprep  # type: ignore[attr-defined]


async def test_lazy_event_behaves_as_asyncio_event() -> None:
    from gateway.ssh.asyncssh_compat import LazyEvent

    ev = LazyEvent()
    assert not ev.is_set() and ev._waiters == () and "unset" in repr(ev)
    ev.set()  # nobody waiting: nothing made
    assert ev.is_set() and await ev.wait() is True and ev._waiters == ()
    ev.clear()
    waiters = [asyncio.create_task(ev.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(ev._waiters) == 3
    ev.set()
    assert await asyncio.gather(*waiters) == [True] * 3 and len(ev._waiters) == 0


async def test_lazy_close_event_swaps_only_an_untouched_event() -> None:
    from gateway.ssh.asyncssh_compat import LazyEvent, lazy_close_event

    class Holder:
        def __init__(self) -> None:
            self._close_event = asyncio.Event()

    fresh, waited, done = Holder(), Holder(), Holder()
    task = asyncio.create_task(waited._close_event.wait())
    await asyncio.sleep(0)
    done._close_event.set()
    assert lazy_close_event(fresh) and isinstance(fresh._close_event, LazyEvent)
    assert not lazy_close_event(waited) and not lazy_close_event(done) and not lazy_close_event(object())
    waited._close_event.set()
    assert await task is True
