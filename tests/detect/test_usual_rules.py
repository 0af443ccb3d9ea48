"""Usual hours and volumes, bursts and exfiltration shapes: the pure rules."""

from __future__ import annotations

import json
import random
import time

from gateway.detect.bursts import DENIALS, NEW_ADDRESS, SESSIONS, Bursts
from gateway.detect.exfil import COPY_SENSITIVE, SELECT_STAR_LARGE, SENSITIVE_WHOLE, after_run, before_run
from gateway.detect.sketch import LogHistogram
from gateway.detect.usual import UNUSUAL_DAY, UNUSUAL_HOUR, Usual, UsualSettings

DAY = 86400.0
MONDAY_10 = 1_780_272_000.0 - (1_780_272_000.0 % DAY) + 10 * 3600  # some day at 10:00 UTC


def _worked(u: Usual, days: int = 20) -> float:
    """Alice works 09-11 UTC on weekdays, ~100 rows a session."""
    t = MONDAY_10
    n = 0
    while n < days:
        if time.gmtime(t).tm_wday < 5:
            u.started("alice", "db", f"s{n}", t + (n % 3 - 1) * 3600)
            u.ended("alice", "db", f"s{n}", {"rows": 80 + n, "duration": 600})
            n += 1
        t += DAY
    return t


def test_unusual_hour_and_day_come_from_own_history() -> None:
    u = Usual()
    t = _worked(u)
    while time.gmtime(t).tm_wday >= 5:
        t += DAY
    assert u.started("alice", "db", "a", t) == []
    assert [d.rule for d in u.started("alice", "db", "b", t + 15 * 3600)] == [UNUSUAL_HOUR]  # 01:00
    while time.gmtime(t).tm_wday != 6:
        t += DAY
    assert [d.rule for d in u.started("alice", "db", "c", t)] == [UNUSUAL_DAY]


def test_policy_hours_override_history() -> None:
    u = Usual(UsualSettings(hours=(8, 18)))
    assert [d.rule for d in u.started("bob", "db", "s", MONDAY_10 + 10 * 3600)] == [UNUSUAL_HOUR]  # 20:00
    assert u.started("bob", "db", "s", MONDAY_10) == []


def test_volume_over_factor_times_own_p95_and_restart_keeps_it() -> None:
    u = Usual()
    _worked(u)
    again = Usual()
    again.load(json.loads(json.dumps(u.to_json())))
    assert again.ended("alice", "db", "x", {"rows": 900}) == []  # under the floor
    (d,) = again.ended("alice", "db", "y", {"rows": 50_000})
    assert d.rule == "usual.volume.rows" and "over 1000" in d.explanation


def test_bursts() -> None:
    b = Bursts()
    hits = [d.rule for i in range(6) for d in b.denied("eve", "db", "s", 100.0 + i)]
    assert hits == [DENIALS]
    assert b.denied("eve", "db", "s", 1000.0) == []
    opened = [d.rule for i in range(10) for d in b.opened("eve", "db", f"s{i}", "g1", f"10.0.0.1:{4000 + i}", 5.0 + i)]
    assert opened == [SESSIONS]
    assert [d.rule for d in b.opened("eve", "db", "z", "g1", "10.9.9.9:1", 500.0)] == [NEW_ADDRESS]


def test_exfiltration_shapes() -> None:
    sens = frozenset({"customers"})
    assert [
        d.rule
        for d in before_run("select * from customers", ["customers"], sens, user="mallory", target="db", session="s")
    ] == [SENSITIVE_WHOLE]
    assert (
        before_run(
            "select * from customers where id = ?", ["customers"], sens, user="mallory", target="db", session="s"
        )
        == []
    )
    assert [
        d.rule
        for d in before_run(
            "copy public . customers to stdout", ["public.customers"], sens, user="mallory", target="db", session="s"
        )
    ] == [COPY_SENSITIVE]
    assert [
        d.rule for d in after_run("select * from orders", ["orders"], 20_000, user="mallory", target="db", session="s")
    ] == [SELECT_STAR_LARGE]
    assert after_run("select * from orders", ["orders"], 50, user="mallory", target="db", session="s") == []
    assert (
        after_run("select * from orders where id = ?", ["orders"], 20_000, user="mallory", target="db", session="s")
        == []
    )


def test_histogram_quantile_within_one_bucket() -> None:
    h = LogHistogram()
    values = sorted(random.Random(1).lognormvariate(5, 1) for _ in range(5000))
    for v in values:
        h.add(v)
    true = values[int(0.95 * len(values))]
    assert true <= h.quantile(0.95) <= true * 1.2
