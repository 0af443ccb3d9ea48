"""SSH through the gateway vs direct to sshd: bulk exec, scp, sftp, echo round trip, set-up time, idle-session memory.

    .venv/bin/python bench/ssh.py [--rounds 5] [--mb 300] [--sessions 500] [--only exec,exec-gcm,scp,sftp,...]
                                  [--cipher C] [--random] [--plain-recording | --no-recording]

Starts a throwaway OpenSSH server (gateway.sandbox) and the gateway in its own process on uvloop
(`gateway.app.App`, SSH front end only, recording on, the `ops` scope with command rules: exactly as
deployed); first the idle-session memory, then rounds alternating direct and gateway (odd rounds gateway first):

* `ssh host cat <file>` of --mb MiB of seeded log text (--random: random bytes), stock OpenSSH, the client's
  default cipher (chacha20-poly1305 for OpenSSH), and again with `-c aes128-gcm@openssh.com` (exec-gcm);
* `scp host:<file> /dev/null` (sftp protocol, OpenSSH's default; scp-O: legacy protocol) and `sftp -b` get;
* echo round trip: one byte into a PTY running `cat`, wait for its echo (asyncssh client, p50/p99);
* session set-up: asyncssh connect + auth, and to the first output byte of `echo ready` (p50), samples 0.5 s
  apart; and connect + auth back to back (each right after the last one closed: through the gateway it then
  shares the CPU with the previous session's end, whose detached-process sweep is a login of its own);
* gateway RSS per idle session: --sessions connections each with an idle PTY `cat`, RSS before/after.
Medians over rounds; ratios gateway/direct in the same round; the gateway's CPU per MB of each bulk transfer;
the bytes its recordings took. Prints a markdown table (docs/benchmarks.md, SSH).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncssh

from gateway.sandbox.sshd import SshServer

TARGET = "rig"
GCM = "aes128-gcm@openssh.com"
POLICY = """
target: rig
scopes:
  ops:
    max_ttl: 1h
    ssh:
      commands:
        - {name: no-rm-rf, pattern: "rm -rf /*", action: deny}
        - {name: passwd, pattern: "*passwd*", action: alert}
