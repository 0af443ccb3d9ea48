"""What proof costs: an audit append alone, with a signed checkpoint, with the anchor file too; a token exchange.

    PYTHONPATH=. .venv/bin/python bench/proof_bench.py [--n 200] [--rounds 5]   # uses tests/rig/issuer.py

Medians of rounds (the machines here are shared and noisy). The exchange runs against a real local issuer
(JWKS over HTTP, fetched once and cached, as in production).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gateway.alerts import Alerts
from gateway.anchors.publish import Anchorer
from gateway.config import AnchorSettings, WorkloadIssuer, load_config
from gateway.policy import Policies, ScopePolicy, TargetPolicy
from gateway.store import SqliteStore
from gateway.tokens import KeyRing
from gateway.workload.exchange import Exchanger
from gateway.workload.rules import WorkloadRule
from tests.rig.issuer import LocalIssuer


async def _store(root: Path, anchored: bool) -> SqliteStore:
    ring = KeyRing.load_or_create(root / "keys")
    store = await SqliteStore(root / "gw.db", ring, checkpoint_every=10**9).open()
    if anchored:
        anchors = Anchorer(AnchorSettings(folder=root / "anchors"), "bench/audit", ring, store)
        store.checkpoint_listeners.append(anchors.publish)
    return store


async def _appends(n: int, checkpoint: bool, anchored: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = await _store(Path(tmp), anchored)
        t0 = time.perf_counter()
        for i in range(n):
            await store.append("bench.event", data={"i": i})
            if checkpoint:
                await store.checkpoint()
        per = (time.perf_counter() - t0) / n
        await store.close(checkpoint=False)
    return per * 1e3


async def _exchange(n: int) -> tuple[float, float]:
    issuer = await LocalIssuer().start()
    aud = "https://gateway.bench"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "gateway.toml").write_text(
            '[targets.db]\nkind = "postgres"\naddress = "127.0.0.1:9"\ndatabase = "d"\n'
            '[targets.db.logins]\nwrite = { user = "u", password_env = "X" }\n'
        )
        cfg = load_config(root / "gateway.toml", need_secrets=False)
        wl = WorkloadIssuer("ci", issuer.url, aud, issuer.jwks_url, algorithms=("RS256",))
        cfg = replace(cfg, workloads={"ci": wl})
        rule = WorkloadRule("r", "ci", {"repository": "acme/orders"}, frozenset({"write"}), 600.0, "auto")
        policies = Policies({"db": TargetPolicy("db", {"write": ScopePolicy("write")}, workloads=(rule,))})
        ring = KeyRing.load_or_create(root / "keys")
        store = await SqliteStore(root / "gw.db", ring).open()
        ex = Exchanger(cfg, ring, store, policies, Alerts(store), clock=time.time)
        times = []
        for _ in range(n):
            token = issuer.mint(aud)
            t0 = time.perf_counter()
            await ex.exchange(token, target="db", scope="write", ttl=None, request_id=None, client="", now=time.time())
            times.append(time.perf_counter() - t0)
        await ex.close()
        await store.close(checkpoint=False)
    await issuer.stop()
    return times[0] * 1e3, statistics.median(times[1:]) * 1e3


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cases = {
        "append": (False, False),
        "append + signed checkpoint": (True, False),
        "append + checkpoint + anchor file (fsync)": (True, True),
    }
    results: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, (cp, anchored) in cases.items():
            results[name].append(await _appends(args.n, cp, anchored))
    for name, values in results.items():
        print(f"{name:<44} {statistics.median(values):7.3f} ms")
    first, warm = await _exchange(max(args.n // 4, 10))
    print(f"{'exchange, first (JWKS fetched)':<44} {first:7.3f} ms")
    print(f"{'exchange, warm (median)':<44} {warm:7.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
