"""`gateway demo` end to end: it starts, the lines it prints work when pasted, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.api.auth import hash_api_key
from gateway.config import load_config
from gateway.demo import NO_SSHD, READY_LINE, Demo, DemoOptions
from gateway.sandbox import descendants, free_ports, pid_alive
from gateway.sandbox.postgres import SAMPLE_COUNTS, PgCluster
from gateway.sandbox.sshd import SshServer
from gateway.services import load_policies

REPO = Path(__file__).resolve().parents[1]
_START_TIMEOUT = 90.0


class RunningDemo:
    """A `gateway demo` subprocess and what it printed (a thread reads stdout, so no pipe ever fills up)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        """Move stdout lines into the queue; None marks the end."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def text(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def line(self, pattern: str) -> str | None:
        """The first printed line matching `pattern` (regex on the stripped line), stripped; None if none."""
        for line in self.lines:
            if re.search(pattern, line.strip()):
                return line.strip()
        return None

    def read_until(self, marker: str, timeout: float) -> None:
        """Collect stdout lines until one starts with `marker`; fail with the output on exit or timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                code = self.proc.wait(timeout=30)
                pytest.fail(f"gateway demo exited {code} before it was ready:\n{self.text}\n{self.stderr()}")
            self.lines.append(line)
            if line.startswith(marker):
                return
        pytest.fail(f"gateway demo not ready after {timeout:.0f} s:\n{self.text}")

    def read_rest(self) -> None:
        """After exit: the rest of stdout."""
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)

    def stderr(self) -> str:
        """stderr, once the process has exited."""
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


