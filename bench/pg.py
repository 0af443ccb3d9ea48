"""pgbench -S through the gateway vs direct vs pgbouncer (session mode), alternating rounds; medians and ratios.

    .venv/bin/python bench/pg.py [--rounds 3] [--seconds 10] [--scale 10]

Starts a throwaway PostgreSQL (gateway.sandbox), initialises pgbench tables (owned by app_admin, readable by the
SELECT-only app_ro), starts pgbouncer (session pooling, as the unprivileged sandbox user when root) and the gateway
(a separate process on uvloop, policy and statement recording on, `read` scope) and runs
`pgbench -n -S -M simple|prepared -c 8 -j 2 -T <seconds>` against each, alternating, for several rounds.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sandbox.postgres import PG_OS_USER, PgCluster

MODES = ("simple", "prepared")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the gateway, in its own process -----------------------------------------------------------------


async def serve(spec: dict[str, Any]) -> None:
    """Run a gateway for the cluster in `spec`; print its port and a read-scope token; serve until stdin closes."""
    from gateway.config import Address, Config, Login, Target
    from gateway.grants import issue_grant
    from gateway.pg.listener import PostgresListener
    from gateway.secret import Secret
    from gateway.services import build_services

    base = Path(spec["base"])
    target = Target(name="orders", kind="postgres", address=Address("127.0.0.1", spec["pg_port"]),
                    logins={"read": Login("read", "app_ro", Secret(spec["password"]))}, database="orders")  # fmt: skip
    config = Config(path=None, base_dir=base, listen_postgres=Address("127.0.0.1", 0),
                    store_url=f"sqlite:///{base}/gateway.db", keys_dir=base / "keys", policies_dir=base / "policies",
                    recordings_dir=base / "recordings", tls_cert=base / "keys/tls.crt", tls_key=base / "keys/tls.key",
                    pg_require_tls=spec["require_tls"], targets={"orders": target})  # fmt: skip
    services = await build_services(config)
    listener = PostgresListener(services)
    await listener.start()
    issued = await issue_grant(config, services.ring, services.store, services.policies, user="bench", target="orders",
                               scope="read", ttl=3600, reason="BENCH", approvers=("ops",), now=time.time())  # fmt: skip
    print(json.dumps({"port": listener.port, "token": issued.token}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.close()
    await services.close()


def start_gateway(cluster: PgCluster, base: Path, *, require_tls: bool) -> tuple[subprocess.Popen[str], int, str]:
    spec = {"base": str(base), "pg_port": cluster.port, "password": cluster.passwords["app_ro"],
            "require_tls": require_tls}  # fmt: skip
    proc = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return proc, int(info["port"]), str(info["token"])


# --- pgbouncer -------------------------------------------------------------------------------------------


def start_pgbouncer(cluster: PgCluster, *, tls: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        subprocess.run(["apt-get", "install", "-y", "pgbouncer"], check=True)
    base = Path(tempfile.mkdtemp(prefix="gw-bouncer-"))
    port = free_port()
    (base / "users.txt").write_text(f'"app_ro" "{cluster.passwords["app_ro"]}"\n')
    (base / "pgbouncer.ini").write_text(f"""[databases]
