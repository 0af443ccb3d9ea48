"""Read anchors back (a folder or a URL) and check that the store extends every one of them."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import aiohttp

from gateway.anchors import checkpoint, note
from gateway.anchors.checkpoint import Anchor, AnchorVerdict
from gateway.store import Store
from gateway.tokens import KeyRing

MAX_FETCH = 64 << 20
# A bundle of notes (a witness's log, a concatenated download): each note ends with its signature lines.
_NOTE = re.compile(r".+?\n\n(?:\u2014 [^\n]*\n)+", re.DOTALL)


class AnchorSourceError(ValueError):
    """The anchors could not be read, or one of them is not a valid signed checkpoint of this gateway."""


def split_notes(text: str) -> list[str]:
    """The signed notes in a text (one, or several one after another)."""
    notes = [m.group(0) for m in _NOTE.finditer(text)]
    if "".join(notes).strip() != text.strip():
        raise AnchorSourceError("the text is not a sequence of signed notes")
    return notes


async def read_source(where: str) -> list[tuple[str, str]]:
    """(source name, note text) for every anchor in a folder (`*.checkpoint`) or at an http(s) URL."""
    if where.startswith(("http://", "https://")):
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
                http.get(where) as resp,
            ):
                if resp.status != 200:
                    raise AnchorSourceError(f"{where}: HTTP {resp.status}")
                raw = await resp.content.read(MAX_FETCH + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AnchorSourceError(f"cannot fetch anchors from {where}: {type(exc).__name__}") from None
        if len(raw) > MAX_FETCH:
            raise AnchorSourceError(f"{where}: more than {MAX_FETCH} bytes")
        return [(f"{where} #{i + 1}", n) for i, n in enumerate(split_notes(raw.decode("utf-8", "replace")))]
    return await asyncio.to_thread(_read_folder, Path(where))


def _read_folder(folder: Path) -> list[tuple[str, str]]:
    if not folder.is_dir():
        raise AnchorSourceError(f"{folder}: no such folder (give a folder of .checkpoint files or an http(s) URL)")
    return [(str(p), p.read_text(encoding="utf-8", errors="replace")) for p in sorted(folder.glob("*.checkpoint"))]


def parse_anchors(sources: list[tuple[str, str]], origin: str, ring: KeyRing) -> list[Anchor]:
    """Verified anchors; AnchorSourceError naming the first one that is not this gateway's valid checkpoint."""
    keys = ring.public_keys()
    out = []
    for source, text in sources:
        try:
            signed = note.verify(text, origin, keys)
            anchor = checkpoint.parse_body(signed.text, source)
        except (note.NoteError, checkpoint.CheckpointError) as exc:
            raise AnchorSourceError(f"{source}: {exc}") from None
        if anchor.origin != origin:
            raise AnchorSourceError(f"{source}: a checkpoint of {anchor.origin!r}, not of {origin!r}")
        out.append(replace(anchor, source=source))
    return out


async def verify_anchors(store: Store, anchors: list[Anchor]) -> AnchorVerdict:
    """Whether the store (its chain already verified) extends every anchor."""
    events = await store.events()
    return checkpoint.check([e.hash for e in events], [e.ts for e in events], anchors)
