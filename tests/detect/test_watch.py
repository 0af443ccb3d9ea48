"""The live wiring as plain values: a Watch over the real Detector, SQLite store and SQL inspector, clock passed in.

Every rule id the settings know is raised here at least once and checked for what every detection must carry:
a stable rule id, a severity, one sentence, and where to look (the session and its offset, or the request).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts import Alerts
from gateway.detect import bursts, exfil, model, sweep, usual
from gateway.detect.engine import Detector, volumes
from gateway.detect.settings import (
    ALL_RULES,
    NO_OVERRIDES,
    DetectionSettings,
    Overrides,
    SettingsError,
    actions_allowed,
    parse_overrides,
    parse_settings,
)
from gateway.detect.sshsweep import judge
from gateway.detect.workflow import approval_findings, approver_hours, scope_rank
from gateway.pg.sql.inspector import inspect
from gateway.policy import Decision, Verdict
from gateway.ssh.reaper import Detached
from gateway.store import GrantRecord, RequestRecord, SessionRecord, SqliteStore

ALLOW = Decision.allow()
DAY = 86_400.0
T0 = 1_700_000_000.0 - (1_700_000_000.0 % DAY) + 9 * 3600  # a 09:00 UTC


@dataclass(frozen=True)
class Named:
    name: str


@dataclass(frozen=True)
class Sql:
    sensitive_tables: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Policy:
    sql: Sql | None = field(default_factory=Sql)
    detection: Overrides = NO_OVERRIDES


@dataclass(frozen=True)
class Claims:
    jti: str = "g1"


@dataclass(eq=False)
class Sess:
    """What a watch needs of a live session (the LiveSession protocol)."""

    id: str
    started_at: float
    user: str
    target: Named
    policy: Policy = field(default_factory=Policy)
    claims: Claims = field(default_factory=Claims)
    client_addr: str = "10.0.0.7:50000"
    protocol: str = "postgres"
    stats: dict[str, Any] = field(default_factory=dict)
    kills: list[str] = field(default_factory=list)

    def kill_soon(self, reason: str) -> None:
        self.kills.append(reason)


@dataclass
class End:
    session: Sess
    ended_at: float


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "gw.db")
    await s.open()
    yield s
    await s.close(checkpoint=False)


async def detections(store: SqliteStore, detector: Detector) -> list[dict[str, Any]]:
    await detector.drain()
    return [e.data | {"severity": e.severity} for e in await store.events(types=["detection"])]


def check_shape(d: dict[str, Any]) -> None:
    """What every detection carries."""
    assert d["rule"] in ALL_RULES
    assert d["severity"] in ("info", "warning", "critical")
    text = d["explanation"]
    assert text and "\n" not in text and len(text) < 400
    if d.get("session"):
        assert d["link"].startswith(f"/sessions/{d['session']}")
    elif d.get("request"):
        assert d["link"] == f"/requests/{d['request']}"


async def test_every_rule_raises_a_complete_detection(store: SqliteStore, tmp_path: Path) -> None:
    clock = Clock()
    settings = parse_settings({"warmup_sessions": 2, "burst_denials": 3, "burst_errors": 3, "burst_sessions": 3,
                               "large_rows": 100, "ticket_pattern": "[A-Z]+-[0-9]+"})  # fmt: skip
    alerts = Alerts(store, file=tmp_path / "alerts.jsonl")
    det = Detector(settings, store, alerts, clock=clock)
    det.usual = usual.Usual(usual.UsualSettings(warmup_sessions=14))  # a week of history before it judges
    sensitive = Policy(Sql(frozenset({"cards"})))

    def session(n: int, user: str = "alice", target: str = "db", **kw: Any) -> Sess:
        s = Sess(f"s{n}", clock.now, user, Named(target), **kw)
        det.watch(s)
        return s

    async def end(s: Sess, seconds: float, **stats: Any) -> None:
        clock.now += seconds
        s.stats.update(stats)
        await det.on_session_end(End(s, clock.now))  # type: ignore[arg-type]

    # Two weeks of ordinary mornings: hours, volumes, tables, commands learned.
    n = 0
    for day in range(14):
        clock.now = T0 + day * DAY + (day % 3) * 600
        n += 1
        s = session(n, policy=sensitive)
        w = det.watch(s)
        w.sql(inspect("SELECT id FROM orders WHERE id = 1"), ALLOW)
        await end(s, 300, rows=10, bytes_out=2000, statements=5)
        n += 1
        s = session(n, target="web-1", protocol="ssh")
        det.watch(s).command("ls -l", ALLOW)
        await end(s, 300, commands=5)
    before = await detections(store, det)
    assert before == [], before

    clock.now = T0 + 14 * DAY
    n += 1
    s = session(n, policy=sensitive)
    w = det.watch(s)
    clock.now += 5
    w.sql(inspect("SELECT * FROM payments.cards"), ALLOW)  # first table, schema, shape; a sensitive table whole
    w.sql(inspect("COPY cards TO STDOUT"), ALLOW)
    w.large_result("select * from orders", ("orders",), 500)  # SELECT * without WHERE, many rows
    for _ in range(3):
        w.sql(inspect("DELETE FROM orders"), Decision.deny("read-only", "no writes"))
    for _ in range(3):
        w.failed()
    await end(s, 7200, rows=100_000, bytes_out=50_000_000, statements=20_000)
    n += 1
    shell = session(n, target="web-1", protocol="ssh", client_addr="192.0.2.9:4000")  # the grant's second host
    det.watch(shell).command("sudo iptables -L", ALLOW)
    n += 1
    session(n, target="db-2")  # a target alice never used
    clock.now = T0 + 14 * DAY + 15 * 3600  # 00:00 UTC the next day: an hour alice never works
    n += 1
    session(n)
    clock.now = T0 + 16 * DAY
    # A weekday alice never works (she worked every day: empty one of them in what was learned).
    quiet = det.usual.times["alice"].days
    blank = quiet.index(min(quiet))
    quiet[blank] = 0
    while time.gmtime(clock.now).tm_wday != blank:
        clock.now += DAY
    n += 1
    session(n)
    for _ in range(3):
        n += 1
        session(n, user="bob")  # bob opens three sessions within the window
    found = await detections(store, det)

    # The workflow and the sweeps (their own modules, the same Detection).
    noon = T0 + 3 * 3600
    req = RequestRecord("r_1", "alice", "db", "admin", "looking", 900.0, noon - 2)
    history = [
        RequestRecord(
            f"r_{i}", "alice", "db", "read", "INC-1", 900.0, T0 + i, "approved", ({"by": "bob", "at": T0 + i},)
        )
        for i in range(12)
    ]
    ranks = {"read": 0, "admin": 2}
    flow = approval_findings(settings, req, "bob", noon, history,
                             hours=approver_hours(history, "bob", before=noon), last_scope="read",
                             rank=lambda t, sc: ranks.get(sc))  # fmt: skip
    grant = GrantRecord("g_9", "alice", "db", "read", "INC-1", ("bob",), T0, T0, T0 + 3600, "expired", request_id="r_1")
    await det.grant_expired(grant)
    strays = sweep.find_strays(
        "db",
        [sweep.Backend(1, "app_ro", "gateway:alice:s1", T0, ""), sweep.Backend(2, "app_ro", "psql", T0, ""),
         sweep.Backend(3, "app_ro", "gateway:catalog", T0, "")],
        [], {"s1": ("alice", "revoked")}, T0 + 1000,
    )  # fmt: skip
    procs = [judge("web-1", "ops", Detached(7, "s1", "sleep 99"), {"s1": ("alice", "expired")}, outcome="terminated"),
             judge("web-1", "ops", Detached(8, "", "nc -l"), {}, outcome="terminated")]  # fmt: skip
    glass = model.Detection(model.BREAK_GLASS, "critical", "break-glass grant g_2: alice on db/read", "alice", "db")
    for one in [*flow, *(x.detection for x in strays), *procs, glass]:
        await det.emit(one)
    found = await detections(store, det)
    for d in found:
        check_shape(d)
    assert {d["rule"] for d in found} == set(ALL_RULES)
    live = [d for d in found if d["rule"].split(".")[0] in ("first_use", "usual", "burst", "exfil")]
    assert live and all(d["session"] and d["offset"] is not None for d in live)
    # and an alert for each, naming the detection's audit seq and the link
    events = await store.events(types=["detection", "alert.detection"])
    seqs = {e.seq for e in events if e.type == "detection"}
    assert sorted(e.data["detection_seq"] for e in events if e.type == "alert.detection") == sorted(seqs)
    first = next(d for d in found if d["rule"] == model.FIRST_TABLE)
    assert first["explanation"] == (
        "first time alice read or wrote table 'payments.cards' on db in 14 sessions over 14 days"
    )
    assert first["link"] == f"/sessions/{first['session']}#t=5"


async def test_actions_deny_and_kill(store: SqliteStore) -> None:
    clock = Clock()
    settings = parse_settings({"actions": {"exfil.copy_sensitive": "deny", "exfil.sensitive_whole": "kill",
                                           "burst.denials": "kill"}, "burst_denials": 2})  # fmt: skip
    det = Detector(settings, store, Alerts(store), clock=clock)
    s = Sess("s1", clock.now, "alice", Named("db"), Policy(Sql(frozenset({"cards"}))))
    w = det.watch(s)
    ok = w.sql(inspect("SELECT id FROM cards WHERE id = 1"), ALLOW)
    assert ok is ALLOW
    copy = w.sql(inspect("COPY cards TO STDOUT"), ALLOW)
    assert (copy.verdict, copy.rule) == (Verdict.DENY, exfil.COPY_SENSITIVE)
    assert copy.reason.startswith("unusual activity: alice copied sensitive table cards out of db")
    whole = w.sql(inspect("SELECT * FROM cards"), ALLOW)
    assert (whole.verdict, whole.rule) == (Verdict.KILL, exfil.SENSITIVE_WHOLE)
    # the two refusals above were a burst of denials: its action ends the session
    assert s.kills and s.kills[0].startswith("detection burst.denials: alice had 2 statements or commands denied")
    # a policy's scope can turn a rule off or choose another action
    scope = Overrides(frozenset({exfil.SENSITIVE_WHOLE}), {exfil.COPY_SENSITIVE: "alert"})
    s2 = Sess("s2", clock.now, "carol", Named("db"), Policy(Sql(frozenset({"cards"})), scope))
    w2 = det.watch(s2)
    assert w2.sql(inspect("COPY cards TO STDOUT"), ALLOW) is ALLOW
    assert w2.sql(inspect("SELECT * FROM cards"), ALLOW) is ALLOW
    rules = [d["rule"] for d in await detections(store, det) if d["session"] == "s2"]
    assert rules == [exfil.COPY_SENSITIVE]


async def test_policy_hours_and_a_kill_at_the_start(store: SqliteStore) -> None:
    clock = Clock()  # 09:00 UTC
    det = Detector(parse_settings({"actions": {"usual.hour": "kill"}}), store, Alerts(store), clock=clock)
    inside = Sess("s1", clock.now, "alice", Named("db"), Policy(detection=parse_overrides({"hours": "8-18"})))
    det.watch(inside)
    outside = Sess("s2", clock.now, "alice", Named("db"), Policy(detection=parse_overrides({"hours": "20-6"})))
    det.watch(outside)
    assert inside.kills == [] and outside.kills[0].startswith("detection usual.hour: alice opened a session on db")
    found = await detections(store, det)
    assert [(d["rule"], d["session"]) for d in found] == [(usual.UNUSUAL_HOUR, "s2")]
    assert "outside the policy's hours 20-06" in found[0]["explanation"]


async def test_volumes_learned_from_stored_sessions_after_a_restart(store: SqliteStore) -> None:
    clock = Clock()
    for i in range(12):
        start = T0 - DAY * (12 - i)
        await store.add_session(SessionRecord(f"s{i}", "g1", "alice", "db", "read", "postgres", "10.0.0.7:1", start))
        stats = {"rows": 100, "bytes_out": 10_000, "statements": 10}
        await store.end_session(f"s{i}", ended_at=start + 600, reason="ended", recording_sha256=None, stats=stats)
    det = await Detector(DetectionSettings(), store, Alerts(store), clock=clock).load()
    s = Sess("big", clock.now, "alice", Named("db"))
    det.watch(s)
    s.stats.update(rows=50_000, bytes_out=5_000, statements=10)
    await det.on_session_end(End(s, clock.now + 600))  # type: ignore[arg-type]
    found = [d for d in await detections(store, det) if d["rule"].startswith("usual.")]
    assert [d["rule"] for d in found] == ["usual.volume.rows"]
    assert found[0]["explanation"].startswith("session big of alice on db was 50000 rows, over 1000")
    assert found[0]["offset"] == 600
    # a grant already used from 10.0.0.7 (its stored sessions) used from elsewhere
    s2 = Sess("other", clock.now, "alice", Named("db"), client_addr="198.51.100.4:5000")
    det.watch(s2)
    assert [d["rule"] for d in await detections(store, det)][-1] == bursts.NEW_ADDRESS


async def test_the_targets_p95_stands_in_for_a_new_user(store: SqliteStore) -> None:
    u = usual.Usual()
    for i in range(12):
        u.ended(f"user{i}", "db", f"s{i}", {"rows": 100.0})
    limits = u.limits("newcomer", "db")
    assert limits["rows"] < 0  # the target's, not theirs
    (d,) = u.ended("newcomer", "db", "x", {"rows": 5000.0}, limits)
    assert "the p95 of all sessions on db" in d.explanation


def test_volumes_of_a_session() -> None:
    v = volumes("postgres", {"rows": 10, "bytes_out": 99, "statements": 30}, 120.0)
    assert v == {"rows": 10.0, "bytes": 99.0, "rate": 15.0, "duration": 120.0}
    assert volumes("ssh", {"commands": 3}, 5.0) == {"rate": 3.0, "duration": 5.0}  # under a minute counts as one


def test_settings_and_overrides_refuse_what_they_cannot_do() -> None:
    assert parse_settings({}).sweep_every == 30.0
    assert parse_settings({"sweep_every": 5}).sweep_every == 5
    with pytest.raises(SettingsError) as bad:
        parse_settings({"sweep_every": 0})
    assert bad.value.key == "sweep_every"
    with pytest.raises(SettingsError) as e:
        parse_settings({"actions": {"first_use.table": "deny"}})
    assert e.value.key == "actions.first_use.table" and "alert" in str(e.value)
    with pytest.raises(SettingsError):
        parse_settings({"actions": {"usual.hour": "deny"}})  # a session's start cannot be "denied": kill
    with pytest.raises(SettingsError):
        parse_settings({"actions": {"no.such_rule": "alert"}})
    assert actions_allowed(exfil.COPY_SENSITIVE) == ("alert", "deny", "kill")
    assert actions_allowed(model.RUBBER_STAMP) == ("alert",)
    assert parse_overrides({"hours": "22-6"}).hours == (22, 6)
    assert parse_overrides({"hours": "8-24"}).hours == (8, 0)
    refused: list[dict[str, Any]] = [{"hours": "25-3"}, {"hours": "8-8"}, {"hours": 8}, {"disabled": "x"}, {"off": []}]
    for doc in refused:
        with pytest.raises(SettingsError):
            parse_overrides(doc)
    rules = parse_settings({"off": ["usual.day"], "actions": {"burst.errors": "kill"}}).rules(
        Overrides(frozenset({"usual.hour"}), {"burst.errors": "alert"}, (8, 18))
    )
    assert not rules.on("usual.day") and not rules.on("usual.hour") and rules.action("burst.errors") == "alert"


def test_scope_rank() -> None:
    assert scope_rank("read", False, 0) < scope_rank("write", False, 0) < scope_rank("admin", False, 0)
    assert scope_rank(None, True, 0) < scope_rank(None, False, 2) < scope_rank(None, False, 0)
