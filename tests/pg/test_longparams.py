"""What is executed is what is recorded: a bind parameter padded past any limit is still searchable and shown.

Before, parameters were cut to 2048 characters in the recording: 3000 spaces before the payload left only
blanks, and `gateway search` (which also never looked at parameters) found nothing.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import psycopg

from gateway.recording.check import check_recording
from gateway.recording.sidecar import sidecar_path
from gateway.review.replay import print_statements
from tests.pg.conftest import Gateway

PAD = " " * 3000
PAYLOAD = "rm-rf-payload-7f3a"


def _cli_config(gw: Gateway, tmp_path: Path) -> Path:
    """A gateway.toml on the test gateway's store and recordings, for the reviewer commands."""
    cfg = tmp_path / "gateway.toml"
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)  # the reviewer commands need no policies
    cfg.write_text(
        f'[store]\nurl = "{gw.config.store_url}"\n[paths]\nkeys = "{gw.config.keys_dir}"\n'
        f'recordings = "{gw.config.recordings_dir}"\npolicies = "{policies}"\n'
    )
    return cfg


def _gateway_cli(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(cfg), *argv], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip


async def _ended(gw: Gateway, sid: str) -> None:
    for _ in range(200):
        s = await gw.run(gw.services.store.get_session(sid))
        if s is not None and s.ended_at is not None and s.recording_sha256:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("session did not end")


async def test_padded_parameter_is_recorded_searchable_and_replayed(gateway: Gateway, tmp_path: Path) -> None:
    before = set(gateway.live_session_ids())
    conn = await gateway.connect(await gateway.token("read"))
    (sid,) = set(gateway.live_session_ids()) - before
    try:
        assert await conn.fetchval("SELECT length($1::text)", PAD + PAYLOAD) == 3000 + len(PAYLOAD)
        # Binary format too (bytea), payload in the middle this time.
        blob = b"\x00" * 3000 + PAYLOAD.encode() + b"\x00" * 3000
        assert await conn.fetchval("SELECT length($1::bytea)", blob) == len(blob)
    finally:
        await conn.close()
    await _ended(gateway, sid)
    rec = gateway.recording(sid)
    (stmt,) = [e for e in rec if e.get("type") == "statement" and "text" in e["sql"]]
    assert stmt["params"][0].endswith(PAYLOAD.encode().hex()), "the tail of a long parameter is in the line"
    assert stmt["long_params"][0]["bytes"] == 3000 + len(PAYLOAD)
    # `gateway search` finds it in both; the hit shows the payload.
    cfg = _cli_config(gateway, tmp_path)
    proc = await asyncio.to_thread(_gateway_cli, cfg, "search", PAYLOAD, "--json")
    assert proc.returncode == 0, (proc.stdout[:3000], proc.stderr[:3000])
    assert PAYLOAD in proc.stdout and '"parameter"' in proc.stdout
    assert proc.stdout.count(f'"session": "{sid}"') == 2, proc.stdout  # the text and the bytea parameter
    hexed = PAYLOAD.encode().hex()
    proc = await asyncio.to_thread(_gateway_cli, cfg, "search", hexed)
    assert proc.returncode == 0 and sid in proc.stdout, proc.stdout
    # Replay shows it.
    out = io.StringIO()
    (path,) = gateway.config.recordings_dir.rglob(f"{sid}.sql.jsonl")
    print_statements(path, out)
    assert PAYLOAD in out.getvalue()
    proc = await asyncio.to_thread(_gateway_cli, cfg, "replay", sid, "--print")
    assert proc.returncode == 0 and PAYLOAD in proc.stdout, proc.stdout + proc.stderr
    # The sidecar is covered by the hash in the audit log: `audit verify` finds an edit.
    s = await gateway.run(gateway.services.store.get_session(sid))
    assert s is not None and s.recording_sha256 is not None
    assert check_recording(path, s.recording_sha256) is None
    blobs = sidecar_path(path)
    original = blobs.read_bytes()
    try:
        blobs.write_bytes(original.replace(PAYLOAD.encode(), b"x" * len(PAYLOAD)))
        assert check_recording(path, s.recording_sha256) is not None
        proc = await asyncio.to_thread(_gateway_cli, cfg, "audit", "verify")
        assert proc.returncode != 0 and blobs.name in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    finally:
        blobs.write_bytes(original)


def test_padded_parameter_with_psycopg_is_found(gateway: Gateway, tmp_path: Path) -> None:
    token = gateway.run_sync(gateway.token("read"))
    with psycopg.connect(gateway.conninfo(token)) as conn:
        row = conn.execute("SELECT %s::text = %s::text", (PAD + PAYLOAD + "-psycopg", "x")).fetchone()
        assert row == (False,)
    proc = _gateway_cli(_cli_config(gateway, tmp_path), "search", PAYLOAD + "-psycopg")
    assert proc.returncode == 0 and PAYLOAD + "-psycopg" in proc.stdout, proc.stdout + proc.stderr
