"""Detection as plain values: baselines with warm-up, settings, workflow rules, command names."""

from __future__ import annotations

import re

import pytest

from gateway.detect.baseline import ANY_TARGET, Baselines, Seen
from gateway.detect.model import NO_TICKET, RUBBER_STAMP, SAME_APPROVER
from gateway.detect.settings import DetectionSettings, SettingsError, parse_settings
from gateway.detect.watch import command_name
from gateway.detect.workflow import approval_findings
from gateway.store import RequestRecord


def test_first_use_is_novel_only_after_warm_up() -> None:
    b = Baselines(warmup=2)
    for _ in range(2):  # warm-up sessions: everything new is learned, nothing flagged
        assert b.start("alice", "db", 0.0) in (Seen.LEARNED, Seen.KNOWN)
        assert b.note("alice", "db", "table", "orders") in (Seen.LEARNED, Seen.KNOWN)
    b.start("alice", "db", 0.0)
    assert b.note("alice", "db", "table", "orders") is Seen.KNOWN
    assert b.note("alice", "db", "table", "payments.cards") is Seen.NOVEL
    assert b.note("alice", "db", "table", "payments.cards") is Seen.KNOWN  # flagged once
    # a new target after the user's warm-up is novel; its own tables still warm up
    assert b.start("alice", "web-1", 0.0) is Seen.NOVEL
    assert b.note("alice", "web-1", "command", "iptables") is Seen.LEARNED
    assert b.of("alice", ANY_TARGET).sessions == 4


def test_baselines_load_from_stored_history() -> None:
    b = Baselines(warmup=5)
    b.load([("alice", "db", 7, 100.0)], [("alice", "db", "table", "orders"), ("alice", "", "target", "db")])
    assert b.start("alice", "db", 200.0) is Seen.KNOWN
    assert b.note("alice", "db", "table", "orders") is Seen.KNOWN
    assert b.note("alice", "db", "table", "secrets") is Seen.NOVEL
    assert b.of("alice", "db").since == 100.0


def test_settings() -> None:
    s = parse_settings({"off": ["first_use.shape"], "warmup_sessions": 3, "ticket_pattern": r"[A-Z]+-\d+"})
    assert not s.on("first_use.shape") and s.on("first_use.table") and s.warmup_sessions == 3
    assert s.ticket_pattern is not None and s.ticket_pattern.search("INC-12")
    for doc, key in (
        ({"off": ["nope"]}, "off"),
        ({"warmup_sessions": -1}, "warmup_sessions"),
        ({"warmup_sessions": True}, "warmup_sessions"),
        ({"ticket_pattern": "("}, "ticket_pattern"),
        ({"rubber_stamp_seconds": "10"}, "rubber_stamp_seconds"),
    ):
        with pytest.raises(SettingsError) as e:
            parse_settings(doc)
        assert e.value.key == key


def _req(i: int, created: float, approver: str = "", reason: str = "INC-1: fix") -> RequestRecord:
    approvals = ({"by": approver, "at": created + 60},) if approver else ()
    return RequestRecord(f"r_{i}", "alice", "db", "read", reason, 900.0, created, "approved", approvals)


def test_approval_rules() -> None:
    s = DetectionSettings(ticket_pattern=re.compile(r"[A-Z]+-\d+"))
    now = 10 * 86_400.0
    req = _req(0, now - 3, reason="need to look")
    found = {d.rule: d for d in approval_findings(s, req, "bob", now, [req])}
    assert set(found) == {RUBBER_STAMP, NO_TICKET}
    assert "bob approved alice's request r_0 for db/read 3.0 s after it was filed" == found[RUBBER_STAMP].explanation
    # three earlier approvals of alice by bob within 30 days: the fourth is flagged; a slow, ticketed one is not
    earlier = [_req(i, now - i * 86_400, "bob") for i in range(1, 4)]
    slow = _req(9, now - 600)
    assert [d.rule for d in approval_findings(s, slow, "bob", now, earlier)] == [SAME_APPROVER]
    assert approval_findings(s, slow, "carol", now, earlier) == []
    assert approval_findings(DetectionSettings(off=frozenset({SAME_APPROVER})), slow, "bob", now, earlier) == []


def test_command_name() -> None:
    assert command_name("/usr/sbin/iptables -L") == "iptables"
    assert command_name("LANG=C sudo -n systemctl restart x") == "systemctl"
    assert command_name("FOO=1 env ls -l") == "ls"
    assert command_name("   ") == ""
