"""The audit hash chain as pure functions: hash an event, verify a sequence of rows and checkpoints."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8; the form that is hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_body(
    seq: int,
    ts: float,
    type_: str,
    actor: str,
    session: str,
    grant: str,
    target: str,
    severity: str,
    data: Mapping[str, Any],
    node: str = "",
) -> dict[str, Any]:
    """The hashed content of an audit row (everything but the hashes)."""
    body = {
        "seq": seq,
        "ts": ts,
        "type": type_,
        "actor": actor,
        "session": session,
        "grant": grant,
        "target": target,
        "severity": severity,
        "data": dict(data),
    }
    # The writing replica is hashed too, but only when there is one: events written before replicas
    # existed keep the body (and so the hash) they were written with.
    if node:
        body["node"] = node
    return body


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """sha256(prev_hash || canonical JSON of the event)."""
    return hashlib.sha256(prev_hash.encode() + canonical_json(body)).hexdigest()


def checkpoint_message(seq: int, head: str) -> bytes:
    """What a checkpoint signs: the sequence number and the head hash at that point."""
    return f"gateway-audit-checkpoint:{seq}:{head}".encode()


@dataclass(frozen=True, slots=True)
class Row:
    """One stored audit row, as read back."""

    body: dict[str, Any]
    prev_hash: str
    hash: str

    @property
    def seq(self) -> int:
        return int(self.body["seq"])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed head: the chain up to `seq` hashed to `head`."""

    seq: int
    head: str
    kid: str
    signature: str
    ts: float


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of a chain verification: ok, or the first bad record and why."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str = ""
    last_checkpoint: int | None = None
    last_checkpoint_ts: float | None = None

    @property
    def unsigned_tail(self) -> int:
        """How many events come after the last signed checkpoint (covered only by the unkeyed chain)."""
        return self.checked - (self.last_checkpoint or 0)

    def describe(self) -> str:
        """One line for the CLI, saying exactly what was proven and what was not."""
        if not self.ok:
            where = f"record #{self.first_bad_seq}" if self.first_bad_seq is not None else "chain"
            return f"audit chain BROKEN at {where}: {self.problem}"
        head = f"audit chain intact: {self.checked} events"
        if self.checked == 0:
            return head
        # The hash chain is unkeyed: whoever can write the store can rewrite rows and recompute it. Only a
        # signed checkpoint binds events to the gateway's key, so say which events one covers.
        if self.last_checkpoint is None:
            return (
                f"{head}; no signed checkpoint: none of them is covered by a signature "
                "(deleting or rewriting them is not detected)"
            )
        when = _utc(self.last_checkpoint_ts)
        cp = f"last signed checkpoint at event #{self.last_checkpoint}{when}"
        if self.unsigned_tail == 0:
            return f"{head}; {cp}: every event is covered by a signature"
        return (
            f"{head}; {cp}; events after #{self.last_checkpoint} ({self.unsigned_tail} of them) are not covered "
            "by a signature (deleting or rewriting them is not detected)"
        )


def _utc(ts: float | None) -> str:
    return "" if ts is None else time.strftime(" (%Y-%m-%d %H:%M:%S UTC)", time.gmtime(ts))


def verify_chain(
    rows: Iterable[Row], checkpoints: Iterable[Checkpoint], verify_sig: Callable[[str, str, bytes], bool]
) -> Verdict:
    """Walk rows in stored order; detect edits, deletions, reordering, insertions, and truncation up to the last
    signed checkpoint (rows after it are covered only by the unkeyed chain: see Verdict.describe)."""
    prev = GENESIS
    expected_seq = 1
    heads: dict[int, str] = {}
    count = 0
    for row in rows:
        count += 1
        seq = row.seq
        if seq != expected_seq:
            kind = "deleted or missing" if seq > expected_seq else "duplicated or reordered"
            return Verdict(
                False, count, expected_seq, f"expected record #{expected_seq}, found #{seq} ({kind} records)"
            )
        if row.prev_hash != prev:
            return Verdict(
                False, count, seq, "its prev_hash does not match the record before it (inserted, deleted or reordered)"
            )
        if chain_hash(prev, row.body) != row.hash:
            return Verdict(False, count, seq, "its content does not match its hash (edited)")
        heads[seq] = row.hash
        prev = row.hash
        expected_seq += 1
    last_cp: Checkpoint | None = None
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if not verify_sig(cp.kid, cp.signature, checkpoint_message(cp.seq, cp.head)):
            return Verdict(False, count, cp.seq, f"checkpoint at #{cp.seq} has an invalid signature")
        if cp.seq not in heads:
            return Verdict(
                False,
                count,
                expected_seq,
                f"the chain ends at #{expected_seq - 1} but a signed checkpoint covers #{cp.seq} (truncated)",
            )
        if heads[cp.seq] != cp.head:
            return Verdict(False, count, cp.seq, f"record #{cp.seq} does not match the signed checkpoint")
        last_cp = cp
    if last_cp is None:
        return Verdict(True, count)
    return Verdict(True, count, last_checkpoint=last_cp.seq, last_checkpoint_ts=last_cp.ts)
