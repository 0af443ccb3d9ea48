"""The Postgres path against direct and pgbouncer (plain and with client TLS), alternating rounds; medians and ratios.

    .venv/bin/python bench/pg.py --rounds 5 [--seconds 10] [--bulk-mb 1024] [--markdown out.md]
    .venv/bin/python bench/pg.py --rounds 2 --seconds 5 --bulk-mb 100 --burst 100     # a quick look

Starts a throwaway PostgreSQL (gateway.sandbox; max_connections raised for the burst), initialises pgbench tables
(owned by app_admin, readable by the SELECT-only app_ro), two pgbouncers 1.18 in session mode (one plain, one with
client_tls_sslmode=require and a self-signed pair made by openssl) and the gateway (its own process on uvloop, TLS
required, policy and statement recording on; `read` scope for pgbench, `admin` scope for COPY and pg_dump),
once as one process and once as `gateway-2w`, two workers on one port and store as `[listen] workers = 2` runs
them (gateway/workers.py; CPU is summed over both), and as `gateway-mypyc`, one process running a copy of the
package with the hot modules compiled (`scripts/build-mypyc --into`, built at the start; the other gateway rows
run whatever this tree has, "compiled" in the run's details says which). Every round runs every test against
every target in turn (the order rotates each round):

- tps-simple / tps-prepared: `pgbench -n -S -M simple|prepared -c 8 -j 2 -T <seconds>`; also the proxy's CPU
  per transaction (utime+stime of its process over the run / transactions).
- latency: `pgbench -n -S -M prepared -c 1 -j 1 -T <seconds> -l`: p50 / p99 of the per-statement latencies.
- bulk: `psql -c "COPY (SELECT * FROM pgbench_accounts) TO STDOUT" ... | wc -c`, the COPY repeated in one session
  to about --bulk-mb MB (~100-byte rows), MB/s.
- dump: `pg_dump` (plain format) of the bench database to /dev/null, seconds and MB/s.
- setup: --connects sequential connections (connect, TLS, auth, SELECT 1, close) with libpq (psycopg): p50/p99.
- burst: --burst connections opened at once (asyncio, psycopg), each SELECT 1; all must succeed.

Ratios are of the medians over the rounds; "gateway / pgbouncer-tls" is the equal-terms comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

# This tree's package, unless a gateway-mypyc process was pointed at a compiled copy (BENCH_PACKAGE).
sys.path.insert(0, os.environ.get("BENCH_PACKAGE") or str(Path(__file__).resolve().parents[1]))

from gateway.sandbox.postgres import PG_OS_USER, PgCluster

TESTS = ("tps-simple", "tps-prepared", "latency", "bulk", "dump", "setup", "burst")
ROOT = Path(__file__).resolve().parents[1]
TARGETS = (
    "direct",
    "pgbouncer",
    "pgbouncer-tls",
    "python-relay",
    "gateway",
    "gateway-mypyc",
    "gateway-2w",
    "gateway-notls",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BenchCluster(PgCluster):
    """The sandbox cluster with room for the burst (its default max_connections is 200) and quiet logs."""

    def _conf(self) -> str:
        return super()._conf() + "max_connections = 700\nlog_connections = off\n"


# --- the gateway, in its own process -----------------------------------------------------------------


async def serve(spec: dict[str, Any]) -> None:
    """Run a gateway for the cluster in `spec`; print its port and read/admin tokens; serve until stdin closes."""
    from gateway.config import Address, Config, Login, Target, WorkerSlot
    from gateway.grants import issue_grant
    from gateway.pg.listener import PostgresListener
    from gateway.secret import Secret
    from gateway.services import build_services

    base = Path(spec["base"])
    logins = {
        "read": Login("read", "app_ro", Secret(spec["ro"])),
        "admin": Login("admin", "app_admin", Secret(spec["admin"])),
    }
    target = Target(name="orders", kind="postgres", address=Address("127.0.0.1", spec["pg_port"]), logins=logins,
                    database="orders")  # fmt: skip
    # A worker of a gateway with `[listen] workers = N` (gateway/workers.py): the same port (SO_REUSEPORT) and
    # store as its siblings; the first makes the keys and issues the tokens, the others start after it.
    w = spec.get("worker")
    slot = WorkerSlot(w["index"], w["count"], Path(w["run_dir"])) if w else None
    config = Config(path=None, base_dir=base, listen_postgres=Address("127.0.0.1", spec.get("port", 0)), worker=slot,
                    store_url=f"sqlite:///{base}/gateway.db", keys_dir=base / "keys", policies_dir=base / "policies",
                    recordings_dir=base / "recordings", tls_cert=base / "keys/tls.crt", tls_key=base / "keys/tls.key",
                    pg_require_tls=spec["require_tls"], targets={"orders": target})  # fmt: skip
    services = await build_services(config)
    listener = PostgresListener(services)
    await listener.start()
    tokens = {}
    for scope in ("read", "admin") if not slot or slot.index == 0 else ():
        issued = await issue_grant(config, services.ring, services.store, services.policies, user="bench",
                                   target="orders", scope=scope, ttl=3600, reason="BENCH", approvers=("ops",),
                                   now=time.time())  # fmt: skip
        tokens[scope] = issued.token
    print(json.dumps({"port": listener.port, "tokens": tokens, "compiled": compiled()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.close()
    await services.close()


def start_gateway(
    cluster: PgCluster, base: Path, *, require_tls: bool, workers: int = 1, package: Path | None = None
) -> tuple[list[subprocess.Popen[str]], int, dict[str, str]]:
    """The gateway's processes (one, or `workers` on one port), its port and tokens; `package`: the folder
    holding the `gateway` package to run instead of this tree's (a compiled copy)."""
    spec: dict[str, Any] = {"base": str(base), "pg_port": cluster.port, "ro": cluster.passwords["app_ro"],
                            "admin": cluster.passwords["app_admin"], "require_tls": require_tls}  # fmt: skip
    procs: list[subprocess.Popen[str]] = []
    port, tokens = 0, dict[str, str]()
    for i in range(workers):
        if workers > 1:
            spec["worker"] = {"index": i, "count": workers, "run_dir": str(base)}
            spec["port"] = port
        env = {**os.environ, "BENCH_PACKAGE": str(package)} if package else None
        proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        procs.append(proc)
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        port, tokens = int(info["port"]), tokens or dict(info["tokens"])
        if package is not None and info["compiled"] != "mypyc":
            raise RuntimeError(f"the gateway in {package} did not run compiled modules")
    return procs, port, tokens