"""
OPENSSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "GSSAPIAuthentication=no", "-o", "IdentityAgent=none", "-o", "LogLevel=ERROR"]  # fmt: skip


def write_data(path: Path, mb: int, *, random_bytes: bool, seed: int = 14) -> None:
    """`mb` MiB of log-like text (what `cat` of a server's logs sends), or of random bytes (incompressible)."""
    target = mb << 20
    if random_bytes:
        with open(path, "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(1 << 20))
        return
    rng = random.Random(seed)  # the same text every run: compression ratios are comparable between runs
    verbs, codes = ("GET", "POST", "PUT", "DELETE"), (200, 200, 200, 304, 404, 500)
    urls = ("/api/v1/orders", "/api/v1/users", "/healthz", "/static/app.js", "/login", "/api/v2/invoices")
    procs = ("postgres", "sshd", "cron", "kernel", "systemd", "app-worker", "billing-api")
    msgs = ("connection accepted", "checkpoint complete", "session opened for user", "job finished", "cache miss")
    t, written = 1764720000.0, 0
    with open(path, "w") as f:
        while written < target:
            lines = []
            for _ in range(2000):
                t += rng.random() * 0.01
                ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
                if rng.random() < 0.6:
                    lines.append(f'{t:.6f} web{rng.randrange(40):02d} nginx: {ip} "{rng.choice(verbs)} '
                                 f'{rng.choice(urls)}/{rng.randrange(10**6)} HTTP/1.1" {rng.choice(codes)} '
                                 f"{rng.randrange(100000)} {rng.random():.4f}\n")  # fmt: skip
                else:
                    lines.append(f"{t:.6f} db{rng.randrange(8)} {rng.choice(procs)}[{rng.randrange(1, 65535)}]: "
                                 f"{rng.choice(msgs)} id={rng.getrandbits(64):016x} from {ip}\n")  # fmt: skip
            chunk = "".join(lines)
            f.write(chunk)
            written += len(chunk)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(base: Path, sshd: SshServer) -> Path:
    """A gateway.toml (and policy) for the sandbox sshd, as an operator would write it."""
    (base / "policies").mkdir(parents=True, exist_ok=True)
    (base / "policies" / "rig.yaml").write_text(POLICY)
    cfg = base / "gateway.toml"
    cfg.write_text(f"""
[listen]
ssh = "127.0.0.1:{free_port()}"
postgres = "127.0.0.1:{free_port()}"
http = "127.0.0.1:{free_port()}"
[store]
url = "sqlite:///{base}/gateway.db"
[paths]
keys = "{base}/keys"
policies = "{base}/policies"
recordings = "{base}/recordings"
[targets.{TARGET}]
kind = "ssh"
address = "{sshd.host}:{sshd.port}"
host_key = "{sshd.host_key_line}"
[targets.{TARGET}.logins.ops]
user = "{sshd.user}"
key_file = "{sshd.client_key_path}"
""")
    return cfg


# --- the gateway, in its own process -----------------------------------------------------------------


STOCK_PACKETS_ENV = "GATEWAY_BENCH_STOCK_PACKETS"


async def serve(config_path: str, recording: str = "zstd") -> None:
    """Run the SSH front end of the composition root until stdin closes; print the port when ready."""
    from gateway.app import App
    from gateway.config import load_config

    if recording == "off":  # --no-recording: the relay's own cost, for comparison only (never a deployment mode)
        from gateway.recording.writer import Recorder

        Recorder._append = lambda self, *a, **k: None  # type: ignore[method-assign]
    elif recording in ("plain", "compressed"):  # every frame plain (as version 2 wrote) / compressed: to compare
        from gateway.recording import blocks

        blocks.COMPRESS_BELOW = 0.0 if recording == "plain" else 1e30

    if os.environ.get(STOCK_PACKETS_ENV):  # --stock-packets: asyncssh's own packet layer, to compare
        from gateway.ssh import packets

        packets.install = lambda: True

    app = App(load_config(Path(config_path)), enable=("ssh",))
    await app.start()
    print(json.dumps({"port": app.listeners["ssh"].port, "pid": os.getpid()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await app.stop()


class GatewayProcess:
    """`bench/ssh.py --serve CONFIG` in a child process."""

    def __init__(self, config: Path, *, recording: str = "zstd") -> None:
        extra = {"zstd": [], "plain": ["--plain-recording"], "compressed": ["--compressed-recording"],
                 "off": ["--no-recording"]}[recording]  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(config), *extra], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.port: int = info["port"]
        self.pid: int = info["pid"]

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_ticks(self) -> int:
        """User + system CPU the gateway process has used (clock ticks)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    async def settle(self, limit: float = 120.0) -> None:
        """Wait until the gateway is quiet (ended sessions torn down) so the next measurement starts clean."""
        deadline = time.monotonic() + limit
        last = self.cpu_ticks()
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            now = self.cpu_ticks()
            if now - last <= 2:  # <= 2 % of a core over the last second
                return
            last = now

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


async def issue_token(config: Path) -> str:
    """A token for alice, scope ops, 1 h (the store is shared with the gateway process)."""
    from gateway.config import load_config
    from gateway.grants import issue_grant
    from gateway.services import build_services

    cfg = load_config(config)
    svc = await build_services(cfg)
    issued = await issue_grant(cfg, svc.ring, svc.store, svc.policies, user="alice", target=TARGET, scope="ops",
                               ttl=3600, reason="BENCH", approvers=("bob",), now=time.time())  # fmt: skip
    await svc.store.close()
    return issued.token


# --- measurements ------------------------------------------------------------------------------------


class Paths:
    """The two ways to the same server."""

    def __init__(self, sshd: SshServer, gw_port: int, token: str, cipher: str | None) -> None:
        self.sshd, self.gw_port, self.token = sshd, gw_port, token
        self.cipher = ["-o", f"Ciphers={cipher}"] if cipher else []

    def ssh(self, via: str, *cmd: str, opts: tuple[str, ...] = ()) -> list[str]:
        """`ssh [opts] host cmd...` on either path."""
        if via == "direct":
            return ["ssh", *OPENSSH_OPTS, *self.cipher, *opts, "-i", str(self.sshd.client_key_path),
                    "-p", str(self.sshd.port), f"{self.sshd.user}@{self.sshd.host}", *cmd]  # fmt: skip
        return ["sshpass", "-P", "Approval token", "-p", self.token, "ssh", *OPENSSH_OPTS, *self.cipher, *opts,
                "-o", "PubkeyAuthentication=no", "-p", str(self.gw_port), f"{TARGET}@127.0.0.1", *cmd]  # fmt: skip

    def scp(self, via: str, remote_path: str, legacy: bool) -> list[str]:
        flags = ["-O"] if legacy else []
        if via == "direct":
            return ["scp", *flags, *OPENSSH_OPTS, *self.cipher, "-i", str(self.sshd.client_key_path), "-P",
                    str(self.sshd.port), f"{self.sshd.user}@{self.sshd.host}:{remote_path}", "/dev/null"]  # fmt: skip
        return ["sshpass", "-P", "Approval token", "-p", self.token, "scp", *flags, *OPENSSH_OPTS, *self.cipher,
                "-o", "PubkeyAuthentication=no", "-P", str(self.gw_port), f"{TARGET}@127.0.0.1:{remote_path}",
                "/dev/null"]  # fmt: skip

    def sftp_get(self, via: str, remote_path: str) -> list[str]:
        """`sftp -b -`: one `get` to /dev/null (BatchMode=no first: -b turns it on, which refuses password auth)."""
        batch = ["-o", "BatchMode=no", "-b", "-"]
        if via == "direct":
            return ["sftp", *batch, *OPENSSH_OPTS, *self.cipher, "-i", str(self.sshd.client_key_path), "-P",
                    str(self.sshd.port), f"{self.sshd.user}@{self.sshd.host}"]  # fmt: skip
        return ["sshpass", "-P", "Approval token", "-p", self.token, "sftp", *batch, *OPENSSH_OPTS, *self.cipher,
                "-o", "PubkeyAuthentication=no", "-P", str(self.gw_port), f"{TARGET}@127.0.0.1"]  # fmt: skip

    async def connect(self, via: str) -> asyncssh.SSHClientConnection:
        opts: dict[str, Any] = {"known_hosts": None, "config": None, "agent_path": None}
        if via == "direct":
            return await asyncssh.connect(self.sshd.host, self.sshd.port, username=self.sshd.user,
                                          client_keys=[str(self.sshd.client_key_path)], **opts)  # fmt: skip
        return await asyncssh.connect("127.0.0.1", self.gw_port, username=TARGET, password=self.token,
                                      client_keys=None, preferred_auth="password", **opts)  # fmt: skip


def timed(argv: list[str], stdin: str | None = None) -> float:
    """Seconds one client command took (it must succeed)."""
    started = time.perf_counter()
    r = subprocess.run(argv, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if r.returncode != 0:
        raise RuntimeError(f"{argv[argv.index('ssh') if 'ssh' in argv else 0]} failed ({r.returncode}): {r.stderr}")
    return elapsed


async def echo_rtt(paths: Paths, via: str, n: int = 300) -> list[float]:
    """Seconds per one-byte round trip (PTY echo of a `cat` in canonical mode)."""
    async with await paths.connect(via) as conn:
        proc = await conn.create_process("cat", term_type="xterm", encoding=None)
        out: list[float] = []
        for i in range(n + 20):
            started = time.perf_counter()
            proc.stdin.write(b"x")
            await proc.stdout.readexactly(1)
            if i >= 20:
                out.append(time.perf_counter() - started)
        proc.stdin.write(b"\x04\x04")
        proc.close()
    return out


SETUP_PAUSE = 0.5
"""Seconds between set-up samples: the gateway's end of the previous session (its recording sealed, the
detached-process sweep, a login of its own on the target) is over before the next sample starts."""


async def setup_time(
    paths: Paths, via: str, n: int = 15, pause: float = SETUP_PAUSE
) -> tuple[list[float], list[float]]:
    """Seconds to an authenticated connection, and to the first output byte of a command (`pause` s apart)."""
    auth, first = [], []
    for _ in range(n):
        await asyncio.sleep(pause)
        started = time.perf_counter()
        async with await paths.connect(via) as conn:
            auth.append(time.perf_counter() - started)
            proc = await conn.create_process("echo ready")
            await proc.stdout.readline()
            first.append(time.perf_counter() - started)
            await proc.wait()
    return auth, first


async def idle_memory(paths: Paths, gw: GatewayProcess, sessions: int) -> tuple[int, int, int]:
    """(RSS kB before, after, sessions still open) with `sessions` idle PTY sessions through the gateway."""
    await asyncio.sleep(1)
    before = gw.rss_kb()
    conns: list[asyncssh.SSHClientConnection] = []
    procs = []
    for start in range(0, sessions, 20):  # in batches: sshd's MaxStartups counts unauthenticated connections
        batch = await asyncio.gather(*(paths.connect("gateway") for _ in range(start, min(sessions, start + 20))))
        conns += batch
        procs += await asyncio.gather(*(c.create_process("cat", term_type="xterm") for c in batch))
    await asyncio.sleep(2)
    after = gw.rss_kb()
    alive = sum(1 for p in procs if p.exit_status is None and not p.is_closing())
    for c in conns:
        c.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return before, after, alive


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def bench(args: argparse.Namespace) -> None:
    sshd = SshServer().start()
    base = Path(tempfile.mkdtemp(prefix="gw-bench-ssh-"))
    gw: GatewayProcess | None = None
    try:
        config = write_config(base, sshd)
        token = await issue_token(config)
        gw = GatewayProcess(config, recording=recording_mode(args))
        paths = Paths(sshd, gw.port, token, args.cipher)
        print(f"gateway pid {gw.pid} (for py-spy/perf)", file=sys.stderr)
        big = sshd.scratch_dir / "big.txt"
        write_data(big, args.mb, random_bytes=args.random)
        os.chmod(big, 0o644)
        mb = args.mb * 1.048576
        only = (
            set(args.only.split(",")) if args.only else {"exec", "exec-gcm", "scp", "sftp", "echo", "setup", "memory"}
        )
        before, after, alive = await idle_memory(paths, gw, args.sessions) if "memory" in only else (0, 0, 0)
        await gw.settle()
        results: dict[str, dict[str, list[float]]] = {}
        cpu_ms: dict[str, list[float]] = {}

        def add(name: str, via: str, value: float) -> None:
            results.setdefault(name, {}).setdefault(via, []).append(value)

        def bulk(name: str, via: str, argv: list[str], stdin: str | None = None) -> None:
            """One timed transfer; through the gateway also its CPU per MB (all its threads)."""
            ticks = gw.cpu_ticks() if gw is not None else 0
            add(name, via, mb / timed(argv, stdin))
            if via == "gateway" and gw is not None:
                cpu_ms.setdefault(name, []).append((gw.cpu_ticks() - ticks) * 1000 / os.sysconf("SC_CLK_TCK") / mb)

        for rnd in range(args.rounds):
            # Alternating: odd rounds run the gateway first, so a drift in the machine's load (or the page
            # cache filling with recordings) does not always land on the same side.
            for via in ("direct", "gateway") if rnd % 2 == 0 else ("gateway", "direct"):
                if "exec" in only:
                    bulk("exec cat MB/s", via, paths.ssh(via, "cat", str(big)))
                if "exec-gcm" in only:  # what a client preferring AES-GCM gets (stock OpenSSH picks chacha20)
                    bulk("exec cat, AES-GCM MB/s", via, paths.ssh(via, "cat", str(big), opts=("-c", GCM)))
                if "scp" in only:
                    bulk("scp (sftp) MB/s", via, paths.scp(via, str(big), legacy=False))
                if "scp-O" in only:
                    bulk("scp -O MB/s", via, paths.scp(via, str(big), legacy=True))
                if "sftp" in only:
                    bulk("sftp get MB/s", via, paths.sftp_get(via, str(big)), f"get {big} /dev/null\n")
                if "echo" in only:
                    rtt = await echo_rtt(paths, via)
                    add("echo p50 ms", via, 1000 * pct(rtt, 0.5))
                    add("echo p99 ms", via, 1000 * pct(rtt, 0.99))
                if "setup" in only:
                    auth, first = await setup_time(paths, via)
                    add("connect+auth p50 ms", via, 1000 * pct(auth, 0.5))
                    add("to first output p50 ms", via, 1000 * pct(first, 0.5))
                    auth, _ = await setup_time(paths, via, pause=0.0)  # each right after the last one's end
                    add("connect+auth back-to-back p50 ms", via, 1000 * pct(auth, 0.5))
            print(f"round {rnd + 1}: " + ", ".join(f"{k} {v['direct'][-1]:.1f}/{v['gateway'][-1]:.1f}"
                                                   for k, v in results.items()), file=sys.stderr)  # fmt: skip
        recorded = sum(f.stat().st_size for f in (base / "recordings").rglob("*") if f.is_file())
        report(args, results, before, after, alive, recorded, cpu_ms)
    finally:
        if gw is not None:
            gw.stop()
        sshd.stop()
        shutil.rmtree(base, ignore_errors=True)


def report(args: argparse.Namespace, results: dict[str, dict[str, list[float]]], before: int, after: int,
           alive: int, recorded: int, cpu_ms: dict[str, list[float]]) -> None:  # fmt: skip
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, Linux {platform.release()}, "
          f"CPython {platform.python_version()}, asyncssh {asyncssh.__version__}, "
          f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}")  # fmt: skip
    print(f"Command: `.venv/bin/python bench/ssh.py --rounds {args.rounds} --mb {args.mb} --sessions {args.sessions}"
          + (f" --cipher {args.cipher}" if args.cipher else "")
          + (f" --only {args.only}" if args.only else "")
          + (" --random" if args.random else "")
          + (" --plain-recording" if args.plain_recording else "")
          + (" --compressed-recording" if args.compressed_recording else "")
          + (" --no-recording" if args.no_recording else "")
          + (" --stock-packets" if args.stock_packets else "") + "`\n")  # fmt: skip
    print("| measure | direct (median) | gateway (median) | gateway / direct (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for name, by in results.items():
        ratios = [g / d for d, g in zip(by["direct"], by["gateway"], strict=True)]
        print(f"| {name} | {statistics.median(by['direct']):.1f} | {statistics.median(by['gateway']):.1f} "
              f"| {statistics.median(ratios):.2f} |")  # fmt: skip
    for name in ("connect+auth p50 ms", "to first output p50 ms", "connect+auth back-to-back p50 ms"):
        if name not in results:
            continue
        by = results[name]
        print(f"\nSet-up overhead, {name.removesuffix(' p50 ms')} (gateway - direct, p50): "
              f"{statistics.median(by['gateway']) - statistics.median(by['direct']):.1f} ms")  # fmt: skip
    for name, values in cpu_ms.items():
        print(f"\nGateway CPU, {name.removesuffix(' MB/s')}: {statistics.median(values):.2f} ms per MB "
              "(all threads; median of rounds)")  # fmt: skip
    bulk = sum(len(by["gateway"]) for name, by in results.items() if name.endswith("MB/s"))
    if bulk:
        print(f"\nRecordings written: {recorded / 2**20:.0f} MiB for {bulk} bulk transfers of {args.mb} MiB "
              f"({bulk * args.mb / max(recorded / 2**20, 1e-9):.1f}x smaller than the data relayed)")  # fmt: skip
    if not before:
        return
    print(f"\nGateway RSS: {before / 1024:.1f} MiB idle, {after / 1024:.1f} MiB with {args.sessions} idle PTY sessions "
          f"({alive} still open at measurement) -> {(after - before) / args.sessions:.0f} KiB per session")  # fmt: skip


def recording_mode(args: argparse.Namespace) -> str:
    """zstd (as deployed: the auto policy), plain, compressed or off."""
    if args.no_recording:
        return "off"
    return "plain" if args.plain_recording else "compressed" if args.compressed_recording else "zstd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--cipher", help="force one cipher on both paths (e.g. aes128-gcm@openssh.com)")
    parser.add_argument(
        "--only",
        help="comma-separated subset of exec,exec-gcm,scp,scp-O,sftp,echo,setup,memory (default: all but scp-O)",
    )
    parser.add_argument("--random", action="store_true", help="random bytes (incompressible) instead of log text")
    parser.add_argument(
        "--plain-recording",
        action="store_true",
        help="recordings without compressed blocks (the CPU/disk trade-off, for comparison)",
    )
    parser.add_argument(
        "--compressed-recording",
        action="store_true",
        help="compress every bulk recording slice, however fast the disk (for comparison)",
    )
    parser.add_argument("--no-recording", action="store_true", help="stub the recorder out (relay cost only)")
    parser.add_argument(
        "--stock-packets",
        action="store_true",
        help="the gateway on asyncssh's own packet layer (gateway/ssh/packets.py not installed), to compare",
    )
    args = parser.parse_args()
    if args.stock_packets:
        os.environ[STOCK_PACKETS_ENV] = "1"  # the gateway's child process inherits it
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve, recording=recording_mode(args)))
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
