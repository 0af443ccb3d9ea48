"""Audit appends per second, SQLite vs PostgreSQL, with 1 and 2 writers (each its own store object / pool).

    .venv/bin/python bench/store_bench.py [--events 2000]

Starts a throwaway PostgreSQL (gateway.sandbox; note: its fsync and synchronous_commit are off) and an SQLite
file in a temp folder; every writer appends `--events` events; the chain is verified afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sandbox.postgres import PgCluster
from gateway.store import Store, store_for


async def rate(make: list[Store], events: int) -> float:
    """Events per second over all writers; the chain must verify."""
    stores = [await s.open() for s in make]
    try:

        async def writer(s: Store) -> None:
            for i in range(events):
                await s.append("bench.event", data={"i": i, "node": s.node})

        t0 = time.perf_counter()
        await asyncio.gather(*(writer(s) for s in stores))
        took = time.perf_counter() - t0
        verdict = await stores[0].verify()
        assert verdict.ok and verdict.checked == events * len(stores), verdict.describe()
        return events * len(stores) / took
    finally:
        for s in stores:
            await s.close(checkpoint=False)


async def main(events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, PgCluster() as cluster:
        for writers in (1, 2):
            db = f"bench_{writers}"
            cluster.psql(f"CREATE DATABASE {db}", db="postgres")
            sqlite = Path(tmp) / f"w{writers}.db"
            results = {}
            for kind, url in (("sqlite", f"sqlite:///{sqlite}"), ("postgresql", cluster.superuser_dsn(db))):
                stores = [store_for(url, None, sqlite_path=sqlite, node=f"n{i}") for i in range(writers)]
                results[kind] = await rate(stores, events)
            print(
                f"writers={writers} events/writer={events}: sqlite {results['sqlite']:.0f}/s, "
                f"postgresql {results['postgresql']:.0f}/s"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=2000)
    asyncio.run(main(ap.parse_args().events))
