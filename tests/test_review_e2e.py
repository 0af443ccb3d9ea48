"""Reviewer side end to end, on recordings made by the real front ends (issue 6).

One gateway (``App`` with the SSH, Postgres and HTTP listeners) in front of the rig's PostgreSQL and sshd.
alice asks, bob approves, then alice runs a psql session (SELECTs and one statement the read scope refuses)
and an interactive SSH shell with a terminal (a command, an OSC 52 clipboard write and a title change, an
idle pause, exit). The reviewer commands then run as subprocesses (``python -m gateway --config CFG ...``)
on that store and those recordings: sessions, show, replay (--print, timed, live follow), search and
``audit verify`` with tampered, truncated and deleted recordings.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

from gateway.api.auth import new_api_key
from gateway.config import load_config
from gateway.review.replay import END_MARKER, play
from tests.control.conftest import USERS, Running, start_gateway, write_rig_config
from tests.pg.rawclient import TERMINATE, RawClient, query, tags
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer

pytestmark = pytest.mark.slow

ESC = "\x1b"
OSC_LINE = r"printf '\033]52;c;ZXZpbA==\a\033]0;pwned\a'; echo osc-$((2+3))-done"
PSQL_SCRIPT = """\
SELECT count(*) AS n FROM customers;
SELECT id, status FROM orders ORDER BY id LIMIT 3;
DELETE FROM orders;
SELECT 'after-deny' AS still_here;
"""
EVIL_REASON = "INC-77 \x1b]52;c;ZXZpbA==\x07\x1b]0;pwned\x07 disk full"
IDLE_GAP = 0.8  # seconds the SSH session sits idle before `exit` (an idle_limit below it must cap it)


@dataclass
class Recorded:
    """The gateway, its config file, and the two finished sessions the tests review."""

    gw: Running
    config_path: Path
    pg_sid: str
    ssh_sid: str
    ssh_grant: str
    ssh_token: str
    env: dict[str, str]

    async def session(self, sid: str) -> Any:
        return await self.gw.services.store.get_session(sid)


async def cli(rec: Recorded, *argv: str, timeout: float = 30) -> tuple[int, str, str]:
    """`python -m gateway --config CFG ARGV` as a subprocess without a terminal: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--config", str(rec.config_path), *argv,
        env=rec.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


