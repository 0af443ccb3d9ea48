"""Tamper detection on a real SQLite file: edits, deletions, reordering, forgeries, truncation, forged checkpoints.

Every scenario is checked twice: `store.verify()` names the first bad record, and `gateway audit verify`
exits non-zero and prints it. Recordings are checked against the hash in their `session.end` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.store import SqliteStore
from gateway.store.chain import (
    GENESIS,
    Checkpoint,
    Row,
    Verdict,
    chain_hash,
    checkpoint_message,
    event_body,
    verify_chain,
)
from gateway.tokens import KeyRing

T = TypeVar("T")
EVENTS = 250  # checkpoint_every = 100 (the init default): checkpoints at 100, 200 and 250 (on close)
ROOT = Path(__file__).resolve().parents[1]


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop in a worker thread (these tests are synchronous
    because the CLI runs its own event loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def open_store(home: Path, *, ring: KeyRing | None = None) -> SqliteStore:
    config = load_config(home / "gateway.toml", need_secrets=False)
    ring = ring or KeyRing.load_or_create(config.keys_dir)
    return SqliteStore(config.store_path, ring, checkpoint_every=config.checkpoint_every)


async def _populate(home: Path) -> None:
    store = await open_store(home).open()
    for i in range(EVENTS):
        await store.append(
            "test.event",
            actor=f"user{i % 7}",
            session=f"s{i // 10}",
            target="orders-db",
            data={"i": i, "text": f"event number {i}"},
            ts=1_700_000_000 + i,
        )
    await store.close()  # signs the head (#250)


async def _verify(home: Path) -> Verdict:
    store = await open_store(home).open()
    try:
        return await store.verify()
    finally:
        await store.close(checkpoint=False)


def db_path(home: Path) -> Path:
    return home / "var" / "gateway.db"


def sql(home: Path, script: str, *params: Any) -> None:
    """Tamper with the closed database file as an attacker with file access would."""
    con = sqlite3.connect(db_path(home))
    try:
        if params:
            con.execute(script, params)
        else:
            con.executescript(script)
        con.commit()
    finally:
        con.close()


def row(home: Path, seq: int) -> dict[str, Any]:
    con = sqlite3.connect(db_path(home))
    con.row_factory = sqlite3.Row
    try:
        return dict(con.execute("SELECT * FROM audit WHERE seq = ?", (seq,)).fetchone())
    finally:
        con.close()


def rehash(r: dict[str, Any], prev: str, seq: int | None = None) -> tuple[str, str]:
    """(prev_hash, hash) an attacker would compute for a row placed after `prev`."""
    body = event_body(
        seq or r["seq"],
        r["ts"],
        r["type"],
        r["actor"],
        r["session"],
        r["grant_id"],
        r["target"],
        r["severity"],
        json.loads(r["data"]),
    )
    return prev, chain_hash(prev, body)


def cli(home: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["--config", str(home / "gateway.toml"), *args])
    out, err = capsys.readouterr()
    return rc, out + err


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gateway home written by `gateway init`, with 250 audit events (built once, copied per test)."""
    home = tmp_path_factory.mktemp("pristine")
    assert main(["init", "--dir", str(home)]) == 0
    arun(_populate(home))
    return home


