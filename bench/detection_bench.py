"""Detection on a labelled synthetic history: recall per rule, false positives on normal sessions, cost.

    .venv/bin/python bench/detection_bench.py [--users 50] [--days 30] [--seed 1]

Generates `users` engineers over `days` days: each has a usual Postgres target with a handful of usual
tables and query shapes, and a usual SSH host with a usual set of commands; one or two sessions a day.
In the second half of the period anomalies are seeded, each labelled with the rule that should flag it:
a table never read before, a schema never used, a command never run, a target never used (first_use.*),
and on the request workflow an approval seconds after filing, one approver waving one requester through
again and again, a reason without a ticket, an approval at 03:00 by an approver who works 09-18, a request
for admin after a read session. Sessions are replayed through the real Detector (baselines,
watches, the SQLite store for persistence and the audit events) with a clock passed in, statements
through the real SQL inspector; approvals through the real workflow rules. Prints recall per rule, the
share of normal sessions that raised anything, and the per-statement / per-command-line cost of a watch.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.alerts import Alerts
from gateway.detect.engine import Detector
from gateway.detect.settings import NO_OVERRIDES, Overrides, parse_settings
from gateway.detect.workflow import approval_findings, approver_hours
from gateway.pg.sql.inspector import Inspection, inspect
from gateway.policy import Decision
from gateway.store import RequestRecord, SqliteStore

DAY = 86_400.0
ALLOW = Decision.allow()
SCHEMAS = ("sales", "billing", "ops", "hr")
TABLES = tuple(f"{s}.t{i}" for s in SCHEMAS for i in range(10))
COMMANDS = ("ls", "cat", "tail", "grep", "less", "systemctl", "journalctl", "df", "du", "ps", "top", "vim", "curl")
RARE_COMMANDS = ("iptables", "tcpdump", "nc", "useradd", "crontab", "chattr")
SHAPES = (
    "SELECT * FROM {t} WHERE id = {n}",
    "SELECT count(*) FROM {t} WHERE created_at > now() - interval '{n} days'",
    "UPDATE {t} SET note = 'x{n}' WHERE id = {n}",
)


@dataclass(frozen=True)
class Target:
    name: str


@dataclass(frozen=True)
class Sql:
    sensitive_tables: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Policy:
    sql: Sql | None = None
    detection: Overrides = NO_OVERRIDES


@dataclass(frozen=True)
class Claims:
    jti: str = "g1"


@dataclass(eq=False)
class Sess:
    """What the detector sees of a live session."""

    id: str
    started_at: float
    user: str
    target: Target
    policy: Policy = field(default_factory=lambda: Policy(Sql()))
    claims: Claims = field(default_factory=Claims)
    client_addr: str = "10.0.0.7:50000"
    killed: str = ""

    def kill_soon(self, reason: str) -> None:
        self.killed = reason


@dataclass
class Person:
    name: str
    db: str
    host: str
    tables: list[str]
    commands: list[str]
    approvers: list[str] = field(default_factory=list)


async def run(users: int, days: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    people = []
    for i in range(users):
        schema = SCHEMAS[i % len(SCHEMAS)]
        own = [t for t in TABLES if t.startswith(schema + ".")]
        people.append(Person(f"u{i:02d}", f"db-{i % 5}", f"web-{i % 7}", rng.sample(own, 4), rng.sample(COMMANDS, 8)))
    names = [p.name for p in people]
    for p in people:
        p.approvers = rng.sample([n for n in names if n != p.name], 8)
    settings = parse_settings({"ticket_pattern": "[A-Z]+-[0-9]+", "warmup_sessions": 5})
    now = [0.0]
    tmp = Path(tempfile.mkdtemp(prefix="detbench-"))
    store = SqliteStore(tmp / "gw.db")
    await store.open()
    detector = Detector(settings, store, Alerts(store), clock=lambda: now[0])
    seeded: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    normal = flagged_normal = 0
    sid = 0
    cache: dict[str, Inspection] = {}

    def insp(sql: str) -> Inspection:
        if sql not in cache:
            cache[sql] = inspect(sql)
        return cache[sql]

    async def session(p: Person, start: float, label: str | None) -> None:
        nonlocal sid, normal, flagged_normal
        sid += 1
        now[0] = start
        before = await store.head()
        kind = rng.random()
        if label == "first_use.target":
            s = Sess(f"s{sid}", start, p.name, Target(f"db-new-{sid}"))
            detector.watch(s)
        elif label in ("first_use.command",) or (label is None and kind < 0.4):
            s = Sess(f"s{sid}", start, p.name, Target(p.host))
            w = detector.watch(s)
            lines = [f"{rng.choice(p.commands)} -x{rng.randint(1, 9)}" for _ in range(rng.randint(5, 15))]
            if label:
                lines.insert(rng.randrange(len(lines)), f"sudo {rng.choice(RARE_COMMANDS)} -L")
            for line in lines:
                now[0] += rng.uniform(1, 30)
                w.command(line, ALLOW)
        else:
            s = Sess(f"s{sid}", start, p.name, Target(p.db))
            w = detector.watch(s)
            sqls = [rng.choice(SHAPES).format(t=rng.choice(p.tables), n=rng.randint(1, 999)) for _ in range(12)]
            if label == "first_use.table":
                schema = p.tables[0].split(".")[0]
                unread = [t for t in TABLES if t.startswith(schema + ".") and t not in p.tables]
                sqls.insert(rng.randrange(len(sqls)), f"SELECT * FROM {rng.choice(unread)} WHERE id = 1")
            elif label == "first_use.schema":
                fresh = [x for x in SCHEMAS if (p.name, p.db, "schema", x) not in detector.baselines.seen]
                other = fresh[0] if fresh else f"extra{sid}"  # a schema this user never used
                sqls.insert(rng.randrange(len(sqls)), f"SELECT * FROM {other}.t0 WHERE id = 1")
            for sql in sqls:
                now[0] += rng.uniform(1, 30)
                w.sql(insp(sql), ALLOW)
        await detector.drain()
        events = await store.events(types=["detection"], session=s.id)
        rules = {e.data["rule"] for e in events if before is None or e.seq > before[0]}
        if label is None:
            normal += 1
            flagged_normal += bool(rules)
        else:
            seeded[label] += 1
            caught[label] += label in rules

    kinds = ("first_use.table", "first_use.schema", "first_use.command", "first_use.target")
    for day in range(days):
        for p in people:
            for k in range(rng.choice((1, 1, 2))):
                await session(p, day * DAY + 9 * 3600 + k * 3600 + rng.uniform(0, 1800), None)
            seeded_kind = rng.choice(kinds)
            where = {"first_use.command": p.host, "first_use.target": ""}.get(seeded_kind, p.db)
            # Seeded only where the user is past warm-up there: before it nothing is flagged, by design.
            warm = detector.baselines.of(p.name, where).sessions >= settings.warmup_sessions
            if day >= days // 2 and rng.random() < 0.1 and warm:
                await session(p, day * DAY + 15 * 3600, seeded_kind)

    # The workflow: a request a week per user on a weekday between 09:00 and 15:00 UTC, approved after
    # minutes to hours by one of eight approvers, reason with a ticket, the scope of their last session;
    # every approver also has a background of 20 approvals for other teams in their working hours (09-18).
    # Seeded: rubber stamps, missing tickets, one approver approving four in a row, an approval at 03:00,
    # a request for admin after a read session.
    requests: dict[str, list[RequestRecord]] = {p.name: [] for p in people}
    background = [
        _req(Person("other", "db-x", "", [], []), -rng.uniform(1, 30) * DAY // DAY * DAY + rng.uniform(9, 18) * 3600,
             a, "CHG-2")
        for a in names for _ in range(20)
    ]  # fmt: skip
    ranks = {"read": 0, "write": 1, "admin": 2}
    approvals = 0
    flagged_approvals = 0
    kinds_wf = ("approval.rubber_stamp", "approval.no_ticket", "approval.same_approver", "approval.outside_hours",
                "approval.wider_scope")  # fmt: skip
    for p in people:
        for week in range(days // 7 + 1):
            day0 = week * 7 * DAY + rng.randrange(5) * DAY
            t = day0 + 9 * 3600 + rng.uniform(0, 6 * 3600)
            label = rng.choice(kinds_wf) if (week >= 2 and rng.random() < 0.3) else None
            approver = rng.choice(p.approvers)
            if label == "approval.same_approver":
                approver = p.approvers[0]
                for j in range(settings.same_approver_count):  # the earlier ones, also by approvers[0]
                    requests[p.name].append(_req(p, t - (j + 1) * 3600, approver, "CHG-1"))
            waited = rng.uniform(1, 5) if label == "approval.rubber_stamp" else rng.uniform(120, 3 * 3600)
            if label == "approval.outside_hours":
                t, waited = day0 + 2 * 3600 + rng.uniform(0, 1800), 3600.0  # approved between 03:00 and 03:30
            reason = "quick look" if label == "approval.no_ticket" else f"INC-{rng.randint(1, 9999)}: fix"
            scope = "admin" if label == "approval.wider_scope" else "read"
            req = _req(p, t, "", reason, scope)
            at = t + waited
            everyone = [*background, *(r for rs in requests.values() for r in rs)]
            found = approval_findings(settings, req, approver, at, requests[p.name],
                                      hours=approver_hours(everyone, approver, before=at), last_scope="read",
                                      rank=lambda target, sc: ranks.get(sc))  # fmt: skip
            rules = {d.rule for d in found}
            requests[p.name].append(_req(p, t, approver, reason, scope, waited))
            if label is None:
                approvals += 1
                flagged_approvals += bool(rules)
            else:
                seeded[label] += 1
                caught[label] += label in rules

    # Cost: a warm watch on statements and command lines it has seen (the steady state on the hot path):
    # everything the relay calls per statement (Watch.sql with the policy's decision, and the journal's
    # large-result check), with and without sensitive tables (the exfiltration shapes run only with them),
    # in alternating rounds so that a busy machine slows all variants alike; the median round is reported.
    p = people[0]
    w = detector.watch(Sess("cost", now[0], p.name, Target(p.db)))
    ws_sens = detector.watch(Sess("cost-s", now[0], p.name, Target(p.db), Policy(Sql(frozenset(p.tables[:2])))))
    stmts = [insp(s.format(t=t, n=1)) for s in SHAPES for t in p.tables]
    for st in stmts:
        w.sql(st, ALLOW)
        ws_sens.sql(st, ALLOW)
    ws = detector.watch(Sess("cost2", now[0], p.name, Target(p.host)))
    lines = [f"{c} -l /var/log" for c in p.commands]
    for line in lines:
        ws.command(line, ALLOW)
    n = 100_000
    rows = 10

    def per_sql(watch: Any) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            st = stmts[i % len(stmts)]
            watch.sql(st, ALLOW)
            if rows >= watch.large_rows:  # the journal's check on CommandComplete
                watch.large_result(st.fingerprint, (), rows)
        return (time.perf_counter() - t0) / n * 1e6

    def per_cmd() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            ws.command(lines[i % len(lines)], ALLOW)
        return (time.perf_counter() - t0) / n * 1e6

    rounds: dict[str, list[float]] = {"plain": [], "sensitive": [], "command": []}
    for _ in range(5):
        rounds["plain"].append(per_sql(w))
        rounds["sensitive"].append(per_sql(ws_sens))
        rounds["command"].append(per_cmd())
    per_statement = statistics.median(rounds["plain"])
    per_statement_sensitive = statistics.median(rounds["sensitive"])
    per_line = statistics.median(rounds["command"])
    await detector.drain()
    await store.close(checkpoint=False)
    return {
        "users": users,
        "days": days,
        "normal_sessions": normal,
        "flagged_normal_sessions": flagged_normal,
        "normal_approvals": approvals,
        "flagged_normal_approvals": flagged_approvals,
        "recall": {rule: (caught[rule], seeded[rule]) for rule in sorted(seeded)},
        "us_per_statement": per_statement,
        "us_per_statement_sensitive": per_statement_sensitive,
        "us_per_command_line": per_line,
    }


def _req(p: Person, t: float, approver: str, reason: str, scope: str = "read", waited: float = 60) -> RequestRecord:
    approvals = ({"by": approver, "at": t + waited},) if approver else ()
    return RequestRecord(f"r_{p.name}_{t:.0f}", p.name, p.db, scope, reason, 900.0, t, "pending", approvals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    r = asyncio.run(run(a.users, a.days, a.seed))
    print(f"history: {r['users']} users x {r['days']} days")
    for rule, (hit, total) in r["recall"].items():
        print(f"recall {rule:24} {hit}/{total} = {100 * hit / max(total, 1):.1f}%")
    ns, fs = r["normal_sessions"], r["flagged_normal_sessions"]
    na, fa = r["normal_approvals"], r["flagged_normal_approvals"]
    print(f"false positives: {fs}/{ns} normal sessions = {100 * fs / max(ns, 1):.2f}%")
    print(f"false positives: {fa}/{na} normal approvals = {100 * fa / max(na, 1):.2f}%")
    print(
        f"cost (median of 5 alternating rounds): {r['us_per_statement']:.2f} us per statement, "
        f"{r['us_per_statement_sensitive']:.2f} us with sensitive tables, "
        f"{r['us_per_command_line']:.2f} us per command line"
    )


if __name__ == "__main__":
    main()