class Shell:
    """An interactive shell through the gateway: asyncssh with a PTY (xterm), output read as one growing text."""

    def __init__(self, conn: asyncssh.SSHClientConnection, proc: asyncssh.SSHClientProcess[str]) -> None:
        self.conn, self.proc, self.text = conn, proc, ""
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, gw: Running, token: str) -> Shell:
        cfg = gw.services.config
        pinned = asyncssh.import_public_key(cfg.ssh_host_key.with_name(cfg.ssh_host_key.name + ".pub").read_text())
        conn = await asyncssh.connect(
            "127.0.0.1", cfg.listen_ssh.port, username="web-1", password=token, known_hosts=([pinned], [], []),
            client_keys=None, agent_path=None, config=None, preferred_auth="password", connect_timeout=10,
        )  # fmt: skip
        proc = await conn.create_process(term_type="xterm", term_size=(100, 30), encoding="utf-8", errors="replace")
        shell = cls(conn, proc)
        shell.send("PS1='$ '\r")
        await shell.expect("$ ")
        return shell

    async def _read(self) -> None:
        while chunk := await self.proc.stdout.read(4096):
            self.text += chunk

    def send(self, keys: str) -> None:
        self.proc.stdin.write(keys)

    async def expect(self, needle: str, timeout: float = 10, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text[after:]:
            assert time.monotonic() < deadline and not self._reader.done(), f"{needle!r} not in {self.text[-400:]!r}"
            await asyncio.sleep(0.02)

    async def run(self, line: str, marker: str) -> None:
        mark = len(self.text)
        self.send(line + "\r")
        await self.expect(marker, after=mark)

    async def exit(self) -> None:
        self.send("exit\r")
        await asyncio.wait_for(self.proc.wait_closed(), 10)
        await asyncio.wait_for(self._reader, 10)
        self.conn.close()


async def wait_until(cond: Callable[[], Awaitable[Any]], what: str, timeout: float = 10) -> Any:
    """Poll an async condition until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (value := await cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


async def live_session(gw: Running, grant: str) -> str:
    """The id of the one live session of `grant`, once it is registered."""

    async def find() -> str | None:
        live = [s for s in await gw.services.store.list_sessions(live=True) if s.grant_id == grant]
        return live[0].id if live else None

    return str(await wait_until(find, f"a live session of {grant}"))


async def ended(gw: Running, sid: str) -> Any:
    """The session's record once its end (and recording hash) is stored."""

    async def done() -> Any:
        s = await gw.services.store.get_session(sid)
        return s if s is not None and s.ended_at is not None and s.recording_sha256 else None

    return await wait_until(done, f"the end of session {sid}")


@pytest.fixture(scope="module")
async def recorded(
    tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster, sshd_server: SshServer
) -> AsyncIterator[Recorded]:
    """A gateway with every listener against the rig, and one finished Postgres and one finished SSH session."""
    keys = {name: new_api_key() for name in USERS}
    root = tmp_path_factory.mktemp("review-e2e")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GW_TEST_RO_PASSWORD", pg_cluster.passwords["app_ro"])
        mp.setenv("GW_TEST_RW_PASSWORD", pg_cluster.passwords["app_rw"])
        path = write_rig_config(root, keys, pg_cluster, sshd_server)
        config = load_config(path, need_secrets=True)
        svc, port, stop = await start_gateway(config, enable=("postgres", "ssh", "http"))
    try:
        async with aiohttp.ClientSession() as http:
            gw = Running(svc, port, keys, http, stop)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PG", "SSH_"))} | {
                "GATEWAY_URL": gw.url,
                "GATEWAY_API_KEY": keys["erin"],
                "GATEWAY_CREDENTIALS": "/nonexistent",
            }
            _, _, pg_token = await gw.approved_grant("alice", "bob", "orders-db", "read")
            # The SSH grant's reason carries escape sequences too: `show` prints reasons. The API refuses
            # such a reason now (422), so it is written into the store as older data or a hand with the file would.
            ask = {"target": "web-1", "scope": "shell", "ttl": "15m", "reason": "INC-77 disk full"}
            req = await gw.ok("alice", "POST", "/v1/requests", ask)
            approved = await gw.ok("bob", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
            with sqlite3.connect(config.store_path) as db:
                db.execute("UPDATE requests SET reason = ? WHERE id = ?", (EVIL_REASON, req["id"]))
                db.execute("UPDATE grants SET reason = ? WHERE id = ?", (EVIL_REASON, approved["grant"]))
            tok = await gw.ok("alice", "GET", f"/v1/requests/{req['id']}/token")
            ssh_grant, ssh_token = tok["grant"], tok["token"]

            # Postgres: the real psql, a script with three SELECTs and a DELETE the read scope refuses.
            proc = await asyncio.create_subprocess_exec(
                pg_cluster.psql_bin, "-X", "-v", "ON_ERROR_STOP=0",
                f"host=127.0.0.1 port={config.listen_postgres.port} user=alice dbname=orders-db sslmode=require",
                env={**env, "PGPASSWORD": pg_token, "PGCONNECT_TIMEOUT": "10"},
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(PSQL_SCRIPT.encode()), 30)
            assert "50" in out.decode() and "after-deny" in out.decode(), (out, err)
            assert "blocked by gateway policy: read-only: DELETE" in err.decode(), err
            pg_sid = (await gw.services.store.list_sessions(user="alice", target="orders-db"))[0].id

            # SSH: an interactive shell with a terminal.
            sh = await Shell.open(gw, ssh_token)
            ssh_sid = await live_session(gw, ssh_grant)
            await sh.run("echo hello-review", "hello-review\r\n")
            await sh.run(OSC_LINE, "osc-5-done")
            await asyncio.sleep(IDLE_GAP)
            await sh.exit()
            await ended(gw, pg_sid)
            await ended(gw, ssh_sid)
            yield Recorded(gw, path, pg_sid, ssh_sid, ssh_grant, ssh_token, env)
    finally:
        await stop()


def o_times(cast: Path) -> list[float]:
    """Times of the output events before the end marker, read straight from the asciicast file."""
    times = []
    for line in cast.read_text().splitlines()[1:]:
        t, code, data = json.loads(line)
        if code == "m" and data.startswith(END_MARKER):
            break
        if code == "o":
            times.append(t)
    return times


# --- 1 + 2: the recordings exist, `sessions` and `show` ------------------------------------------------


async def test_recordings_hold_what_happened(recorded: Recorded) -> None:
    """The raw material: the SQL journal has the statements and the deny; the cast the real OSC sequences."""
    pg = Path((await recorded.session(recorded.pg_sid)).recording_path)
    lines = [json.loads(x) for x in pg.read_text().splitlines()]
    sqls = {x.get("sql"): x.get("verdict") for x in lines if x["type"] == "statement"}
    assert sqls["DELETE FROM orders;"] == "deny" and sqls["SELECT count(*) AS n FROM customers;"] == "allow"
    cast = Path((await recorded.session(recorded.ssh_sid)).recording_path).read_text()
    # the hostile bytes are really in the recording (as JSON \u001b): what the reviewer side must neutralise
    assert "\\u001b]52;c;ZXZpbA==\\u0007" in cast and "\\u001b]0;pwned\\u0007" in cast


async def test_sessions_json_lists_both(recorded: Recorded) -> None:
    code, out, err = await cli(recorded, "sessions", "--json")
    assert code == 0, err
    rows = {r["id"]: r for r in json.loads(out)}
    pg, ssh = rows[recorded.pg_sid], rows[recorded.ssh_sid]
    assert (pg["user"], pg["target"], pg["scope"], pg["protocol"]) == ("alice", "orders-db", "read", "postgres")
    assert (ssh["user"], ssh["target"], ssh["scope"], ssh["protocol"]) == ("alice", "web-1", "shell", "ssh")
    assert ssh["end_reason"] == "client disconnected" and pg["end_reason"]  # psql's: test_pg_end_reason_...
    for r in (pg, ssh):
        assert r["approvers"] == ["bob"] and r["break_glass"] is False and r["ended_at"] is not None
        assert Path(r["recording"]).is_file()
    assert (pg["statements"], pg["violations"]) == (4, 1)
    assert ssh["reason"] == EVIL_REASON  # JSON output escapes it: \u001b, no raw ESC
    assert ESC not in out
    # the table: both rows, the approver, the end reason
    code, out, err = await cli(recorded, "sessions", "--user", "alice")
    assert code == 0, err
    for sid in (recorded.pg_sid, recorded.ssh_sid):
        (row,) = [line for line in out.splitlines() if line.startswith(sid)]
        assert row.split()[1:4] == (["alice", "web-1", "shell"] if sid == recorded.ssh_sid else
                                    ["alice", "orders-db", "read"])  # fmt: skip
        assert row.split()[-1] == "bob"
    (pg_row,) = [line for line in out.splitlines() if line.startswith(recorded.pg_sid)]
    assert pg_row.split()[-3:-1] == ["4", "1"]  # ACTIVITY (statements), VIOLATIONS (the deny)
    (ssh_row,) = [line for line in out.splitlines() if line.startswith(recorded.ssh_sid)]
    assert "client disconnected" in ssh_row


async def test_sessions_counts_ssh_commands(recorded: Recorded) -> None:
    """`sessions` shows each session's activity: for a shell, the command lines it ran (4 here)."""
    code, out, err = await cli(recorded, "sessions", "--json")
    assert code == 0, err
    ssh = {r["id"]: r for r in json.loads(out)}[recorded.ssh_sid]
    assert ssh["commands"] == 4, f"SSH session activity not counted: {ssh}"


async def test_show_timelines(recorded: Recorded) -> None:
    (code, pg, err), (code2, ssh, err2) = await asyncio.gather(
        cli(recorded, "show", recorded.pg_sid), cli(recorded, "show", recorded.ssh_sid)
    )
    assert code == 0 and code2 == 0, (err, err2)
    assert f"session {recorded.pg_sid}: alice on orders-db (postgres, scope read) from 127.0.0.1:" in pg
    assert f"session {recorded.ssh_sid}: alice on web-1 (ssh, scope shell) from 127.0.0.1:" in ssh
    for text in (pg, ssh):
        lines = text.splitlines()
        kinds = [line[21:].split(" ", 1)[0] for line in lines[3:]]
        if kinds[-1].startswith("ssh.detached"):  # the sweep runs after the end is recorded: its outcome is last
            kinds, lines = kinds[:-1], lines[:-1]
        assert kinds[:2] == ["request", "approval"], text
        # the session's end, then its signed termination receipt
        assert "session.start" in kinds and kinds[-2:] == ["session.end", "session.receipt"], text
        assert (
            lines[-2].split("session.end", 1)[1].strip()
            == (await recorded.session(recorded.ssh_sid if text is ssh else recorded.pg_sid)).end_reason
        )
        assert "approved by bob" in text
    assert kinds.index("command") > kinds.index("session.start")
    for command in ("echo hello-review", OSC_LINE, "exit"):
        assert any(line.endswith(f"command            {command}") for line in ssh.splitlines()), (command, ssh)
    # the refusal is listed once (from the recording, with its verdict), not again from the audit log
    assert pg.count("DELETE FROM orders;") == 1 and "statement          denied [read-only]: DELETE FROM orders;" in pg
    # the escapes in the grant reason are neutralised, the text around them kept
    assert ESC not in ssh and "\x07" not in ssh and "INC-77" in ssh and "disk full" in ssh


async def test_show_pg_timeline_has_the_statements(recorded: Recorded) -> None:
    """A Postgres session's activity is its statements: the allowed ones are in the timeline too."""
    code, pg, err = await cli(recorded, "show", recorded.pg_sid)
    assert code == 0, err
    lines = pg.splitlines()
    stmts = [line[21:] for line in lines if line[21:].startswith("statement ")]
    assert stmts == [
        "statement          allowed: SELECT count(*) AS n FROM customers;",
        "statement          allowed: SELECT id, status FROM orders ORDER BY id LIMIT 3;",
        "statement          denied [read-only]: DELETE FROM orders;",
        "statement          allowed: SELECT 'after-deny' AS still_here;",
    ], pg
    kinds = [line[21:].split(" ", 1)[0] for line in lines[3:]]
    assert kinds.index("session.start") < kinds.index("statement") and kinds[-2:] == [
        "session.end",
        "session.receipt",
    ], pg


# --- 3: replay --print ----------------------------------------------------------------------------------


async def test_replay_print_ssh(recorded: Recorded) -> None:
    code, out, err = await cli(recorded, "replay", recorded.ssh_sid, "--print")
    assert code == 0 and err == "", err
    lines = out.splitlines()
    assert "$ echo hello-review" in lines and "hello-review" in lines and "osc-5-done" in lines
    assert lines[-2:] == ["$ exit", "logout"]
    assert "\x1b]" not in out and ESC not in out and "\x07" not in out


async def test_replay_pg_transcript_verdicts(recorded: Recorded) -> None:
    code, out, err = await cli(recorded, "replay", recorded.pg_sid, "--print")
    assert code == 0 and err == "", err
    assert f"# session {recorded.pg_sid}  user alice  target orders-db" in out
    lines = out.splitlines()

    def line_of(sql: str) -> str:
        (line,) = [x for x in lines if sql in x]
        return line

    assert "ALLOWED  SELECT count(*) AS n FROM customers;  -- 1 row" in line_of("FROM customers")
    assert "ALLOWED  SELECT id, status FROM orders ORDER BY id LIMIT 3;  -- 3 rows" in line_of("LIMIT 3")
    assert "ALLOWED  SELECT 'after-deny'" in line_of("after-deny")
    assert "END  " in lines[-1]
    # the refused statement: its verdict and the rule that refused it
    assert "DENIED [read-only]  DELETE FROM orders;" in line_of("DELETE FROM orders"), line_of("DELETE")


# --- 4: speed and idle limit ----------------------------------------------------------------------------


async def test_play_speed_and_idle_limit(recorded: Recorded) -> None:
    """Virtual play time of the real recording: all gaps at speed 1, a quarter at speed 4, gaps capped."""
    cast = Path((await recorded.session(recorded.ssh_sid)).recording_path)
    times = o_times(cast)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert max(gaps) >= IDLE_GAP * 0.9, gaps  # the idle pause before `exit` is in the recording

    async def virtual(**kw: Any) -> tuple[float, list[float], str]:
        slept: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)
            await asyncio.sleep(0)

        class Out:
            text = ""

            def write(self, s: str) -> None:
                Out.text += s

            def flush(self) -> None:
                pass

        t0 = time.monotonic()
        result = await play(cast, Out(), sleep=fake_sleep, **kw)  # type: ignore[arg-type]
        assert time.monotonic() - t0 < 2, "play slept for real"
        assert result.ended_by == "end-marker" and result.events == len(times) and not result.warnings
        return sum(slept), slept, Out.text

    full, _, text = await virtual(speed=1)
    assert full == pytest.approx(sum(gaps)) and full >= IDLE_GAP
    assert "hello-review" in text and "osc-5-done" in text and "\x1b]" not in text and "\x07" not in text
    fast, _, _ = await virtual(speed=4)
    assert fast == pytest.approx(full / 4)
    limit = 0.2
    capped, slept, _ = await virtual(speed=1, idle_limit=limit)
    assert max(slept) <= limit + 1e-9
    assert capped == pytest.approx(sum(min(g, limit) for g in gaps)) and capped < full - (IDLE_GAP - limit) * 0.9
    both, _, _ = await virtual(speed=4, idle_limit=limit)
    assert both == pytest.approx(capped / 4)


