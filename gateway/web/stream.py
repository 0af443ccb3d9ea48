"""Live view: Server-Sent Events following a running session's recording as the recorder writes it.

The viewer reads the recording file, never the session: a slow or stuck browser cannot slow what it watches.
Each viewer has a bounded queue between its file follower and its socket: while the queue is full the
follower stops reading (the session writes on, unaware), and a viewer that takes nothing for STALL seconds
is dropped (the stream ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.recording import schema
from gateway.recording.reader import TerminalReader
from gateway.recording.schema import Statement
from gateway.web.core import Console, console, signed_in
from gateway.web.review import recording_file, visible_session
from gateway.web.websessions import WebSession

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

QUEUE = 256  # messages buffered for a viewer; when full, its reading of the file waits
STALL = 5.0  # a viewer whose full queue does not move for this long is dropped
POLL = 0.1  # how often the file is read for new lines
SETTLE = 1.0  # after the session ended, how long to wait for the recorder's last lines
MAX_VIEWERS = 100
CHUNK = 1 << 20
_viewers = 0


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE message (JSON data is one line: no newline can break the framing)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def _ended(c: Console, sid: str) -> bool:
    s = await c.api.services.store.get_session(sid)
    return s is None or s.ended_at is not None


async def terminal_messages(c: Console, sid: str, path: Path) -> AsyncIterator[bytes]:
    """The screen so far as the player's reset, then each output event as it is recorded."""
    warnings: list[str] = []
    with TerminalReader(path, warnings) as reader:
        backlog = reader.read()
        while reader.header is None:  # the recorder writes its header first; wait for it
            await asyncio.sleep(POLL)
            backlog += reader.read()
        head = reader.header
        last = max((e.t for e in backlog), default=0.0)
        init = "".join(e.data for e in backlog if e.code == "o")
        yield sse({"cols": head.width, "rows": head.height, "time": last, "init": init})
        async for batch in _follow(c, sid, reader.read):
            for e in batch:
                if e.code in ("o", "m"):  # never input: keystrokes may be secrets the terminal did not echo
                    yield sse([e.t, e.code, e.data])


async def sql_messages(c: Console, sid: str, path: Path) -> AsyncIterator[bytes]:
    """Each statement (verdict, rows, duration) as it is recorded, the earlier ones first."""
    version = schema.LEGACY_VERSION
    partial = b""
    # Local file reads of at most CHUNK appended bytes a poll: short enough to do on the loop.
    with open(path, "rb") as f:  # noqa: ASYNC230

        def read() -> list[Statement]:
            nonlocal partial, version
            out: list[Statement] = []
            *lines, partial = (partial + f.read(CHUNK)).split(b"\n")
            for line in lines:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(obj, dict):
                    continue
                if obj.get("type") == schema.HEADER:
                    version = schema.sql_header(obj).version
                    continue
                ev = schema.sql_event(obj, version)
                if isinstance(ev, Statement):
                    out.append(ev)
            return out

        async for batch in _follow(c, sid, read):
            for st in batch:
                verdict = "DENIED" if st.refused else st.verdict
                yield sse(
                    {"t": st.t, "sql": st.sql, "verdict": verdict, "rows": st.rows, "ms": st.duration_ms,
                     "reason": st.reason}
                )  # fmt: skip


async def _follow(c: Console, sid: str, read: Any) -> AsyncIterator[list[Any]]:
    """Batches of new records until the session has ended and the file stopped growing."""
    quiet = 0.0
    while True:
        batch = read()
        if batch:
            quiet = 0.0
            yield batch
            continue
        if quiet >= SETTLE and await _ended(c, sid):
            return
        await asyncio.sleep(POLL)
        quiet += POLL


@routes.get("/sessions/{id}/live")
@signed_in
async def live(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Follow a session's recording: asciinema-player's eventsource messages (SSH) or statements (Postgres)."""
    global _viewers
    c = console(request)
    s = await visible_session(c, ws.caller, request.match_info["id"])
    path = recording_file(c, s)
    if path is None:
        return c.render("error.html", ws, 404, message="this session has no recording to follow here")
    if _viewers >= MAX_VIEWERS:
        return c.render("error.html", ws, 503, message="too many live viewers; try again later")
    await c.api.services.store.append("console.watch", actor=ws.caller.name, session=s.id, target=s.target)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await resp.prepare(request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
    source = terminal_messages(c, s.id, path) if s.protocol == "ssh" else sql_messages(c, s.id, path)

    async def produce() -> None:
        # Waiting here only pauses this viewer's reading of the file (a burst of statements is more than
        # QUEUE messages at once); a viewer that takes none of them for STALL seconds is dropped.
        try:
            async for msg in source:
                await asyncio.wait_for(queue.put(msg), STALL)
            await asyncio.wait_for(queue.put(None), STALL)
        except TimeoutError:
            log.warning("live viewer %s of session %s dropped: it read nothing for %.0f s with %d messages waiting",
                        ws.caller.name, s.id, STALL, QUEUE)  # fmt: skip
            if request.transport is not None:
                request.transport.close()  # the handler's stuck write fails now, and its stream ends

    _viewers += 1
    producer = asyncio.create_task(produce())
    try:
        while (msg := await queue.get()) is not None:
            await resp.write(msg)
        await resp.write(b"event: done\ndata: {}\n\n")
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        _viewers -= 1
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
    return resp
