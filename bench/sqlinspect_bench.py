"""Micro-benchmark of gateway.pg.sql.inspector: us per check, cached and uncached, next to sqlglot alone.

    .venv/bin/python bench/sqlinspect_bench.py [--rounds 7] [--n 20000]

Machines here are shared and noisy: every case runs in each round, rounds alternate the cases, and the
median of the rounds is printed, with sqlglot's own parse of the same text as the baseline to compare to.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import time
from collections.abc import Callable

from sqlglot.dialects.postgres import Postgres

from gateway.pg.sql import inspector as inspector_mod
from gateway.pg.sql.catalog import build
from gateway.pg.sql.inspector import Inspector, fingerprint
from gateway.pg.sql.pgcatalog15 import UNARY_BUILTINS
from gateway.policy import SqlPolicy

SHORT = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"
LONG = """SELECT c.id, c.name, count(o.id) AS orders, sum(o.total)::numeric(12, 2) AS spent
FROM customers c JOIN orders o ON o.customer_id = c.id
WHERE o.created_at > now() - interval '30 days' AND c.region = 'eu-{}'
GROUP BY c.id, c.name HAVING count(o.id) > 2
ORDER BY spent DESC LIMIT 50"""


def _time(fn: Callable[[int], object], n: int) -> float:
    """Microseconds per call of fn(i) for i in range(n)."""
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def _cases(template: str, n: int) -> dict[str, Callable[[int], object]]:
    dialect = Postgres()
    texts = [template.format(i) for i in range(n)]
    cached = Inspector(SqlPolicy("read"))
    cached.check(texts[0])
    same = texts[0]

    # A target catalogue the size of a fresh PostgreSQL 15 database's (1300 names, 2000 columns).
    catalog = build([("f", name, "true", "pg_catalog", "") for name in UNARY_BUILTINS]
                    + [("c", f"rel{i // 10}", f"col{i}", str(i // 10), "") for i in range(2000)])  # fmt: skip
    with_catalog = Inspector(SqlPolicy("read"), catalog=catalog)
    with_catalog.check(texts[0])

    def uncached(i: int) -> object:
        inspector_mod._INSPECTIONS.clear()  # also the module-wide inspection cache
        return Inspector(SqlPolicy("read")).check(texts[i])

    def uncached_catalog(i: int) -> object:
        inspector_mod._INSPECTIONS.clear()
        return Inspector(SqlPolicy("read"), catalog=catalog).check(texts[i])

    return {
        "sqlglot.parse (baseline)": lambda i: dialect.parse(texts[i]),
        "sqlglot.tokenize (baseline)": lambda i: dialect.tokenize(texts[i]),
        "fingerprint()": lambda i: fingerprint(texts[i]),
        "check, cached, same text": lambda i: cached.check(same),
        "check, cached, varying literal": lambda i: cached.check(texts[i]),
        "check, uncached": uncached,
        "catalogue: cached, same text": lambda i: with_catalog.check(same),
        "catalogue: cached, varying lit.": lambda i: with_catalog.check(texts[i]),
        "catalogue: uncached": uncached_catalog,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--n", type=int, default=20000, help="calls per case per round (uncached: n/10)")
    args = ap.parse_args()
    print(f"sqlglot {importlib.metadata.version('sqlglot')}, {args.rounds} rounds, median us/op")
    for label, template in (("short (pgbench -S)", SHORT), ("5-line join", LONG)):
        cases = _cases(template, args.n)
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                n = args.n // 10 if "uncached" in name or "parse" in name else args.n
                results[name].append(_time(fn, n))
        print(f"\n{label}")
        base = statistics.median(results["sqlglot.parse (baseline)"])
        for name, values in results.items():
            med = statistics.median(values)
            print(f"  {name:32} {med:9.2f} us/op   {med / base:6.2f}x sqlglot.parse")


if __name__ == "__main__":
    main()