async def test_replay_cli_timed_without_tty(recorded: Recorded) -> None:
    t0 = time.monotonic()
    code, out, err = await cli(recorded, "replay", recorded.ssh_sid, "--speed", "50", "--idle-limit", "0.1")
    assert time.monotonic() - t0 < 15
    assert code == 0 and err == "", err
    assert "hello-review\r\n" in out and "osc-5-done" in out
    assert "\x1b]" not in out and "\x07" not in out
    # the terminal state is restored at the end; the scroll region reset sits between a cursor save and restore
    assert out.endswith("\x1b[0m\x1b[?25h\x1b7\x1b[r\x1b8")


# --- 5: search ------------------------------------------------------------------------------------------


async def test_search(recorded: Recorded) -> None:
    (c1, hello, e1), (c2, delete, e2), (c3, none, e3), (c4, js, e4) = await asyncio.gather(
        cli(recorded, "search", "hello-review"),
        cli(recorded, "search", "DELETE FROM orders"),
        cli(recorded, "search", "no-such-command-anywhere"),
        cli(recorded, "search", "hello-review", "--json"),
    )
    assert (c1, c2, c3, c4) == (0, 0, 1, 0), (e1, e2, e3, e4)
    assert any(recorded.ssh_sid in x and "alice@web-1" in x and x.endswith("echo hello-review")
               for x in hello.splitlines()), hello  # fmt: skip
    assert recorded.pg_sid not in hello
    (line,) = delete.splitlines()
    assert recorded.pg_sid in line and "alice@orders-db" in line and "statement" in line
    assert line.endswith("DELETE FROM orders;")
    assert none == ""
    hits = json.loads(js)
    assert {(h["session"], h["kind"], h["text"]) for h in hits} >= {(recorded.ssh_sid, "command", "echo hello-review")}


