"""Checkpoints in the C2SP tlog-checkpoint form, and the check that a store extends every anchored one (pure).

The body is `<origin>\\n<tree size>\\n<base64 root hash>\\n` plus one extension line `time <unix seconds>`.
Here the "tree" is the audit hash chain: the size is the number of events, the root hash the chain head
(`sha256(prev || event)` of event #size), so a store extends a checkpoint when its event #size has that hash.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Events appended concurrently with a checkpoint (or on a replica whose clock is a little behind) may be dated
# slightly before it; beyond this, an event after a checkpoint but dated before it was inserted after the fact.
CLOCK_SKEW = 30.0


class CheckpointError(ValueError):
    """Not a checkpoint body this gateway writes."""


@dataclass(frozen=True, slots=True)
class Anchor:
    """A signed checkpoint read back from a sink: the chain had `size` events with head `head` at `ts`."""

    origin: str
    size: int
    head: str  # hex, as the store keeps it
    ts: float
    source: str = ""  # the file or URL it came from, for messages


def body(origin: str, size: int, head_hex: str, ts: float) -> str:
    """The checkpoint text to sign."""
    if not origin or "\n" in origin:
        raise CheckpointError("origin must be one non-empty line")
    root = base64.b64encode(bytes.fromhex(head_hex)).decode()
    return f"{origin}\n{size}\n{root}\ntime {ts:.3f}\n"


def parse_body(text: str, source: str = "") -> Anchor:
    """The values of a checkpoint text; CheckpointError when it is not one."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckpointError("a checkpoint has an origin, a size and a root hash line")
    origin, size, root = lines[0], lines[1], lines[2]
    if not size.isascii() or not size.isdigit() or (size != "0" and size.startswith("0")):
        raise CheckpointError(f"tree size {size[:20]!r} is not a decimal number")
    try:
        head = base64.b64decode(root, validate=True).hex()
    except ValueError:
        raise CheckpointError("root hash is not base64") from None
    ts = None
    for ext in lines[3:-1]:
        if ext.startswith("time "):
            try:
                ts = float(ext[5:])
            except ValueError:
                raise CheckpointError("the time line is not a number") from None
    if ts is None:
        raise CheckpointError("the checkpoint has no time line")
    return Anchor(origin, int(size), head, ts, source)


@dataclass(frozen=True, slots=True)
class AnchorVerdict:
    """Does the store extend every anchor? If not, the first anchor it contradicts and how."""

    ok: bool
    anchors: int
    problem: str = ""
    contradicted: Anchor | None = None
    newest: Anchor | None = None
    unanchored: int = 0  # events after the newest anchor

    def describe(self) -> str:
        """One line for the CLI."""
        if not self.ok:
            return f"audit history CONTRADICTS an anchor: {self.problem}"
        if self.newest is None:
            return "anchors: none found (nothing outside the store vouches for its head)"
        n = self.newest
        tail = (
            "every event is anchored"
            if self.unanchored == 0
            else f"{self.unanchored} event(s) after it are not anchored yet"
        )
        return (
            f"anchors: the store extends all {self.anchors} anchored checkpoint(s); newest #{n.size}"
            f"{_utc(n.ts)}; {tail}"
        )


def _utc(ts: float) -> str:
    return time.strftime(" (%Y-%m-%d %H:%M:%S UTC)", time.gmtime(ts))


def check(
    hashes: Sequence[str], times: Sequence[float], anchors: Sequence[Anchor], skew: float = CLOCK_SKEW
) -> AnchorVerdict:
    """`hashes[i]`/`times[i]` are event #i+1's chain hash and time (the chain itself already verified).

    Anchors are taken oldest first; the first one the store does not extend is named: its size past the
    end of the store (truncated), a different hash at its size (rewritten), or an event after it dated
    more than `skew` before it (inserted after the fact, backdated).
    """
    ordered = sorted(anchors, key=lambda a: (a.size, a.ts))
    n = len(hashes)
    # min_after[k]: the earliest time among events k+1..n (those after an anchor of size k)
    min_after = [float("inf")] * (n + 1)
    for i in range(n - 1, -1, -1):
        min_after[i] = min(times[i], min_after[i + 1])
    for a in ordered:
        where = f"checkpoint #{a.size}{_utc(a.ts)}" + (f" from {a.source}" if a.source else "")
        if a.size > n:
            return AnchorVerdict(
                False, len(ordered), f"the store has {n} events but {where} covers {a.size} (truncated)", a
            )
        if a.size > 0 and hashes[a.size - 1] != a.head:
            return AnchorVerdict(
                False,
                len(ordered),
                f"record #{a.size} does not have the head hash of {where} (history rewritten up to #{a.size})",
                a,
            )
        if min_after[a.size] < a.ts - skew:
            j = next(i for i in range(a.size, n) if times[i] < a.ts - skew)
            return AnchorVerdict(
                False,
                len(ordered),
                f"record #{j + 1} is dated{_utc(times[j])}, before {where}, but is not in it (inserted after the fact)",
                a,
            )
    newest = ordered[-1] if ordered else None
    return AnchorVerdict(True, len(ordered), newest=newest, unanchored=n - (newest.size if newest else 0))