def _client_env() -> dict[str, str]:
    """The environment a newcomer's shell has, minus libpq/ssh settings that would change what the lines do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SSH"))}
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def _paste(*lines: str) -> subprocess.CompletedProcess[str]:
    """Run printed lines in bash, as if pasted into a terminal."""
    return subprocess.run(
        ["bash", "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        env=_client_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


@pytest.fixture
def demo() -> Iterator[RunningDemo]:
    """`gateway demo` on free ports, killed (with everything it started) if the test did not stop it."""
    ssh_port, pg_port, http_port = free_ports(3)
    cmd = [sys.executable, "-m", "gateway", "demo"]
    cmd += ["--ssh-port", str(ssh_port), "--pg-port", str(pg_port), "--http-port", str(http_port)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    running = RunningDemo(proc)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _flow(text: str) -> list[str]:
    """The block the demo tells a user to paste, in order: every line that is not a comment."""
    block = text.split("paste these into another terminal, in order.", 1)[1].split(READY_LINE, 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.strip() and not line.strip().startswith("#")]


def _paste_in_order(lines: list[str], home: Path) -> list[tuple[str, int, str, str]]:
    """Paste `lines` into one bash, as a user would: (line, exit status, stdout, stderr) for each."""
    script = "".join(f'{line}\necho "@@ $?"; echo "@@" >&2\n' for line in lines)
    env = {k: v for k, v in _client_env().items() if not k.startswith("GATEWAY_")}
    env["HOME"] = str(home)  # nothing from the tester's own `gateway login`
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=180
    )
    outs = re.split(r"@@ (\d+)\n", done.stdout)  # [out, status, out, status, ..., rest]
    errs = done.stderr.split("@@\n")
    assert len(outs) == 2 * len(lines) + 1 and len(errs) == len(lines) + 1, (done.stdout, done.stderr)
    results = [(line, int(outs[2 * i + 1]), outs[2 * i], errs[i]) for i, line in enumerate(lines)]
    return results


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_lines_pasted_in_order_teach_the_flow_and_ctrl_c_cleans_up(demo: RunningDemo, tmp_path: Path) -> None:
    """The printed lines, pasted in order, take a new user through login, request, approval, connect (stock psql,
    gateway psql, gateway ssh), revoke and review; SIGINT then exits 0 and removes everything."""
    demo.read_until(READY_LINE, _START_TIMEOUT)
    config_line = demo.line(r"^export GATEWAY_CONFIG=\S+/gateway\.toml$")
    assert config_line is not None, demo.text
    folder = Path(config_line.split("=", 1)[1]).parent
    assert folder.is_dir()
    has_ssh = os.access("/usr/sbin/sshd", os.X_OK)
    if not has_ssh:
        assert NO_SSHD in demo.text

    # What must be gone after Ctrl-C: the postmaster (daemonized by pg_ctl) and everything under the demo.
    postmaster_pid = int(next(folder.glob("gw-pg-*/data/postmaster.pid")).read_text().split()[0])
    started = [postmaster_pid, *descendants(postmaster_pid), *descendants(demo.proc.pid)]

    lines = _flow(demo.text)
    # bob's one-time console link: printed beside the console's URL, outside the block to paste (a URL is
    # no shell line), signs him in once and is refused the second time
    link = demo.line(r"^http://127\.0\.0\.1:\d+/signin\?t=\S+$")
    assert link is not None and not [x for x in lines if "/signin?t=" in x], demo.text
    assert f"The web console is {link.split('signin?', 1)[0]} ." in demo.text
    with urllib.request.urlopen(link, timeout=10) as resp:
        assert resp.status == 200 and "gw_console=" in resp.headers["Set-Cookie"]
    with pytest.raises(urllib.error.HTTPError) as again:
        urllib.request.urlopen(link, timeout=10)
    assert again.value.code == 403 and "already used" in again.value.read().decode()
    # the block is shell and nothing else: one stray prose line (an apostrophe in "bob's") would swallow the rest
    syntax = subprocess.run(["bash", "-n"], input="\n".join(lines), capture_output=True, text=True, timeout=10)
    assert syntax.returncode == 0, syntax.stderr
    results = _paste_in_order(lines, tmp_path)
    said = {}  # the first line containing each fragment -> its result
    for fragment in ("alice.credentials", "login --server", "$B gateway login", "request orders-db",
                     "requests --pending", "approve $REQ ", "psql \"host=", "psql orders-db -- -c 'select count",
                     "request web-1", "approve $REQ2", "ssh web-1", "revoke $REQ", "psql orders-db -- -c 'select 1'",
                     "sessions --user alice", "show $REQ", "replay $REQ", "replay $REQ2", "audit verify"):  # fmt: skip
        found = [r for r in results if fragment in r[0]]
        if fragment in ("request web-1", "approve $REQ2", "ssh web-1", "replay $REQ2") and not has_ssh:
            assert not found
            continue
        assert found, (fragment, lines)
        said[fragment] = found[0]
    transcript = "\n".join(f"$ {line}\n[{code}] {out}{err}" for line, code, out, err in results)

    def ok(fragment: str) -> tuple[str, str]:
        line, code, out, err = said[fragment]
        assert code == 0, f"{line!r} failed:\n{transcript}"
        return out, err

    assert "as alice (engineers)" in ok("login --server")[0]
    assert "as bob (" in ok("$B gateway login")[0]
    assert "alice" in ok("requests --pending")[0] and "pending" in ok("requests --pending")[0]
    approved = ok("approve $REQ ")[0]
    match = re.search(r"approved \(grant (g_\w+)\)", approved)
    assert match, transcript
    grant = match.group(1)
    # connect: stock psql with the token as password, then the wrapper naming the grant it uses
    assert ok('psql "host=')[0].split() == ["count", "-------", str(SAMPLE_COUNTS["orders"]), "(1", "row)"]
    _, code, out, err = said["psql orders-db -- -c 'select count"]
    assert f"gateway: using grant {grant} (orders-db/read, " in err and " left" in err, transcript
    assert str(SAMPLE_COUNTS["customers"]) in out
    assert "DELETE is not allowed in read scope" in err, transcript  # refused, and said so
    if has_ssh:
        out, err = ok("ssh web-1")
        assert "hello from the gateway sandbox" in out and "using grant g_" in err, transcript
    # revoke: the grant is gone, the next connection is refused and says why
    assert f"grant {grant} revoked" in ok("revoke $REQ")[0]
    _, code, out, err = said["psql orders-db -- -c 'select 1'"]
    assert code != 0 and "no live grant on orders-db" in err, transcript
    # review, with the config the demo printed
    assert "alice" in ok("sessions --user alice")[0]
    show = ok("show $REQ")[0]
    assert f"grant {grant}:" in show and "state revoked" in show, transcript
    assert show.count("delete from orders") == 1, show  # the denied statement, listed once
    assert "DENIED [read-only]  delete from orders" in ok("replay $REQ")[0]
    if has_ssh:
        assert "hello from the gateway sandbox" in ok("replay $REQ2")[0]
    verified = ok("audit verify")[0]
    sessions = 3 if has_ssh else 2  # stock psql, gateway psql, gateway ssh
    assert "chain intact" in verified and f"; {sessions} recordings match their hashes" in verified, verified
    started += descendants(demo.proc.pid)

    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=60) == 0, demo.stderr()
    demo.read_rest()
    assert f"demo stopped; removed {folder}" in demo.text
    if os.geteuid() == 0:  # what stays outside the folder is named, with why and how to remove it
        for account in ("gwsandbox", "gwops"):
            assert f"OS account {account}: " in demo.text, demo.text
        assert "userdel -r" in demo.text and "/tmp/gw-sandbox-useradd.lock" in demo.text
    assert not folder.exists()
    assert not [p for p in started if pid_alive(p)], f"processes survived the demo: {started}"


def test_demo_refuses_a_busy_port_before_starting_anything() -> None:
    """A taken port: one plain line naming it and the option to change it, exit 1, nothing started."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ssh_port, http_port = free_ports(2)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "demo",
                "--ssh-port",
                str(ssh_port),
                "--pg-port",
                str(port),
                "--http-port",
                str(http_port),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is busy" in proc.stderr
    assert "--pg-port" in proc.stderr
    assert "starting" not in proc.stdout


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    """--dir on a folder with files in it: refused before anything starts (the demo removes its folder)."""
    (tmp_path / "precious.txt").write_text("keep me\n")
    ssh_port, pg_port, http_port = free_ports(3)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--dir", str(tmp_path), "--ssh-port", str(ssh_port),
         "--pg-port", str(pg_port), "--http-port", str(http_port)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "is not an empty folder" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me\n"
    assert "starting" not in proc.stdout