# --- the floor: a bare TLS relay in Python on uvloop ----------------------------------------------------


async def bare_relay(spec: dict[str, Any]) -> None:
    """TLS from the client, bytes copied both ways, nothing else (no token, policy or recording): what Python
    on uvloop costs before the gateway does any work. The client logs in to PostgreSQL through it directly."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(spec["cert"], spec["key"])

    class Side(asyncio.Protocol):
        other: asyncio.Transport | None = None

        def data_received(self, data: bytes) -> None:
            assert self.other is not None
            self.other.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.other is not None:
                self.other.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)  # SSLRequest
        writer.write(b"S")
        await writer.start_tls(ctx)
        client = cast(asyncio.Transport, writer.transport)
        up, up_side = await asyncio.get_running_loop().create_connection(Side, "127.0.0.1", spec["pg_port"])
        side = Side()
        side.other, up_side.other = up, client
        client.set_protocol(side)
        left = bytes(reader._buffer)  # type: ignore[attr-defined]  # what StreamReader read past the handshake
        if left:
            up.write(left)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps({"port": srv.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def start_bare_relay(cluster: PgCluster) -> tuple[subprocess.Popen[str], int]:
    crt, key = self_signed(Path(tempfile.mkdtemp(prefix="gw-bare-")))
    spec = {"pg_port": cluster.port, "cert": str(crt), "key": str(key)}
    proc = subprocess.Popen([sys.executable, __file__, "--relay", json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    return proc, int(json.loads(proc.stdout.readline())["port"])


# --- pgbouncer -------------------------------------------------------------------------------------------


def self_signed(base: Path) -> tuple[Path, Path]:
    """A self-signed pair made by openssl, as an operator would for pgbouncer."""
    crt, key = base / "tls.crt", base / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)  # fmt: skip
    return crt, key


def start_pgbouncer(cluster: PgCluster, *, tls: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        subprocess.run(["apt-get", "install", "-y", "pgbouncer"], check=True)
    base = Path(tempfile.mkdtemp(prefix="gw-bouncer-"))
    port = free_port()
    (base / "users.txt").write_text(f'"app_ro" "{cluster.passwords["app_ro"]}"\n'
                                    f'"app_admin" "{cluster.passwords["app_admin"]}"\n')  # fmt: skip
    ini = f"""[databases]
