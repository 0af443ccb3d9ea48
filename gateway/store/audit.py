"""What both backends share about the audit chain: rows to verify, the checkpoint side file, the verdict."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from gateway.store.chain import Checkpoint, Row, Verdict, event_body, verify_chain
from gateway.store.records import AuditEvent
from gateway.store.schema import read_checkpoint_file
from gateway.tokens import KeyRing


def chain_row(e: AuditEvent) -> Row:
    """The hashed body of a stored event, as verification recomputes it."""
    body = event_body(e.seq, e.ts, e.type, e.actor, e.session, e.grant, e.target, e.severity, e.data, e.node)
    return Row(body, e.prev_hash, e.hash)


def mirror_checkpoint(path: Path | None, cp: Checkpoint) -> None:
    """Append a checkpoint to the side file, so deleting rows and their checkpoints in the store still
    leaves a signed head outside it."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = json.dumps({"seq": cp.seq, "head": cp.head, "kid": cp.kid, "signature": cp.signature, "ts": cp.ts})
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def judge(
    events: Iterable[AuditEvent], stored: Iterable[Checkpoint], side_file: Path | None, ring: KeyRing | None
) -> Verdict:
    """Verify events in stored order against every checkpoint, the store's and the side file's."""
    cps = {(cp.seq, cp.head): cp for cp in stored}
    for cp in read_checkpoint_file(side_file) if side_file is not None else ():
        cps.setdefault((cp.seq, cp.head), cp)
    return verify_chain((chain_row(e) for e in events), cps.values(), ring.verify_bytes if ring else (lambda *_: False))
