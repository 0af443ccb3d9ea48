"""The console's Sessions page over a store of many sessions: time to serve the first page (and filtered ones).

    .venv/bin/python bench/console_bench.py [--sessions 20000] [--runs 30]

A gateway (HTTP listener only) on a temp SQLite store filled with `--sessions` ended sessions (mixed users,
targets, protocols, violations and end reasons); a browser-like client signs in with a console link and
GETs /sessions with each filter `--runs` times. Target: the first page in < 300 ms with 20k sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.api.auth import hash_api_key, new_api_key
from gateway.app import App
from gateway.cli.console import console_link
from gateway.config import load_config
from gateway.sandbox.procs import free_ports
from gateway.store.sqlite import SqliteStore

QUERIES = {
    "first page": "",
    "page 100": "page=100",
    "user": "user=u7",
    "violations": "violations=yes",
    "end reason": "end_reason=revoked",
    "protocol+date": "protocol=postgres&since=2026-01-01&until=2026-06-30",
}


def write_config(root: Path) -> Path:
    """A minimal gateway.toml: one admin user, no targets needed for the list."""
    (root / "policies").mkdir()
    http, ssh, pg = free_ports(3)
    path = root / "gateway.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [listen]
        ssh = "127.0.0.1:{ssh}"
        postgres = "127.0.0.1:{pg}"
        http = "127.0.0.1:{http}"
        [store]
        url = "sqlite:///var/gateway.db"
        [users.erin]
        api_key_sha256 = "{hash_api_key(new_api_key())}"
        groups = ["admins"]
        """)
    )
    return path


async def fill(store: SqliteStore, n: int) -> None:
    """`n` ended sessions over a year, in one transaction."""
    rnd = random.Random(7)
    t0 = 1767225600.0  # 2026-01-01
    rows = []
    for i in range(n):
        start = t0 + rnd.random() * 365 * 86400
        proto = rnd.choice(("ssh", "postgres"))
        stats = {"statements": rnd.randint(0, 50)} if proto == "postgres" else {"commands": rnd.randint(0, 50)}
        if rnd.random() < 0.05:
            stats["denied" if proto == "postgres" else "violations"] = rnd.randint(1, 3)
        reason = rnd.choice(("client closed", "grant expired", "grant revoked: incident over", "killed by erin"))
        rows.append(
            (f"s{i:08x}", f"g_{i // 3:06x}", f"u{i % 40}", f"t{i % 12}", "read", proto, "127.0.0.1:5", start,
             start + rnd.random() * 3600, reason, None, json.dumps(stats), "bench")
        )  # fmt: skip
    sql = (
        "INSERT INTO sessions (id,grant_id,user,target,scope,protocol,client_addr,started_at,ended_at,end_reason,"
        "recording_path,stats,node) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    await store.db.execute("BEGIN")
    await store.db.executemany(sql, rows)
    await store.db.execute("COMMIT")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp)), need_secrets=False)
        app = App(config, enable=("http",))
        svc = await app.start()
        try:
            assert isinstance(svc.store, SqliteStore)
            t = time.perf_counter()
            await fill(svc.store, args.sessions)
            print(f"filled {args.sessions} sessions in {time.perf_counter() - t:.1f} s")
            port = app.listeners["http"].port
            link = console_link(config, "erin").replace(f":{config.listen_http.port}", f":{port}")
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.get(link) as resp:
                    assert resp.status == 200
                for name, q in QUERIES.items():
                    took = []
                    for _ in range(args.runs):
                        t = time.perf_counter()
                        async with s.get(f"http://127.0.0.1:{port}/sessions?{q}") as resp:
                            body = await resp.text()
                        took.append((time.perf_counter() - t) * 1000)
                        assert resp.status == 200, body[:300]
                    rows = body.count('class="session"')
                    p95 = sorted(took)[int(len(took) * 0.95) - 1]
                    med = statistics.median(took)
                    print(f"/sessions {name:14s} rows={rows:3d}  median {med:6.1f} ms  p95 {p95:6.1f} ms")
        finally:
            await app.stop()


if __name__ == "__main__":
    asyncio.run(main())