orders = host=127.0.0.1 port={cluster.port} dbname=orders
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {base}/users.txt
pool_mode = session
max_client_conn = 1000
default_pool_size = 20
logfile = {base}/pgbouncer.log
pidfile = {base}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
"""
    if tls:
        crt, key = self_signed(base)
        ini += f"client_tls_sslmode = require\nclient_tls_cert_file = {crt}\nclient_tls_key_file = {key}\n"
    (base / "pgbouncer.ini").write_text(ini)
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        import pwd

        u = pwd.getpwnam(PG_OS_USER)
        for p in base.iterdir():
            os.chown(p, u.pw_uid, u.pw_gid)
        os.chown(base, u.pw_uid, u.pw_gid)
        kwargs = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []}
    proc = subprocess.Popen([exe, "-q", str(base / "pgbouncer.ini")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kwargs)  # fmt: skip
    time.sleep(1.0)
    return proc, port


# --- the tests ---------------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """How to reach one target: port, read and admin credentials, sslmode, and the proxy's pid (CPU)."""

    name: str
    port: int
    user: str
    password: str
    admin_user: str
    admin_password: str
    sslmode: str
    pids: tuple[int, ...]  # the proxy's processes (a gateway's workers), for CPU; none for direct

    def env(self, *, admin: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=self.admin_password if admin else self.password, PGSSLMODE=self.sslmode,
                   PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER=self.admin_user if admin else self.user,
                   PGDATABASE="orders")  # fmt: skip
        return env

    def conninfo(self) -> str:
        return (f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} dbname=orders "
                f"sslmode={self.sslmode}")  # fmt: skip


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """utime + stime of the processes (0 when there is none to watch: direct)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def pgbench(ep: Endpoint, mode: str, seconds: int, clients: int, log_dir: Path | None = None) -> tuple[float, int]:
    """TPS and transactions of one pgbench -S run."""
    cmd = ["pgbench", "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds)]
    if log_dir is not None:
        cmd += ["-l", f"--log-prefix={log_dir}/tx"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ep.env(), timeout=seconds + 60, cwd=log_dir)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    n = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    if proc.returncode != 0 or m is None or n is None:
        raise RuntimeError(f"pgbench failed on {ep.name}: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
    return float(m.group(1)), int(n.group(1))


PERF_HZ = 999
# perf's shared objects, grouped: where a proxy's CPU per transaction goes (--perf).
PERF_GROUPS = (
    ("kernel", ("[kernel",)),
    ("interpreter", ("libpython",)),
    ("compiled", ("__mypyc", "machine.cpython", "journal.cpython", "codec.cpython", "fastdecode.cpython")),
    ("uvloop", ("loop.cpython",)),
    ("OpenSSL", ("libssl", "libcrypto", "_ssl.")),
    ("libc", ("libc.",)),
)


def perf_split(data: Path, window: float, tps: float) -> dict[str, float]:
    """us of CPU per transaction by group of shared objects, from `perf record` samples over `window` seconds."""
    out = subprocess.run(["perf", "report", "-i", str(data), "-n", "--sort", "dso", "--stdio", "-g", "none"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    split = dict.fromkeys([g for g, _ in PERF_GROUPS] + ["other"], 0.0)
    for line in out.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\S+)", line)
        if m is None:
            continue
        group = next((g for g, keys in PERF_GROUPS if any(k in m.group(2) for k in keys)), "other")
        split[group] += int(m.group(1)) / PERF_HZ / (tps * window) * 1e6
    return {f"perf:{k}": v for k, v in split.items()}


def test_tps(ep: Endpoint, args: argparse.Namespace, mode: str) -> dict[str, float]:
    cpu0 = cpu_seconds(ep.pids)
    sampler, window = None, max(1.0, args.seconds - 2.0)
    if args.perf and ep.pids and mode == "prepared":
        data = Path(tempfile.mkdtemp(prefix="gw-bench-perf-")) / "perf.data"
        sampler = subprocess.Popen(["perf", "record", "-q", "-F", str(PERF_HZ), "-p", ",".join(map(str, ep.pids)),
                                    "-o", str(data), "--", "sleep", str(window)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
    tps, n = pgbench(ep, mode, args.seconds, 8)
    out = {"tps": tps}
    if ep.pids:
        out["cpu_us_per_tx"] = (cpu_seconds(ep.pids) - cpu0) / n * 1e6
    if sampler is not None:
        sampler.wait(60)
        out.update(perf_split(data, window, tps))
        shutil.rmtree(data.parent, ignore_errors=True)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def test_latency(ep: Endpoint, args: argparse.Namespace) -> dict[str, float]:
    cpu0 = cpu_seconds(ep.pids)
    with tempfile.TemporaryDirectory(prefix="gw-pgbench-log-") as d:
        _, n = pgbench(ep, "prepared", args.seconds, 1, Path(d))
        lat = [float(line.split()[2]) for p in Path(d).iterdir() for line in p.open()]
    out = {"p50_us": pct(lat, 0.5), "p99_us": pct(lat, 0.99)}
    if ep.pids:
        out["cpu_us_per_tx"] = (cpu_seconds(ep.pids) - cpu0) / n * 1e6
    return out


def test_bulk(ep: Endpoint, args: argparse.Namespace) -> dict[str, float]:
    # pgbench_accounts is ~100-byte rows, about 12 MB a scale unit: repeated in one session to reach --bulk-mb
    times = max(1, round(args.bulk_mb / (12.1 * args.scale)))
    cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-c", "COPY (SELECT * FROM pgbench_accounts) TO STDOUT"] * times
    t0 = time.perf_counter()
    proc = subprocess.run(["sh", "-c", '"$@" | wc -c', "sh", *cmd], env=ep.env(admin=True), capture_output=True,
                          text=True, check=True)  # fmt: skip
    dt = time.perf_counter() - t0
    size = int(proc.stdout.strip() or 0)
    if size < times * args.scale * 9_000_000 or proc.stderr.strip():
        raise RuntimeError(f"COPY through {ep.name} returned {size} bytes: {proc.stderr[-800:]}")
    return {"mb_s": size / dt / 1e6, "seconds": dt}


def test_dump(ep: Endpoint, args: argparse.Namespace) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(["sh", "-c", "pg_dump --no-password orders | wc -c"], env=ep.env(admin=True),
                          capture_output=True, text=True, check=True)  # fmt: skip
    dt = time.perf_counter() - t0
    size = int(proc.stdout.strip() or 0)
    if size < 1_000_000:
        raise RuntimeError(f"pg_dump through {ep.name} returned {size} bytes: {proc.stderr[-800:]}")
    return {"mb_s": size / dt / 1e6, "seconds": dt}


def test_setup(ep: Endpoint, args: argparse.Namespace) -> dict[str, float]:
    import psycopg

    times = []
    info = ep.conninfo()
    for _ in range(args.connects):
        t0 = time.perf_counter()
        with psycopg.connect(info, autocommit=True) as conn:
            conn.execute("SELECT 1").fetchone()
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99)}


def test_burst(ep: Endpoint, args: argparse.Namespace) -> dict[str, float]:
    import psycopg

    async def one(info: str) -> float:
        t0 = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(info, autocommit=True) as conn:
            await (await conn.execute("SELECT 1")).fetchone()
        return (time.perf_counter() - t0) * 1000

    async def burst() -> tuple[list[float], int, float]:
        t0 = time.perf_counter()
        got = await asyncio.gather(*(one(ep.conninfo()) for _ in range(args.burst)), return_exceptions=True)
        wall = time.perf_counter() - t0
        ok = [g for g in got if isinstance(g, float)]
        failed = [g for g in got if not isinstance(g, float)]
        if failed:
            print(f"  {ep.name}: {len(failed)} of {args.burst} failed, e.g. {failed[0]!r}"[:400], flush=True)
        return ok, len(failed), wall

    ok, failed, wall = asyncio.run(burst())
    return {"ok": float(len(ok)), "failed": float(failed), "wall_s": wall, "p99_ms": pct(ok, 0.99) if ok else 0.0}


RUNNERS: dict[str, Callable[[Endpoint, argparse.Namespace], dict[str, float]]] = {
    "tps-simple": lambda ep, a: test_tps(ep, a, "simple"),
    "tps-prepared": lambda ep, a: test_tps(ep, a, "prepared"),
    "latency": test_latency,
    "bulk": test_bulk,
    "dump": test_dump,
    "setup": test_setup,
    "burst": test_burst,
}
HEADLINE = {"tps-simple": "tps", "tps-prepared": "tps", "latency": "p50_us", "bulk": "mb_s", "dump": "mb_s",
            "setup": "p50_ms", "burst": "ok"}  # fmt: skip


# --- the report ------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    return {"python": platform.python_version(), "uvloop": importlib.metadata.version("uvloop"),
            "pgbench": out("pgbench", "--version"), "pgbouncer": out("pgbouncer", "--version"),
            "kernel": platform.release(), "compiled": compiled(),
            "cpu": out("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
            "cores": str(os.cpu_count())}  # fmt: skip


def compiled() -> str:
    """Whether the gateway runs the mypyc-built modules (bench/README: scripts/build-mypyc) or pure Python."""
    import gateway.pg.machine as m

    return "mypyc" if not m.__file__ or not m.__file__.endswith(".py") else "pure-python"


Results = dict[tuple[str, str], list[dict[str, float]]]


def medians(results: Results, test: str, target: str) -> dict[str, float]:
    runs = results.get((test, target), [])
    if not runs:
        return {}
    return {k: statistics.median(r[k] for r in runs if k in r) for k in runs[0]}


def report(results: Results, tests: list[str], targets: list[str]) -> list[str]:
    """The markdown table: medians per target, then the gateway against each of the others."""
    # The gateway against every other; its variants against their equal-terms peer only (a readable table).
    peers = {"gateway": ("pgbouncer-tls", "pgbouncer", "direct"), "gateway-mypyc": ("pgbouncer-tls", "direct"),
             "gateway-2w": ("pgbouncer-tls",), "gateway-notls": ("pgbouncer",)}  # fmt: skip
    ratio_cols = [(g, o) for g in targets if g in peers for o in peers[g] if o in targets]
    head = " | ".join([*targets, *(f"{g} / {o}" for g, o in ratio_cols)])
    lines = [f"| test | {head} |", "| --- " * (len(targets) + len(ratio_cols) + 1) + "|"]
    for test in tests:
        key = HEADLINE[test]
        med = {t: medians(results, test, t) for t in targets}
        cells = []
        for t in targets:
            m = med[t]
            if not m:
                cells.append("failed")
                continue
            cell = f"{m[key]:.0f}" if m[key] >= 100 else f"{m[key]:.2f}"
            extra = [f"{k} {v:.0f}" if v >= 100 else f"{k} {v:.2f}" for k, v in m.items()
                     if k != key and not k.startswith("perf:")]  # fmt: skip
            cells.append(cell + (f" ({', '.join(extra)})" if extra else ""))
        ratios = []
        for gname, other in ratio_cols:
            g, o = med.get(gname, {}), med.get(other, {})
            if not g or not o or not o.get(key):
                ratios.append("")
            elif test == "latency":
                ratios.append(f"{g[key] - o[key]:+.0f} us (p99 {g['p99_us'] - o['p99_us']:+.0f})")
            elif test == "burst":
                ratios.append(f"{g['ok']:.0f} ok / {o['ok']:.0f} ok")
            else:
                ratios.append(f"{g[key] / o[key]:.2f}x")
        lines.append(f"| {test} ({key}) | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines


def perf_table(results: Results, targets: list[str]) -> list[str]:
    """With --perf: each proxy's CPU per prepared transaction by where it ran (medians of the rounds)."""
    groups = [g for g, _ in PERF_GROUPS] + ["other"]
    rows = [(t, medians(results, "tps-prepared", t)) for t in targets]
    rows = [(t, m) for t, m in rows if "perf:kernel" in m]
    if not rows:
        return []
    lines = ["| proxy (us of CPU per tx, pgbench -S -M prepared -c 8, perf samples) | " + " | ".join(groups)
             + " | sum | cpu_us_per_tx (/proc) |", "| --- " * (len(groups) + 3) + "|"]  # fmt: skip
    for t, m in rows:
        cells = [f"{m['perf:' + g]:.1f}" for g in groups]
        total = sum(m["perf:" + g] for g in groups)
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {total:.1f} | {m['cpu_us_per_tx']:.1f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10, help="length of each pgbench run")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--bulk-mb", type=float, default=1024, help="size of the COPY TO STDOUT (MB)")
    ap.add_argument("--connects", type=int, default=200, help="sequential connections per setup run")
    ap.add_argument("--burst", type=int, default=500, help="connections opened at once")
    ap.add_argument("--tests", default=",".join(TESTS), help="comma-separated subset of " + ",".join(TESTS))
    ap.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="subset of " + ",".join(TARGETS) + " (gateway-2w: two workers, gateway-notls: no TLS)",
    )
    ap.add_argument("--markdown", type=Path, help="also write the table (and the run's details) here")
    ap.add_argument(
        "--perf",
        action="store_true",
        help="sample each proxy with perf during tps-prepared: CPU per transaction by shared object",
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--relay", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve or args.relay:
        import uvloop

        main_coro = serve(json.loads(args.serve)) if args.serve else bare_relay(json.loads(args.relay))
        if not os.environ.get("BENCH_CPROFILE"):
            uvloop.run(main_coro)
            return 0
        import cProfile  # BENCH_CPROFILE=out.prof: the proxy's calls, counted exactly (docs/benchmarks.md)

        prof = cProfile.Profile()
        prof.runcall(uvloop.run, main_coro)
        prof.dump_stats(f"{os.environ['BENCH_CPROFILE']}.{os.getpid()}")
        return 0

    tests = [t for t in TESTS if t in args.tests.split(",")]
    wanted = args.targets.split(",")
    cluster = BenchCluster().start()
    procs: list[subprocess.Popen[Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        admin = cluster.passwords["app_admin"]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "PGPASSWORD": admin}
        subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(cluster.port),
                        "-U", "app_admin", "orders"], check=True, env=env, capture_output=True)  # fmt: skip
        ro = cluster.passwords["app_ro"]
        eps: list[Endpoint] = []
        if "direct" in wanted:
            eps.append(Endpoint("direct", cluster.port, "app_ro", ro, "app_admin", admin, "disable", ()))
        for name, tls in (("pgbouncer", False), ("pgbouncer-tls", True)):
            if name in wanted:
                proc, port = start_pgbouncer(cluster, tls=tls)
                procs.append(proc)
                eps.append(Endpoint(name, port, "app_ro", ro, "app_admin", admin, "require" if tls else "disable",
                                    (proc.pid,)))  # fmt: skip
                print(f"{name} pid {proc.pid}", flush=True)
        if "python-relay" in wanted:
            relay, port = start_bare_relay(cluster)
            procs.append(relay)
            eps.append(Endpoint("python-relay", port, "app_ro", ro, "app_admin", admin, "require", (relay.pid,)))
            print(f"python-relay pid {relay.pid}", flush=True)
        base = Path(tempfile.mkdtemp(prefix="gw-bench-"))
        package = None
        if "gateway-mypyc" in wanted:
            package = base / "mypyc"
            subprocess.run(["bash", str(ROOT / "scripts/build-mypyc"), "--into", str(package)], check=True)
        for name, tls, n in (("gateway", True, 1), ("gateway-mypyc", True, 1), ("gateway-notls", False, 1),
                             ("gateway-2w", True, 2)):  # fmt: skip
            if name in wanted:
                gws, port, tokens = start_gateway(cluster, base / name, require_tls=tls, workers=n,
                                                  package=package if name == "gateway-mypyc" else None)  # fmt: skip
                procs.extend(gws)
                eps.append(Endpoint(name, port, "bench", tokens["read"], "bench", tokens["admin"],
                                    "require" if tls else "disable", tuple(g.pid for g in gws)))  # fmt: skip
                print(f"{name} pid {' '.join(str(g.pid) for g in gws)}", flush=True)
        results: Results = {}
        for r in range(args.rounds):
            order = eps[r % len(eps) :] + eps[: r % len(eps)]
            for test in tests:
                for ep in order:
                    try:
                        res = RUNNERS[test](ep, args)
                    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                        print(f"round {r + 1} {test:12} {ep.name:14} FAILED: {exc}"[:1000], flush=True)
                        continue
                    results.setdefault((test, ep.name), []).append(res)
                    shown = "  ".join(f"{k}={v:.1f}" for k, v in res.items())
                    print(f"round {r + 1} {test:12} {ep.name:14} {shown}", flush=True)
        names = [ep.name for ep in eps]
        table = report(results, tests, names)
        if args.perf:
            table += ["", *perf_table(results, names)]
        recs = sorted(base.rglob("*.sql.jsonl"))
        nlines = sum(1 for p in recs for _ in p.open())
        info = versions()
        cmd = "python bench/pg.py " + " ".join(a for a in sys.argv[1:])
        print(f"\nmedians of {args.rounds} rounds ({started}); {json.dumps(info)}")
        print("\n".join(table))
        print(f"gateway recordings: {len(recs)} files, {nlines} lines")
        if args.markdown:
            args.markdown.write_text(f"Run {started}: `{cmd}`\n\n{json.dumps(info)}\n\n" + "\n".join(table) + "\n")
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()  # a proxy of ours ends on it (and writes its BENCH_CPROFILE stats)
            try:
                p.wait(10 if p.stdin else 0)
            except subprocess.TimeoutExpired:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