def test_written_config_loads_with_the_sandbox_targets(
    tmp_path: Path, pg_cluster: PgCluster, sshd_server: SshServer
) -> None:
    """The gateway.toml the demo writes loads as `gateway run` loads it: targets, secrets, users, policies."""
    said: list[str] = []
    demo = Demo(DemoOptions(ssh_port=1, pg_port=2, http_port=3), said.append, dir=tmp_path)
    demo.pg, demo.sshd = pg_cluster, sshd_server
    config = load_config(demo.write_config())

    assert (config.listen_ssh.port, config.listen_postgres.port, config.listen_http.port) == (1, 2, 3)
    db = config.targets["orders-db"]
    assert (db.kind, db.address.port, db.database) == ("postgres", pg_cluster.port, "orders")
    for scope, role in (("read", "app_ro"), ("write", "app_rw"), ("admin", "app_admin")):
        login = db.logins[scope]
        assert login.user == role and login.password is not None
        assert login.password.reveal() == pg_cluster.passwords[role]
    assert stat.S_IMODE((tmp_path / "secrets" / "orders_read").stat().st_mode) == 0o600
    web = config.targets["web-1"]
    assert web.address.port == sshd_server.port and web.host_key == sshd_server.host_key_line
    assert web.logins["shell"].user == sshd_server.user
    assert web.logins["shell"].key_file == sshd_server.client_key_path
    assert config.users["alice"].api_key_sha256 == hash_api_key(demo.api_keys["alice"])
    assert config.users["bob"].groups == frozenset({"approvers", "admins"})  # admins may revoke alice's grants
    policies = load_policies(config)
    for target, scope in (("orders-db", "read"), ("web-1", "shell")):
        sp = policies.scope(target, scope)
        assert sp is not None and sp.approvals.from_groups == frozenset({"approvers"})