# --- 6: tamper detection --------------------------------------------------------------------------------


async def test_audit_verify_detects_tampered_recordings(recorded: Recorded) -> None:
    code, out, err = await cli(recorded, "audit", "verify")
    assert code == 0 and "recording problem" not in out, (out, err)
    ssh_rec = await recorded.session(recorded.ssh_sid)
    pg_rec = await recorded.session(recorded.pg_sid)
    cast, jsonl = Path(ssh_rec.recording_path), Path(pg_rec.recording_path)
    cast_bytes, jsonl_bytes = cast.read_bytes(), jsonl.read_bytes()
    try:
        # (a) one byte flipped in the SSH recording (the output "osc-5-done" becomes "Osc-5-done")
        i = cast_bytes.index(b"osc-5-done\\r\\n")
        cast.write_bytes(cast_bytes[:i] + b"O" + cast_bytes[i + 1 :])
        (code, out, err), (rcode, rout, rerr) = await asyncio.gather(
            cli(recorded, "audit", "verify"), cli(recorded, "replay", recorded.ssh_sid, "--print")
        )
        assert code != 0, out
        (problem,) = [x for x in out.splitlines() if x.startswith("recording problem")]
        assert recorded.ssh_sid in problem and str(cast) in problem and "edited or truncated" in problem
        assert rcode == 0 and "Osc-5-done" in rout and "hello-review" in rout, rerr
        assert "warning" in rerr and ("hash" in rerr or "tamper" in rerr or "edited" in rerr), (
            f"replay of a tampered recording gave no warning: {rerr!r}"
        )
        cast.write_bytes(cast_bytes)

        # (b) the Postgres recording truncated in its last line
        jsonl.write_bytes(jsonl_bytes[:-15])
        (code, out, err), (rcode, rout, rerr) = await asyncio.gather(
            cli(recorded, "audit", "verify"), cli(recorded, "replay", recorded.pg_sid)
        )
        assert code != 0, out
        (problem,) = [x for x in out.splitlines() if x.startswith("recording problem")]
        assert recorded.pg_sid in problem and str(jsonl) in problem
        assert rcode == 0 and "SELECT 'after-deny'" in rout and "END" not in rout, rout
        assert "warning" in rerr and "torn" in rerr, rerr
        jsonl.write_bytes(jsonl_bytes)

        # (c) the SSH recording deleted
        cast.unlink()
        (code, out, err), (rcode, rout, rerr) = await asyncio.gather(
            cli(recorded, "audit", "verify"), cli(recorded, "replay", recorded.ssh_sid, "--print")
        )
        assert code != 0, out
        (problem,) = [x for x in out.splitlines() if x.startswith("recording problem")]
        assert recorded.ssh_sid in problem and "missing" in problem
        assert rcode != 0 and "missing" in rerr and rout == "", (rout, rerr)
    finally:
        cast.write_bytes(cast_bytes)
        jsonl.write_bytes(jsonl_bytes)
    code, out, err = await cli(recorded, "audit", "verify")
    assert code == 0 and "recording problem" not in out, (out, err)


