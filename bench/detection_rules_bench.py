"""Labelled synthetic history replayed through the usual-hours, volume, burst and exfiltration rules.

50 users x 30 days of sessions (each user's own working hours, weekdays, row counts, statements a minute,
session lengths), with anomalies of every kind seeded at random into days after the warm-up. Prints
recall per rule, the share of normal sessions flagged, and the per-statement cost of the statement-path
rules (exfil.before_run / after_run on the inspector's fingerprint).

    .venv/bin/python bench/detection_rules_bench.py [--users 50] [--days 30] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.detect import exfil
from gateway.detect.bursts import Bursts
from gateway.detect.model import Detection
from gateway.detect.usual import Usual

DAY = 86400.0
T0 = 1_780_000_000.0 - (1_780_000_000.0 % (7 * DAY)) + 4 * DAY  # a Monday 00:00 UTC
SENSITIVE = frozenset({"customers", "payments.cards"})
NORMAL_SHAPES = [
    "select id , total from orders where id = ?",
    "select count ( * ) from orders",
    "select * from order_items where order_id = ?",
    "select name from customers where id = ?",
]
KINDS = [
    "hour",
    "day",
    "rows",
    "bytes",
    "rate",
    "duration",
    "denials",
    "sessions",
    "new_address",
    "select_star",
    "sensitive_whole",
    "copy_sensitive",
]
EXPECT = {
    "hour": "usual.hour",
    "day": "usual.day",
    "rows": "usual.volume.rows",
    "bytes": "usual.volume.bytes",
    "rate": "usual.volume.rate",
    "duration": "usual.volume.duration",
    "denials": "burst.denials",
    "sessions": "burst.sessions",
    "new_address": "burst.new_address",
    "select_star": "exfil.select_star_large",
    "sensitive_whole": "exfil.sensitive_whole",
    "copy_sensitive": "exfil.copy_sensitive",
}


@dataclass
class Session:
    user: str
    start: float
    rows: float
    bytes: float
    statements: int
    duration: float
    client: str
    grant: str
    anomaly: str = ""
    episode: str = ""  # the seeded anomaly this session is part of (a burst is one, over several sessions)
    shapes: list[tuple[str, list[str], int]] = field(default_factory=list)
    denials: int = 0


def history(users: int, days: int, rng: random.Random) -> list[Session]:
    """Every user's sessions, in time order, with seeded anomalies after day 14."""
    out: list[Session] = []
    for u in range(users):
        name = f"user{u:02d}"
        hour0 = rng.uniform(7, 11)
        rows0, stm0, dur0 = rng.lognormvariate(5, 1), rng.uniform(5, 30), rng.uniform(300, 1500)
        picked = rng.sample(range(15, days), k=min(len(KINDS), days - 15))
        seeds: dict[int, str] = dict(zip(picked, rng.sample(KINDS, k=len(picked)), strict=False))
        for day in range(days):
            start_of_day = T0 + day * DAY
            if time.gmtime(start_of_day).tm_wday >= 5:
                continue
            for k in range(rng.randint(1, 2)):
                start = start_of_day + (hour0 + rng.gauss(0, 0.7) + k * 3) * 3600
                dur = dur0 * rng.lognormvariate(0, 0.3)
                n = max(1, int(stm0 * dur / 60 * rng.lognormvariate(0, 0.3)))
                rows = rows0 * rng.lognormvariate(0, 0.4)
                s = Session(name, start, rows, rows * 80, n, dur, f"10.0.{u}.1:{40000 + day}", f"g{u}-{day}-{k}")
                s.shapes = [(rng.choice(NORMAL_SHAPES), ["orders"], int(rows / n)) for _ in range(min(n, 50))]
                out.append(s)
        for day, kind in seeds.items():
            base = T0 + day * DAY + hour0 * 3600
            out.extend(_anomaly(name, u, day, kind, base, rows0, stm0, dur0))
    return sorted(out, key=lambda s: s.start)


