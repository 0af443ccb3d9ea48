"""Audit anchors: C2SP signed notes, checkpoints published off the store, and tampering they catch.

The attacker here has write access to the store file (and its checkpoint side file) but not to the
anchors (a WORM folder, a witness) nor to the signing key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.anchors import checkpoint, note
from gateway.anchors.publish import file_name
from gateway.anchors.verify import AnchorSourceError, parse_anchors, read_source, split_notes, verify_anchors
from gateway.cli import main
from gateway.config import load_config
from gateway.services import build_services
from gateway.store.chain import chain_hash, event_body
from tests.rig.ports import free_ports

T = TypeVar("T")
EVENTS = 25  # checkpoint_every = 10: anchored at 10, 20 and 25 (on close)


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run async setup on its own loop in a worker thread (the CLI runs its own loop in this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --- signed notes ------------------------------------------------------------------------------------


def test_signed_note_format_and_verification() -> None:
    key = Ed25519PrivateKey.generate()
    text = checkpoint.body("example.com/audit", 42, "ab" * 32, 1764745200.5)
    assert (
        text == f"example.com/audit\n42\n{base64.b64encode(bytes.fromhex('ab' * 32)).decode()}\ntime 1764745200.500\n"
    )
    signed = note.sign(text, "example.com/audit", key)
    body, sig_line = signed.split("\n\n")
    assert body + "\n" == text and sig_line.startswith("\u2014 example.com/audit ") and sig_line.endswith("\n")
    raw = base64.b64decode(sig_line.split(" ")[2])
    pub = note.raw_public(key.public_key())
    # the key hash as C2SP defines it: SHA-256(name || 0x0A || 0x01 || public key)[:4]
    assert raw[:4] == hashlib.sha256(b"example.com/audit\n\x01" + pub).digest()[:4]
    assert len(raw) == 4 + 64
    assert note.verifier_key("example.com/audit", key.public_key()).startswith(f"example.com/audit+{raw[:4].hex()}+")
    assert note.verify(signed, "example.com/audit", [key.public_key()]).text == text
    a = checkpoint.parse_body(text)
    assert (a.origin, a.size, a.head, a.ts) == ("example.com/audit", 42, "ab" * 32, 1764745200.5)
    # altered text, another key, another name: refused
    with pytest.raises(note.NoteError, match="invalid"):
        note.verify(signed.replace("\n42\n", "\n43\n"), "example.com/audit", [key.public_key()])
    with pytest.raises(note.NoteError, match="no signature"):
        note.verify(signed, "example.com/audit", [Ed25519PrivateKey.generate().public_key()])
    # a witness cosigns: both signatures verify, each for its own name
    witness = Ed25519PrivateKey.generate()
    cosigned = note.add_signature(signed, "witness.example", witness)
    assert len(note.parse(cosigned).signatures) == 2
    note.verify(cosigned, "example.com/audit", [key.public_key()])
    note.verify(cosigned, "witness.example", [witness.public_key()])
    assert split_notes(signed + cosigned) == [signed, cosigned]
    for bad in ("", "no blank line\n", text + "\nnot a signature\n"):
        with pytest.raises(note.NoteError):
            note.parse(bad)


# --- a gateway home with anchors -----------------------------------------------------------------------


def _init(home: Path) -> None:
    assert main(["init", "--dir", str(home)]) == 0
    cfg = home / "gateway.toml"
    cfg.write_text(cfg.read_text().replace("checkpoint_every = 100 ", "checkpoint_every = 10  "))


async def _populate(home: Path, n: int = EVENTS) -> None:
    svc = await build_services(load_config(home / "gateway.toml", need_secrets=False))
    for i in range(n):
        await svc.store.append("test.event", actor=f"user{i % 3}", data={"i": i})
    await svc.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gateway init` with checkpoints every 10 events, and 25 events (anchored at 10, 20, 25)."""
    home = tmp_path_factory.mktemp("anchored")
    _init(home)
    arun(_populate(home))
    return home