# --- 7: live follow -------------------------------------------------------------------------------------


async def test_replay_follows_a_live_session(recorded: Recorded) -> None:
    gw = recorded.gw
    sh = await Shell.open(gw, recorded.ssh_token)
    proc: asyncio.subprocess.Process | None = None
    try:
        live = [s for s in await gw.services.store.list_sessions(live=True) if s.grant_id == recorded.ssh_grant]
        (sid,) = [s.id for s in live]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "--config", str(recorded.config_path), "replay", sid,
            env=recorded.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        seen = b""

        async def read_until(needle: bytes, timeout: float) -> None:
            nonlocal seen
            deadline = time.monotonic() + timeout
            while needle not in seen:
                left = deadline - time.monotonic()
                assert left > 0 and proc is not None and proc.returncode is None, (needle, seen[-300:])
                try:
                    seen += await asyncio.wait_for(proc.stdout.read(4096), left)  # type: ignore[union-attr]
                except TimeoutError:
                    continue

        await read_until(b"$ ", 10)  # the prompt set up before the replay started
        await sh.run("echo live-$((40+2))", "live-42\r\n")
        await read_until(b"live-42\r\n", 10)  # played as it happens
        assert b"echo live-$((40+2))" in seen
        assert proc.returncode is None, "replay of a live session ended early"
        await sh.exit()
        t0 = time.monotonic()
        rest, err = await asyncio.wait_for(proc.communicate(), 10)
        assert time.monotonic() - t0 < 5, "replay did not end with the session"
        assert proc.returncode == 0 and err == b"", err
        seen += rest
        assert b"logout" in seen and b"\x1b]" not in seen and b"\x07" not in seen
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        sh.conn.close()