@pytest.fixture
def home(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "home"
    shutil.copytree(pristine, dst)
    return dst


# --- intact ------------------------------------------------------------------------------------------


def test_intact_chain_verifies(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = arun(_verify(home))
    assert v.ok and v.checked == EVENTS and v.last_checkpoint == EVENTS and v.first_bad_seq is None
    side = [
        json.loads(line)["seq"] for line in (db_path(home).with_name("gateway.db.checkpoints")).read_text().splitlines()
    ]
    assert side == [100, 200, 250]
    rc, out = cli(home, capsys, "audit", "verify")
    assert rc == 0, out
    assert f"audit chain intact: {EVENTS} events; last signed checkpoint at event #{EVENTS} (" in out


def test_verify_does_not_add_a_checkpoint(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    side = db_path(home).with_name("gateway.db.checkpoints")
    before = side.read_bytes()
    assert cli(home, capsys, "audit", "verify")[0] == 0
    assert side.read_bytes() == before


# --- tampering ---------------------------------------------------------------------------------------


def edit_data(home: Path) -> None:
    sql(
        home,
        'DROP TRIGGER audit_no_update; UPDATE audit SET data=\'{"i": 120, "text": "nothing to see"}\' WHERE seq=120;',
    )


def edit_actor(home: Path) -> None:
    sql(home, "DROP TRIGGER audit_no_update; UPDATE audit SET actor='someone-else' WHERE seq=7;")


def edit_and_rehash_row(home: Path) -> None:
    r = row(home, 120)
    r["data"] = json.dumps({"i": 120, "text": "forged"})
    _, digest = rehash(r, r["prev_hash"])
    sql(home, "DROP TRIGGER audit_no_update;")
    sql(home, "UPDATE audit SET data=?, hash=? WHERE seq=120", r["data"], digest)


def edit_and_rehash_the_rest(home: Path) -> None:
    """The thorough attacker: edit #120 and recompute every later hash. Only the signed checkpoint at #200
    can tell."""
    sql(home, "DROP TRIGGER audit_no_update;")
    prev = row(home, 119)["hash"]
    for seq in range(120, EVENTS + 1):
        r = row(home, seq)
        if seq == 120:
            r["data"] = json.dumps({"i": 120, "text": "forged"})
        _, digest = rehash(r, prev)
        sql(home, "UPDATE audit SET data=?, prev_hash=?, hash=? WHERE seq=?", r["data"], prev, digest, seq)
        prev = digest


def delete_middle(home: Path) -> None:
    sql(home, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq=120;")


def delete_first(home: Path) -> None:
    sql(home, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq=1;")


def swap_rows(home: Path) -> None:
    a, b = row(home, 120), row(home, 121)
    cols = [c for c in a if c != "seq"]
    sql(home, "DROP TRIGGER audit_no_update;")
    for target, source in ((120, b), (121, a)):
        sql(
            home,
            f"UPDATE audit SET {', '.join(f'{c}=?' for c in cols)} WHERE seq=?",
            *[source[c] for c in cols],
            target,
        )


FORGE = (
    "INSERT INTO audit (seq,ts,type,actor,session,grant_id,target,severity,data,prev_hash,hash) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def forged_row_appended(home: Path) -> None:
    r = row(home, EVENTS)
    r.update(seq=EVENTS + 1, type="grant.revoked", actor="admin", data=json.dumps({"note": "forged"}))
    prev, digest = rehash(r, GENESIS)  # a correct hash for its own content, chained to the wrong place
    sql(
        home,
        FORGE,
        r["seq"],
        r["ts"],
        r["type"],
        r["actor"],
        r["session"],
        r["grant_id"],
        r["target"],
        r["severity"],
        r["data"],
        prev,
        digest,
    )


def forged_row_inserted(home: Path) -> None:
    """Renumber #120.. up by one and slip a well-hashed forged row in at #120."""
    sql(
        home,
        "DROP TRIGGER audit_no_update; UPDATE audit SET seq = seq + 100000 WHERE seq >= 120; "
        "UPDATE audit SET seq = seq - 100000 + 1 WHERE seq >= 100000;",
    )
    r = row(home, 119)
    r.update(seq=120, type="session.kill", actor="admin", data=json.dumps({"reason": "forged"}))
    prev, digest = rehash(r, r["hash"])
    sql(
        home,
        FORGE,
        120,
        r["ts"],
        r["type"],
        r["actor"],
        r["session"],
        r["grant_id"],
        r["target"],
        r["severity"],
        r["data"],
        prev,
        digest,
    )


def truncate_tail_with_db_checkpoints(home: Path) -> None:
    sql(home, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 180;")


def truncate_tail_and_db_checkpoints(home: Path) -> None:
    """Delete the tail *and* every checkpoint in the database: the side file still has the signed heads."""
    sql(
        home,
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 180; "
        "DROP TRIGGER checkpoints_no_delete; DELETE FROM checkpoints;",
    )


def truncate_after_last_checkpoint_side_file_only(home: Path) -> None:
    sql(
        home,
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 240; "
        "DROP TRIGGER checkpoints_no_delete; DELETE FROM checkpoints;",
    )


def forge_db_checkpoint_signature(home: Path) -> None:
    attacker = KeyRing.load_or_create(home / "attacker-keys")
    con = sqlite3.connect(db_path(home))
    head, kid = con.execute("SELECT head, kid FROM checkpoints WHERE seq=100").fetchone()
    con.close()
    _, sig = attacker.sign_bytes(checkpoint_message(100, head))  # a real Ed25519 signature, by the wrong key
    sql(home, "DROP TRIGGER checkpoints_no_update;")
    sql(home, "UPDATE checkpoints SET signature=? WHERE seq=100", sig)
    assert kid  # the kid still names the gateway's key


def forge_checkpoint_with_own_key(home: Path) -> None:
    """Rehash after an edit and sign new heads with an attacker key (its own kid) in both places."""
    edit_and_rehash_the_rest(home)
    attacker = KeyRing.load_or_create(home / "attacker-keys")
    sql(home, "DROP TRIGGER checkpoints_no_delete; DELETE FROM checkpoints;")
    side = db_path(home).with_name("gateway.db.checkpoints")
    lines = []
    for seq in (100, 200, EVENTS):
        head = row(home, seq)["hash"]
        kid, sig = attacker.sign_bytes(checkpoint_message(seq, head))
        lines.append(json.dumps({"seq": seq, "head": head, "kid": kid, "signature": sig, "ts": 1.0}))
        sql(home, "INSERT INTO checkpoints VALUES (?,?,?,?,?)", seq, head, kid, sig, 1.0)
    side.write_text("\n".join(lines) + "\n")


def forge_side_file_checkpoint(home: Path) -> None:
    side = db_path(home).with_name("gateway.db.checkpoints")
    line = json.loads(side.read_text().splitlines()[0])
    line["signature"] = line["signature"][:-4] + ("AAAA" if not line["signature"].endswith("AAAA") else "BBBB")
    line["head"] = "f" * 64
    with side.open("a") as f:
        f.write(json.dumps(line) + "\n")


SCENARIOS: list[tuple[Callable[[Path], None], int, str]] = [
    (edit_data, 120, "edited"),
    (edit_actor, 7, "edited"),
    (edit_and_rehash_row, 121, "prev_hash"),
    (edit_and_rehash_the_rest, 200, "does not match the signed checkpoint"),
    (delete_middle, 120, "deleted or missing"),
    (delete_first, 1, "deleted or missing"),
    (swap_rows, 120, "prev_hash"),
    (forged_row_appended, EVENTS + 1, "prev_hash"),
    (forged_row_inserted, 121, "prev_hash"),
    (truncate_tail_with_db_checkpoints, 181, "truncated"),
    (truncate_tail_and_db_checkpoints, 181, "truncated"),
    (truncate_after_last_checkpoint_side_file_only, 241, "truncated"),
    (forge_db_checkpoint_signature, 100, "invalid signature"),
    (forge_checkpoint_with_own_key, 100, "invalid signature"),
    (forge_side_file_checkpoint, 100, "invalid signature"),
]


@pytest.mark.parametrize(("tamper", "first_bad", "words"), SCENARIOS, ids=[s[0].__name__ for s in SCENARIOS])
def test_tampering_is_detected(
    home: Path, capsys: pytest.CaptureFixture[str], tamper: Callable[[Path], None], first_bad: int, words: str
) -> None:
    tamper(home)
    v = arun(_verify(home))
    assert not v.ok
    assert v.first_bad_seq == first_bad, v.describe()
    assert words in v.problem, v.describe()
    rc, out = cli(home, capsys, "audit", "verify")
    assert rc == 1, out
    assert f"audit chain BROKEN at record #{first_bad}: " in out
    assert words in out


def test_triggers_refuse_changes_without_dropping_them(home: Path) -> None:
    for stmt in (
        "UPDATE audit SET data='{}' WHERE seq=120",
        "DELETE FROM audit WHERE seq=120",
        "DELETE FROM audit WHERE seq > 180",
        "UPDATE audit SET seq = seq + 1 WHERE seq = 250",
        "UPDATE checkpoints SET signature='x' WHERE seq=100",
        "DELETE FROM checkpoints",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            sql(home, stmt)
    assert arun(_verify(home)).ok


def test_the_cli_over_a_subprocess(home: Path) -> None:
    """The console entry (`python -m gateway`) exits 0 on an intact chain and 1 on a broken one."""
    cmd = [sys.executable, "-m", "gateway", "--config", str(home / "gateway.toml"), "audit", "verify"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=home)
    assert ok.returncode == 0, ok.stderr
    assert "audit chain intact: 250 events" in ok.stdout
    delete_middle(home)
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=home)
    assert bad.returncode == 1, bad.stderr
    assert "audit chain BROKEN at record #120" in bad.stdout


def test_missing_side_file_with_intact_db_still_verifies(home: Path) -> None:
    db_path(home).with_name("gateway.db.checkpoints").unlink()
    v = arun(_verify(home))
    assert v.ok and v.last_checkpoint == EVENTS


def test_torn_last_line_of_the_side_file_is_ignored(home: Path) -> None:
    side = db_path(home).with_name("gateway.db.checkpoints")
    with side.open("a") as f:
        f.write('{"seq": 300, "head": "ab')  # a crash mid-write
    assert arun(_verify(home)).ok


def test_verification_with_a_rotated_ring(home: Path) -> None:
    """After `keys rotate`, checkpoints signed by the old key still verify."""
    config = load_config(home / "gateway.toml", need_secrets=False)
    KeyRing.load_or_create(config.keys_dir).rotate()

    async def more() -> None:
        store = await open_store(home).open()
        await store.append("after.rotation")
        await store.close()

    arun(more())
    v = arun(_verify(home))
    assert v.ok and v.checked == EVENTS + 1 and v.last_checkpoint == EVENTS + 1


# --- recordings --------------------------------------------------------------------------------------


def _recording(home: Path, name: str = "s1.cast", content: bytes = b'{"version": 2}\n[0.1, "o", "hello"]\n') -> Path:
    path = home / "recordings" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)

    async def end() -> None:
        store = await open_store(home).open()
        await store.append(
            "session.end",
            actor="alice",
            session=name,
            data={
                "reason": "client closed",
                "recording": str(path),
                "recording_sha256": hashlib.sha256(content).hexdigest(),
            },
        )
        await store.close()

    arun(end())
    return path


def test_intact_recording_passes(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _recording(home)
    rc, out = cli(home, capsys, "audit", "verify")
    assert rc == 0, out
    assert "recording problem" not in out


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda p: p.write_bytes(p.read_bytes().replace(b"hello", b"HELLO")), "does not match the hash"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "does not match the hash"),
        (lambda p: p.write_bytes(p.read_bytes() + b'[9.9, "o", "more"]\n'), "does not match the hash"),
        (lambda p: p.unlink(), "is missing (deleted)"),
    ],
    ids=["edited", "truncated", "appended", "deleted"],
)
def test_damaged_recording_is_reported(home: Path, capsys: pytest.CaptureFixture[str], damage, words: str) -> None:  # type: ignore[no-untyped-def]
    good = _recording(home, "good.cast", b'{"version": 2}\n[0.5, "o", "untouched"]\n')
    bad = _recording(home, "bad.cast")
    before = bad.read_bytes()
    damage(bad)
    assert not bad.exists() or bad.read_bytes() != before
    rc, out = cli(home, capsys, "audit", "verify")
    assert rc == 1, out
    assert "audit chain intact" in out  # the chain itself is fine
    problems = [line for line in out.splitlines() if line.startswith("recording problem:")]
    assert len(problems) == 1, out
    assert str(bad) in problems[0] and words in problems[0] and "session bad.cast" in problems[0]
    assert str(good) not in out
    # --no-recordings skips the check
    assert cli(home, capsys, "audit", "verify", "--no-recordings")[0] == 0


def test_recording_folder_replaced_by_unreadable_thing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _recording(home, "dir.cast")
    p.unlink()
    p.mkdir()  # a folder where the file was: cannot be read
    rc, out = cli(home, capsys, "audit", "verify")
    assert rc == 1 and "cannot be read" in out


# --- the pure chain walker ---------------------------------------------------------------------------


def _rows(n: int) -> list[Row]:
    out, prev = [], GENESIS
    for i in range(1, n + 1):
        body = event_body(i, float(i), "e", "a", "", "", "", "info", {"i": i})
        h = chain_hash(prev, body)
        out.append(Row(body, prev, h))
        prev = h
    return out


def test_verify_chain_empty_and_simple() -> None:
    assert verify_chain([], [], lambda *a: True) == Verdict(True, 0)
    rows = _rows(5)
    assert verify_chain(rows, [], lambda *a: False).ok  # no checkpoints: signatures never consulted
    cp = Checkpoint(5, rows[-1].hash, "k", "s", 0.0)
    assert verify_chain(rows, [cp], lambda *a: True).last_checkpoint == 5
    v = verify_chain(rows, [cp], lambda *a: False)
    assert (v.ok, v.first_bad_seq) == (False, 5)
    v = verify_chain(rows[:3], [cp], lambda *a: True)
    assert (v.ok, v.first_bad_seq) == (False, 4) and "truncated" in v.problem


def test_verify_chain_duplicate_row() -> None:
    rows = _rows(4)
    v = verify_chain([rows[0], rows[1], rows[1], rows[2]], [], lambda *a: True)
    assert (v.ok, v.first_bad_seq) == (False, 3) and "duplicated or reordered" in v.problem


def test_verify_chain_checks_the_signed_message() -> None:
    rows = _rows(3)
    seen: list[tuple[str, str, bytes]] = []

    def sig(kid: str, s: str, msg: bytes) -> bool:
        seen.append((kid, s, msg))
        return True

    verify_chain(rows, [Checkpoint(2, rows[1].hash, "kid1", "sig1", 0.0)], sig)
    assert seen == [("kid1", "sig1", checkpoint_message(2, rows[1].hash))]
    assert checkpoint_message(2, "ab") == b"gateway-audit-checkpoint:2:ab"


def test_verdict_descriptions() -> None:
    assert Verdict(True, 0).describe() == "audit chain intact: 0 events"
    assert Verdict(True, 3).describe() == (
        "audit chain intact: 3 events; no signed checkpoint: none of them is covered by a signature "
        "(deleting or rewriting them is not detected)"
    )
    assert Verdict(True, 3, last_checkpoint=2, last_checkpoint_ts=0.0).describe() == (
        "audit chain intact: 3 events; last signed checkpoint at event #2 (1970-01-01 00:00:00 UTC); "
        "events after #2 (1 of them) are not covered by a signature (deleting or rewriting them is not detected)"
    )
    assert Verdict(True, 3, last_checkpoint=3).describe() == (
        "audit chain intact: 3 events; last signed checkpoint at event #3: every event is covered by a signature"
    )
    assert Verdict(False, 3, 2, "boom").describe() == "audit chain BROKEN at record #2: boom"
