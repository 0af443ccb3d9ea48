"""A session held open as a front end holds it: a task enters `access.session(...)` and waits in the block."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.access import Access
from gateway.sessions import LiveSession

_held: dict[LiveSession, tuple[asyncio.Event, asyncio.Task[None]]] = {}


async def hold(access: Access, **request: Any) -> LiveSession:
    """Admit and keep the session's block open until `release` (or a kill cancels it); raises AccessDenied."""
    request.setdefault("client_addr", "127.0.0.1:1")
    entered: asyncio.Future[LiveSession] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def block() -> None:
        async with access.session(**request) as s:
            entered.set_result(s)
            await release.wait()

    task = asyncio.ensure_future(block())
    await asyncio.wait([entered, task], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    if not entered.done():
        task.result()  # the admission's refusal
        raise AssertionError("the block returned without a session")
    s = entered.result()
    _held[s] = (release, task)
    return s


async def release(s: LiveSession, reason: str) -> None:
    """Leave the session's block as a client leaving would, and wait for its end."""
    event, task = _held.pop(s)
    s.ending(reason)
    event.set()
    await task


async def ended(s: LiveSession) -> None:
    """Wait until the session's block has exited (after a kill)."""
    _, task = _held.pop(s)
    await task
