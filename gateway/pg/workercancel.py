"""CancelRequests across the workers of one gateway: the key names its worker, a wrong worker forwards it.

A cancel arrives on a new connection, and SO_REUSEPORT hands that connection to any worker; only the worker
whose relay issued the key can act on it. So the low byte of the BackendKeyData process id is the issuing
worker's index, and each worker takes forwarded cancels on a Unix socket in the supervisor's private folder
(pgbouncer's so_reuseport mode has the same problem and solves it with peering).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections.abc import Callable
from pathlib import Path

from gateway.config import WorkerSlot
from gateway.pg.messages import CANCEL_REQUEST_CODE, CancelRequest
from gateway.pg.startup import Cancel

log = logging.getLogger(__name__)

_PACKET = struct.Struct("!IIii")
FORWARD_TIMEOUT = 2.0


def new_process_id(worker: WorkerSlot | None) -> int:
    """A random positive 31-bit process id; a worker's carries its index in the low byte."""
    if worker is None:
        return secrets.randbits(31) or 1
    return ((secrets.randbits(23) or 1) << 8) | worker.index


def owner(worker: WorkerSlot | None, process_id: int) -> int | None:
    """The index of the other worker that issued this key; None when it is ours or no worker's."""
    if worker is None or worker.count < 2:
        return None
    index = process_id & 0xFF
    return index if index != worker.index and index < worker.count else None


def inbox_path(run_dir: Path, index: int) -> Path:
    """Where worker `index` takes forwarded cancels."""
    return run_dir / f"pg-cancel-{index}.sock"


async def forward(worker: WorkerSlot, index: int, cancel: Cancel) -> None:
    """Hand the cancel to the worker that owns its key (best effort, as a cancel always is)."""
    packet = CancelRequest(cancel.process_id, cancel.secret_key).encode()
    try:
        async with asyncio.timeout(FORWARD_TIMEOUT):
            _, writer = await asyncio.open_unix_connection(str(inbox_path(worker.run_dir, index)))
            writer.write(packet)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.warning("could not forward a cancel request to worker %d: %s", index, type(exc).__name__)


class Inbox(asyncio.Protocol):
    """One forwarded cancel: exactly one 16-byte CancelRequest, then the connection closes."""

    def __init__(self, on_cancel: Callable[[Cancel], None]) -> None:
        self.on_cancel = on_cancel
        self.buf = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < _PACKET.size:
            return
        length, code, pid, key = _PACKET.unpack_from(self.buf)
        if length == _PACKET.size and code == CANCEL_REQUEST_CODE and len(self.buf) == _PACKET.size:
            self.on_cancel(Cancel(pid, key))
        assert self.transport is not None
        self.transport.close()