orders = host=127.0.0.1 port={cluster.port} dbname=orders
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {base}/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
logfile = {base}/pgbouncer.log
pidfile = {base}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
""")
    if tls:
        from gateway.keyfiles import ensure_tls_cert

        ensure_tls_cert(base / "tls.crt", base / "tls.key")
        with (base / "pgbouncer.ini").open("a") as f:
            f.write(f"client_tls_sslmode = require\nclient_tls_cert_file = {base}/tls.crt\n"
                    f"client_tls_key_file = {base}/tls.key\n")  # fmt: skip
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


# --- pgbench ---------------------------------------------------------------------------------------------


def pgbench(port: int, user: str, password: str, mode: str, seconds: int, *, sslmode: str = "prefer") -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGSSLMODE=sslmode)
    cmd = ["pgbench", "-n", "-S", "-M", mode, "-c", "8", "-j", "2", "-T", str(seconds), "-h", "127.0.0.1",
           "-p", str(port), "-U", user, "orders"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"pgbench failed on port {port}: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
    return float(m.group(1))


def versions() -> dict[str, str]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    return {"python": platform.python_version(), "uvloop": importlib.metadata.version("uvloop"),
            "pgbench": out("pgbench", "--version"), "pgbouncer": out("pgbouncer", "--version"),
            "kernel": platform.release(),
            "cpu": out("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
            "cores": str(os.cpu_count())}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument(
        "--targets",
        default="direct,pgbouncer,pgbouncer-tls,gateway,gateway-notls",
        help="comma-separated subset of the targets to run (ratios need pgbouncer and gateway)",
    )
    ap.add_argument("--modes", default=",".join(MODES), help="simple, prepared or both")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(json.loads(args.serve)))
        return 0

    cluster = PgCluster().start()
    procs: list[subprocess.Popen[Any]] = []
    try:
        admin = cluster.passwords["app_admin"]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "PGPASSWORD": admin}
        subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(cluster.port),
                        "-U", "app_admin", "orders"], check=True, env=env, capture_output=True)  # fmt: skip
        bouncer, bouncer_port = start_pgbouncer(cluster)
        procs.append(bouncer)
        bouncer_tls, bouncer_tls_port = start_pgbouncer(cluster, tls=True)
        procs.append(bouncer_tls)
        base = Path(tempfile.mkdtemp(prefix="gw-bench-"))
        gw, gw_port, token = start_gateway(cluster, base / "tls", require_tls=True)
        procs.append(gw)
        gwp, gwp_port, token_p = start_gateway(cluster, base / "plain", require_tls=False)
        procs.append(gwp)
        ro = cluster.passwords["app_ro"]
        targets = {
            "direct": (cluster.port, "app_ro", ro, "disable"),
            "pgbouncer": (bouncer_port, "app_ro", ro, "disable"),
            "pgbouncer-tls": (bouncer_tls_port, "app_ro", ro, "require"),
            "gateway": (gw_port, "bench", token, "require"),
            "gateway-notls": (gwp_port, "bench", token_p, "disable"),
        }
        wanted = args.targets.split(",")
        targets = {k: v for k, v in targets.items() if k in wanted}
        modes = [m for m in MODES if m in args.modes.split(",")]
        for name in ("gateway", "gateway-notls"):
            if name in targets:
                print(f"{name} pid {procs[2 if name == 'gateway' else 3].pid}", flush=True)
        results: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for mode in modes:
                for name, (port, user, pw, sslmode) in targets.items():
                    tps = pgbench(port, user, pw, mode, args.seconds, sslmode=sslmode)
                    results.setdefault((name, mode), []).append(tps)
                    print(f"round {r + 1} {mode:8} {name:14} {tps:9.0f} tps", flush=True)
        print("\nmedians (tps) and ratios")
        print(json.dumps(versions()))
        for mode in modes:
            med = {name: statistics.median(results[(name, mode)]) for name in targets}
            line = "  ".join(f"{n}={v:.0f}" for n, v in med.items())
            ratios = [(a, b) for a, b in (("gateway", "pgbouncer"), ("gateway", "direct"), ("gateway", "pgbouncer-tls"),
                                          ("gateway-notls", "pgbouncer")) if a in med and b in med]  # fmt: skip
            print(f"{mode:8} {line}  " + "  ".join(f"{a}/{b}={med[a] / med[b]:.2f}" for a, b in ratios))
        recs = sorted((base / "tls" / "recordings").rglob("*.sql.jsonl"))
        lines = sum(1 for p in recs for _ in p.open())
        print(f"gateway recordings: {len(recs)} files, {lines} lines")
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
