"""Publish every signed checkpoint outside the store: a folder (WORM-able), HTTP webhooks, the alert webhooks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.alerts import Sink
from gateway.anchors import checkpoint, note
from gateway.config import AnchorSettings
from gateway.store import Store
from gateway.store.chain import Checkpoint
from gateway.tokens import KeyRing

log = logging.getLogger(__name__)

SUFFIX = ".checkpoint"
WEBHOOK_ATTEMPTS = 3


def file_name(size: int) -> str:
    """One file per checkpoint, sorting in chain order."""
    return f"{size:016d}{SUFFIX}"


def signed_checkpoint(ring: KeyRing, origin: str, cp: Checkpoint) -> str:
    """The C2SP signed note of a store checkpoint, signed with the gateway's active key."""
    public = ring.public_key(ring.active_kid)
    if public is None:
        raise ValueError("the active signing key has no public key")

    def signer(data: bytes) -> bytes:
        sig = ring.sign_bytes(data)[1]
        return base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))

    return note.sign_with(checkpoint.body(origin, cp.seq, cp.head, cp.ts), origin, public, signer)


class Anchorer:
    """Turn store checkpoints into signed notes and publish them; a timer adds time-based checkpoints."""

    def __init__(
        self,
        settings: AnchorSettings,
        origin: str,
        ring: KeyRing,
        store: Store,
        *,
        alert_sinks: list[Sink] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.origin = origin
        self.ring = ring
        self.store = store
        self.alert_sinks = alert_sinks if alert_sinks is not None else []
        self.clock = clock
        self.published = self._newest_in_folder()
        self.failing: set[str] = set()  # webhooks whose last delivery failed (audited once per outage)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"Anchorer({self.origin!r}, folder={self.settings.folder}, webhooks={len(self.settings.webhooks)})"

    def _newest_in_folder(self) -> int:
        folder = self.settings.folder
        if folder is None or not folder.is_dir():
            return 0
        sizes = [int(p.name[: -len(SUFFIX)]) for p in folder.glob("*" + SUFFIX) if p.name[: -len(SUFFIX)].isdigit()]
        return max(sizes, default=0)

    async def publish(self, cp: Checkpoint) -> None:
        """The store's checkpoint listener: sign, write the file, queue the webhooks (never raises)."""
        if cp.seq <= self.published:
            return  # the same head again (a shutdown right after a count-based checkpoint)
        try:
            signed = signed_checkpoint(self.ring, self.origin, cp)
            if self.settings.folder is not None:
                await asyncio.to_thread(_write_once, self.settings.folder / file_name(cp.seq), signed)
        except (OSError, ValueError) as exc:
            log.error("audit checkpoint #%d could not be anchored: %s", cp.seq, exc)
            return
        self.published = cp.seq
        for url in self.settings.webhooks:
            task = asyncio.ensure_future(self._post(url, cp.seq, signed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.settings.alert_webhooks:
            alert: dict[str, Any] = {
                "type": "audit.checkpoint",
                "severity": "info",
                "summary": f"audit checkpoint #{cp.seq} of {self.origin}",
                "ts": cp.ts,
                "actor": "gateway",
                "session": "",
                "grant": "",
                "target": "",
                "audit_seq": cp.seq,
                "data": {"checkpoint": signed, "size": cp.seq, "head": cp.head},
            }
            for sink in self.alert_sinks:
                sink.offer(alert)  # not audited: this is the audit log's own head, not an event in it

    async def _post(self, url: str, size: int, signed: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                headers = {"Content-Type": "text/plain; charset=utf-8", "X-Gateway-Checkpoint": str(size)}
                async with self._session.post(url, data=signed.encode(), headers=headers) as resp:
                    if resp.status < 300:
                        if url in self.failing:
                            self.failing.discard(url)
                            log.warning("anchor webhook %s delivers again", url)
                        return
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = type(exc).__name__
            await asyncio.sleep(0.5 * 2**attempt)
        log.error("anchor webhook %s: checkpoint #%d not delivered (%s)", url, size, why)
        if url not in self.failing:
            self.failing.add(url)
            # Once per outage: an event per failure would itself need anchoring, and fail again.
            await self.store.append(
                "audit.anchor_failed", severity="warning", data={"webhook": url, "size": size, "error": why}
            )

    async def tick(self, now: float) -> None:
        """A time-based checkpoint when events arrived since the last one (the scheduler runs this every
        `interval`; the count-based ones go on); a failure is logged by the scheduler."""
        head = await self.store.head()
        if head is not None and head[0] > self.published:
            await self.store.checkpoint()

    async def close(self, grace: float = 3.0) -> None:
        """Let queued webhook deliveries finish (briefly), then close the HTTP client."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), grace)
        for t in list(self._tasks):
            t.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _write_once(path: Path, text: str) -> None:
    """Create the file (never overwrite: a WORM folder refuses that anyway) and make it durable."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