def _anomaly(
    name: str, u: int, day: int, kind: str, base: float, rows0: float, stm0: float, dur0: float
) -> list[Session]:
    while time.gmtime(base).tm_wday >= 5:  # anomalies other than "day" fall on working days
        base += DAY

    def mk(**kw: Any) -> Session:
        s = Session(
            name,
            base + 5 * 3600,
            rows0,
            rows0 * 80,
            int(stm0 * 10),
            dur0,
            f"10.0.{u}.1:1",
            f"a{u}-{day}",
            anomaly=kind,
            episode=f"{name}-{day}-{kind}",
        )
        for k, v in kw.items():
            setattr(s, k, v)
        s.shapes = s.shapes or [(NORMAL_SHAPES[0], ["orders"], 1)]
        return s

    if kind == "hour":
        return [mk(start=base - 8 * 3600)]
    if kind == "day":
        return [mk(start=base + ((5 - time.gmtime(base).tm_wday) % 7) * DAY)]  # the next Saturday
    if kind in ("rows", "bytes"):
        return [mk(rows=rows0 * 200 + 5000, bytes=rows0 * 80 * 200 + 5e6)]
    if kind == "rate":
        return [mk(statements=int(stm0 * dur0 / 60 * 40) + 200)]
    if kind == "duration":
        return [mk(duration=dur0 * 20 + 4000)]
    if kind == "denials":
        return [mk(denials=8)]
    if kind == "sessions":
        return [mk(start=base + 5 * 3600 + i * 3, grant=f"b{u}-{day}") for i in range(12)]
    if kind == "new_address":
        first = mk(grant=f"n{u}-{day}")
        first.anomaly = first.episode = ""
        return [first, mk(start=base + 5 * 3600 + 600, grant=f"n{u}-{day}", client=f"192.168.{u}.9:1")]
    shape = {
        "select_star": ("select * from orders", ["orders"], 50_000),
        "sensitive_whole": ("select * from customers", ["customers"], 50),
        "copy_sensitive": ("copy payments . cards to stdout", ["payments.cards"], 900),
    }[kind]
    return [mk(shapes=[shape])]


def replay(sessions: list[Session]) -> tuple[dict[str, list[int]], int, int]:
    """Run every session through the rules; (kind -> [seeded, caught], normal sessions, normal flagged)."""
    usual, bursts = Usual(), Bursts()
    episodes: dict[str, tuple[str, bool]] = {}
    normal = normal_flagged = 0
    for i, s in enumerate(sessions):
        sid, target = f"s{i}", "orders"
        found: list[Detection] = []
        found += usual.started(s.user, target, sid, s.start)
        found += bursts.opened(s.user, target, sid, s.grant, s.client, s.start)
        limits = usual.limits(s.user, target)
        for fp, tables, rows in s.shapes:
            found += exfil.before_run(fp, tables, SENSITIVE, user=s.user, target=target, session=sid)
            found += exfil.after_run(fp, tables, rows, user=s.user, target=target, session=sid)
        for k in range(s.denials):
            found += bursts.denied(s.user, target, sid, s.start + k)
        vols = {
            "rows": s.rows,
            "bytes": s.bytes,
            "rate": s.statements / max(s.duration, 60) * 60,
            "duration": s.duration,
        }
        found += usual.ended(s.user, target, sid, vols, limits)
        rules = {d.rule for d in found}
        if s.anomaly:
            caught = episodes.get(s.episode, (s.anomaly, False))[1]
            episodes[s.episode] = (s.anomaly, caught or EXPECT[s.anomaly] in rules)
        else:
            normal += 1
            normal_flagged += bool(rules)
    recall: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
    for kind, caught in episodes.values():
        recall[kind][0] += 1
        recall[kind][1] += caught
    return recall, normal, normal_flagged


def statement_cost(n: int = 200_000) -> float:
    """Microseconds per statement for the statement-path rules (before_run + after_run, cached shapes)."""
    shapes = [(fp, ["orders"]) for fp in NORMAL_SHAPES] + [("select * from customers where id = ?", ["customers"])]
    t = time.perf_counter()
    for i in range(n):
        fp, tables = shapes[i % len(shapes)]
        exfil.before_run(fp, tables, SENSITIVE, user="u", target="t", session="s")
        exfil.after_run(fp, tables, 10, user="u", target="t", session="s")
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    sessions = history(args.users, args.days, random.Random(args.seed))
    recall, normal, flagged = replay(sessions)
    print(f"{len(sessions)} sessions, {args.users} users x {args.days} days, seed {args.seed}")
    for kind, (seeded, caught) in recall.items():
        print(f"  {EXPECT[kind]:<28} recall {caught}/{seeded} = {caught / max(seeded, 1):.0%}")
    print(f"  normal sessions flagged: {flagged}/{normal} = {flagged / max(normal, 1):.2%}")
    costs = sorted(statement_cost() for _ in range(5))
    print(f"  per-statement cost (exfil before+after, median of 5): {costs[2]:.2f} us")
    counts = Counter(s.episode for s in sessions if s.episode)
    print(f"  seeded anomalies: {len(counts)} ({sum(counts.values())} sessions)")


if __name__ == "__main__":
    main()
