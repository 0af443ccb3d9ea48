"""Tamper detection on the PostgreSQL store (a real cluster): someone with owner rights drops the triggers and
edits, deletes, reorders, inserts or truncates; verification names the first bad record."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import Store
from gateway.store.chain import chain_hash, event_body
from gateway.tokens import KeyRing
from tests.rig.postgres import PgCluster
from tests.storekit import Backend

OFF = "ALTER TABLE audit DISABLE TRIGGER USER; ALTER TABLE checkpoints DISABLE TRIGGER USER; "


@pytest.fixture
async def chain(pg_cluster: PgCluster, tmp_path: Path) -> AsyncIterator[tuple[Backend, Store]]:
    backend = Backend("postgresql", tmp_path, pg_cluster)
    ring = KeyRing.load_or_create(tmp_path / "keys")
    s = await backend.make(ring, checkpoint_every=10, node="a").open()
    for i in range(25):
        await s.append("e", data={"i": i}, ts=1_700_000_000 + i)
    yield backend, s
    await s.close(checkpoint=False)


async def test_intact(chain: tuple[Backend, Store]) -> None:
    v = await chain[1].verify()
    assert v.ok and v.checked == 25 and v.last_checkpoint == 20


@pytest.mark.parametrize(
    ("attack", "words"),
    [
        ("UPDATE audit SET data='{\"i\": 99}' WHERE seq=5", "record #5: its content does not match its hash"),
        ("DELETE FROM audit WHERE seq=7", "expected record #7, found #8"),
        (
            "UPDATE audit a SET data=b.data, ts=b.ts, prev_hash=b.prev_hash, hash=b.hash FROM audit b "
            "WHERE (a.seq, b.seq) IN ((3, 4), (4, 3))",
            "record #3",
        ),
        ("DELETE FROM audit WHERE seq > 15; DELETE FROM checkpoints WHERE seq > 10", "truncated"),
        ("TRUNCATE audit", "truncated"),
        ("UPDATE audit SET node='b' WHERE seq=12", "record #12: its content does not match its hash"),
    ],
    ids=["edit", "delete", "reorder", "truncate-tail", "truncate-all", "forged-node"],
)
async def test_tampering_is_detected(chain: tuple[Backend, Store], attack: str, words: str) -> None:
    backend, store = chain
    await backend.raw(OFF + attack)
    v = await store.verify()
    assert not v.ok and words in v.describe(), v.describe()


async def test_inserted_rehashed_row_is_caught_by_the_checkpoint(chain: tuple[Backend, Store]) -> None:
    """Slip a well-hashed row in at #11 and rechain everything after it: the signed head at #20 disagrees."""
    backend, store = chain
    await backend.raw(
        OFF + "UPDATE audit SET seq = seq + 1000 WHERE seq >= 11; UPDATE audit SET seq = seq - 999 WHERE seq > 1000"
    )
    rows = await backend.raw("SELECT seq, ts, type, data, hash FROM audit ORDER BY seq")
    prev = rows[9][4]
    fixed = [(11, 1_700_000_010.5, "forged", '{"i": -1}')] + [(r[0], r[1], r[2], r[3]) for r in rows[10:]]
    await backend.raw("DELETE FROM audit WHERE seq >= 12")
    for seq, ts, type_, data in fixed:
        digest = chain_hash(prev, event_body(seq, ts, type_, "gateway", "", "", "", "info", json.loads(data), "a"))
        await backend.raw(
            "INSERT INTO audit VALUES "
            f"({seq}, {ts!r}, '{type_}', 'gateway', '', '', '', 'info', '{data}', '{prev}', '{digest}', 'a')"
        )
        prev = digest
    v = await store.verify()
    assert not v.ok and "does not match the signed checkpoint" in v.describe(), v.describe()