@pytest.fixture
def home(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "home"
    shutil.copytree(pristine, dst)
    return dst


def _sql(home: Path, script: str, *params: Any) -> None:
    con = sqlite3.connect(home / "var" / "gateway.db")
    try:
        con.execute(script, params) if params else con.executescript(script)
        con.commit()
    finally:
        con.close()


def _rows(home: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(home / "var" / "gateway.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM audit ORDER BY seq")]
    finally:
        con.close()


def _hash(r: dict[str, Any], prev: str) -> str:
    body = event_body(
        r["seq"], r["ts"], r["type"], r["actor"], r["session"], r["grant_id"], r["target"], r["severity"],
        json.loads(r["data"]), r.get("node", ""),
    )  # fmt: skip
    return chain_hash(prev, body)


def _forget_checkpoints(home: Path) -> None:
    """What the attacker can do to the store's own signatures: delete them all."""
    _sql(home, "DROP TRIGGER checkpoints_no_delete; DELETE FROM checkpoints;")
    (home / "var" / "gateway.db.checkpoints").unlink()


def _verify(home: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["--config", str(home / "gateway.toml"), "audit", "verify", "--no-recordings", *extra])
    out, err = capsys.readouterr()
    return rc, out + err


def test_every_checkpoint_is_anchored_and_verifies(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = home / "var" / "anchors"
    assert sorted(p.name for p in folder.iterdir()) == [file_name(10), file_name(20), file_name(25)]
    text = (folder / file_name(20)).read_text()
    assert text.startswith("gateway/audit\n20\n")
    rc, out = _verify(home, capsys, "--anchors", str(folder))
    assert rc == 0, out
    assert "the store extends all 3 anchored checkpoint(s); newest #25" in out and "every event is anchored" in out


def test_rewritten_and_rechained_history_is_caught(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Edit event #5, recompute every later hash, delete the store's checkpoints: the store alone looks fine."""
    _sql(home, "DROP TRIGGER audit_no_update;")
    prev = "0" * 64
    for r in _rows(home):
        if r["seq"] == 5:
            r["data"] = json.dumps({"i": 4, "text": "nothing happened"})
        digest = _hash(r, prev)
        _sql(home, "UPDATE audit SET data=?, prev_hash=?, hash=? WHERE seq=?", r["data"], prev, digest, r["seq"])
        prev = digest
    _forget_checkpoints(home)
    rc, out = _verify(home, capsys)
    assert rc == 0 and "no signed checkpoint" in out  # the gap the anchors close
    rc, out = _verify(home, capsys, "--anchors", str(home / "var" / "anchors"))
    assert rc == 1
    assert "CONTRADICTS" in out and "record #10 does not have the head hash of checkpoint #10" in out
    assert "history rewritten" in out


def test_truncated_history_is_caught(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sql(home, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 15;")
    _forget_checkpoints(home)
    assert _verify(home, capsys)[0] == 0
    rc, out = _verify(home, capsys, "--anchors", str(home / "var" / "anchors"))
    assert rc == 1 and "the store has 15 events but checkpoint #20" in out and "(truncated)" in out


def _append_forged(home: Path, ts: float) -> None:
    last = _rows(home)[-1]
    forged = {**last, "seq": last["seq"] + 1, "ts": ts, "type": "request.approved", "actor": "bob",
              "data": json.dumps({"request": "r_forged"})}  # fmt: skip
    digest = _hash(forged, last["hash"])
    _sql(home, "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", forged["seq"], forged["ts"], forged["type"],
         forged["actor"], forged["session"], forged["grant_id"], forged["target"], forged["severity"],
         forged["data"], last["hash"], digest, forged["node"])  # fmt: skip


def test_forged_event_after_the_last_checkpoint(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A forged approval appended after the last anchor, dated 10 minutes ago, contradicts the anchor's time."""
    _append_forged(home, time.time() - 600)
    assert _verify(home, capsys)[0] == 0  # the store's own chain and checkpoints accept it
    rc, out = _verify(home, capsys, "--anchors", str(home / "var" / "anchors"))
    assert rc == 1 and "record #26 is dated" in out and "inserted after the fact" in out


def test_forged_event_dated_now_is_reported_unanchored(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Dated now, it cannot be told from a real event yet: verify says it is not covered (SECURITY notes)."""
    _append_forged(home, time.time())
    rc, out = _verify(home, capsys, "--anchors", str(home / "var" / "anchors"))
    assert rc == 0 and "1 event(s) after it are not anchored yet" in out


def test_forged_or_foreign_anchor_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = home / "var" / "anchors"
    path = folder / file_name(20)
    path.write_text(path.read_text().replace("\n20\n", "\n19\n"))
    rc, out = _verify(home, capsys, "--anchors", str(folder))
    assert rc == 1 and "bad anchor" in out and file_name(20) in out and "invalid" in out
    path.unlink()
    other = Ed25519PrivateKey.generate()  # someone else's key, same origin name
    (folder / file_name(30)).write_text(
        note.sign(checkpoint.body("gateway/audit", 30, "00" * 32, 1.0), "gateway/audit", other)
    )
    rc, out = _verify(home, capsys, "--anchors", str(folder))
    assert rc == 1 and "no signature by gateway/audit with a known key" in out


@pytest.fixture
def served(home: Path) -> Iterator[str]:
    """The anchors folder concatenated, served by a real HTTP server (a witness's copy)."""
    bundle = "".join(p.read_text() for p in sorted((home / "var" / "anchors").iterdir())).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(bundle)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/checkpoints"
    server.shutdown()
    server.server_close()


def test_anchors_from_a_url(home: Path, served: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _verify(home, capsys, "--anchors", served)
    assert rc == 0 and "all 3 anchored" in out, out
    _sql(home, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > 22;")
    _forget_checkpoints(home)
    rc, out = _verify(home, capsys, "--anchors", served)
    assert rc == 1 and "checkpoint #25" in out and served in out


# --- publishing: time-based, webhook, alert sinks ------------------------------------------------------


class _Collector:
    """A real HTTP endpoint that keeps what it is POSTed (a witness or an object store's front)."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.port = free_ports(1)[0]
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def post(request: web.Request) -> web.Response:
            self.notes.append(await request.text())
            return web.Response(status=204)

        async def get(_: web.Request) -> web.Response:
            return web.Response(text="".join(self.notes))

        app = web.Application()
        app.router.add_post("/anchor", post)
        app.router.add_get("/anchor", get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def collector() -> AsyncIterator[_Collector]:
    c = _Collector()
    await c.start()
    yield c
    await c.stop()


class _Sink:
    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def offer(self, alert: dict[str, Any]) -> None:
        self.alerts.append(alert)


async def test_time_based_checkpoints_reach_every_sink(tmp_path: Path, collector: _Collector) -> None:
    """With checkpoint_every far away, the timer still anchors new events (folder, webhook, alert sinks)."""
    await asyncio.to_thread(_init, tmp_path)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        cfg.read_text()
        .replace("checkpoint_every = 10 ", "checkpoint_every = 1000")
        .replace('interval = "60s"', 'interval = "1s"')
        .replace("webhooks = []  ", f'webhooks = ["http://127.0.0.1:{collector.port}/anchor"]')
        .replace("alert_webhooks = false", "alert_webhooks = true")
    )
    svc = await build_services(load_config(cfg, need_secrets=False))
    sink = _Sink()
    svc.alerts.sinks.append(sink)
    svc.scheduler.every(svc.anchors.settings.interval, "audit-anchors", svc.anchors.tick)
    svc.scheduler.start()
    try:
        for i in range(3):
            await svc.store.append("test.event", data={"i": i})
        folder = tmp_path / "var" / "anchors"
        deadline = time.monotonic() + 10
        while not (folder / file_name(3)).exists() or not collector.notes:
            assert time.monotonic() < deadline, "no time-based checkpoint within 10 s"
            await asyncio.sleep(0.05)
        assert collector.notes[0] == (folder / file_name(3)).read_text()
        [alert] = sink.alerts
        assert alert["type"] == "audit.checkpoint" and alert["data"]["size"] == 3
        head_before = await svc.store.head()
        await asyncio.sleep(1.5)  # idle: no new events, no new checkpoint
        assert await svc.store.head() == head_before and len(list(folder.iterdir())) == 1
        # cost of one checkpoint with the folder sink (sign, store, side file, fsync'd anchor file)
        t0 = time.perf_counter()
        for i in range(20):
            await svc.store.append("test.event", data={"i": i})
            await svc.store.checkpoint()
        per = (time.perf_counter() - t0) / 20
        print(f"append + checkpoint + anchor: {per * 1000:.2f} ms")
    finally:
        await svc.scheduler.stop()
        await svc.close()
    # a witness's copy from the webhook proves the store too
    anchors = parse_anchors(await read_source(f"http://127.0.0.1:{collector.port}/anchor"), "gateway/audit", svc.ring)
    assert [a.size for a in anchors][:1] == [3]
    svc2 = await build_services(load_config(cfg, need_secrets=False))
    try:
        assert (await verify_anchors(svc2.store, anchors)).ok
    finally:
        await svc2.store.close(checkpoint=False)
    with pytest.raises(AnchorSourceError, match="no such folder"):
        await read_source(str(tmp_path / "nowhere"))