async def test_pg_end_reason_after_terminate(recorded: Recorded) -> None:
    """A client that sends Terminate ends the session as "client disconnected", whoever closes first.

    Here the client keeps its socket open after Terminate (as it may: the server closes): the upstream
    closes first. The reviewer must still read that the client ended it, not "upstream closed the
    connection" (which reads like a server failure). psql hits the same race now and then.
    """
    gw = recorded.gw
    _, grant, token = await gw.approved_grant("alice", "bob", "orders-db", "read")
    c = await RawClient.login(gw.services.config.listen_postgres.port, token, database="orders-db")
    try:
        c.send(query("SELECT 1"))
        assert tags(await c.until_ready())[-1] == "Z"
        c.send(TERMINATE)
        await c.closed()
    finally:
        await c.close()
    (sid,) = [s.id for s in await gw.services.store.list_sessions() if s.grant_id == grant]
    assert (await ended(gw, sid)).end_reason == "client disconnected"


async def test_search_finds_exactly_the_judged_lines(recorded: Recorded) -> None:
    """Lines typed with edits at a real bash through a real sshd: `gateway search` gives exactly the lines
    enforcement judged (the audit log's `command` events), and the shared terminal model rebuilds the same
    lines from the recording's input and output."""
    gw = recorded.gw
    _, grant, token = await gw.approved_grant("alice", "bob", "web-1", "shell")
    sh = await Shell.open(gw, token)
    sid = await live_session(gw, grant)
    await sh.run("echo aa-XYZ\x7f\x7f\x7fedit1", "aa-edit1\r\n")  # backspace
    await sh.run("echo bb\x1b[Dq\x1b[C-edit2", "bqb-edit2\r\n")  # cursor left, insert, cursor right
    await sh.run("junk words\x15echo cc-edit3", "cc-edit3\r\n")  # ^U
    await sh.run("echo dd-edit4 extra\x17", "dd-edit4\r\n")  # ^W
    mark = len(sh.text)
    sh.send("\x1b[A")  # history recall: only the echo shows the line
    await sh.expect("echo dd-edit4", after=mark)
    await sh.run("", "dd-edit4\r\n")
    await sh.run("echo ee\x01\x06\x06\x06\x06\x06X-edit5\x05", "X-edit5ee\r\n")  # ^A, ^F, ^E
    await sh.exit()
    rec = await ended(gw, sid)
    judged = [e.data["line"] for e in await gw.services.store.events(types=("command",)) if e.session == sid]
    assert [x for x in judged if "edit" in x] == [
        "echo aa-edit1", "echo bqb-edit2", "echo cc-edit3", "echo dd-edit4 ", "echo dd-edit4", "echo X-edit5ee",
    ]  # fmt: skip
    code, out, err = await cli(recorded, "search", "edit", "--json")
    assert code == 0, err
    hits = [(h["kind"], h["text"]) for h in json.loads(out) if h["session"] == sid]
    assert hits == [("command", x) for x in judged if "edit" in x]
    from gateway.recording.reader import terminal_events
    from gateway.terminal import rebuild

    rebuilt = [e.line for _, e in rebuild(terminal_events(Path(rec.recording_path), [])) if e.line.strip()]
    assert rebuilt == judged
