"""/metrics is valid Prometheus text (0.0.4) and counts what the issue asks for."""

from __future__ import annotations

import re
import time
from pathlib import Path

from gateway.config import WorkerSlot
from gateway.metrics import Local, Metric, merge, render
from gateway.workermetrics import STALE, decode, encode, publish, siblings, withdraw
from tests.control.conftest import Running
from tests.held import hold

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(\{{(?:{_LABEL})(?:,{_LABEL})*\}})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$")
_HELP = re.compile(rf"^# HELP ({_NAME}) .*$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")


def parse(text: str) -> dict[str, list[tuple[str, float]]]:
    """A strict reader of the text format: every line must be HELP, TYPE or a sample of a declared family."""
    assert text.endswith("\n")
    families: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if m := _HELP.match(line):
            continue
        if m := _TYPE.match(line):
            assert m.group(1) not in families, f"family declared twice: {line}"
            families[m.group(1)] = m.group(2)
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name = m.group(1)
        assert name in families, f"sample before its TYPE: {line}"
        if families[name] == "counter":
            assert name.endswith("_total"), name
        samples.setdefault(name, []).append((m.group(2) or "", float(m.group(3))))
    return samples


async def test_metrics_parse_and_count(gw: Running) -> None:
    await gw.ok("alice", "POST", "/v1/requests", {"target": "orders-db", "scope": "read", "ttl": 60, "reason": "a"})
    _, _, token = await gw.approved_grant()
    s = await hold(gw.services.access, token=token, target="orders-db", protocol="postgres", client_addr="x")
    s.stats["statements"] = 7
    s.stats["denied"] = 2
    await gw.call(None, "GET", "/v1/whoami")  # an auth failure
    status, text = await gw.call(None, "GET", "/metrics")
    assert status == 200
    m = parse(text)
    assert ('{protocol="postgres",target="orders-db"}', 1.0) in m["gateway_live_sessions"]
    assert ('{protocol="ssh",target="web-1"}', 0.0) in m["gateway_live_sessions"]
    assert ('{target="orders-db"}', 7.0) in m["gateway_statements_total"]
    assert ('{target="orders-db"}', 2.0) in m["gateway_denials_total"]
    assert m["gateway_approvals_pending"] == [("", 1.0)]
    assert m["gateway_api_auth_failures_total"] == [("", 1.0)]
    await s.kill("test over", by="erin")
    m = parse((await gw.call(None, "GET", "/metrics"))[1])
    assert m["gateway_session_kills_total"] == [("", 1.0)]
    assert ('{target="orders-db"}', 7.0) in m["gateway_statements_total"]  # ended sessions still count


def test_render_escapes_labels() -> None:
    text = render([Metric("x_total", "counter", "a\nb", (({"t": 'q"\\\n'}, 1.5),))])
    assert parse(text) == {"x_total": [('{t="q\\"\\\\\\n"}', 1.5)]}


def test_workers_locals_add_up_and_stale_or_broken_files_are_left_out(tmp_path: Path) -> None:
    auth = "gateway_api_auth_failures_total"
    w0 = Local({("orders", "postgres"): 3}, {"orders": (10.0, 1.0, 0.0)}, (Metric(auth, "counter", "h", (({}, 2.0),)),))
    w1 = Local({("orders", "postgres"): 2, ("web-1", "ssh"): 1}, {"orders": (5.0, 0.0, 0.0)},
               (Metric(auth, "counter", "h", (({}, 1.0),)),))  # fmt: skip
    assert decode(encode(w1)) == w1
    total = merge([w0, w1])
    assert total.live == {("orders", "postgres"): 5, ("web-1", "ssh"): 1}
    assert total.stats == {"orders": (15.0, 1.0, 0.0)} and total.extra[0].samples == (({}, 3.0),)
    slots = [WorkerSlot(i, 3, tmp_path) for i in range(3)]
    publish(slots[1], w1)
    (tmp_path / "metrics-w2.json").write_text("{not json")
    assert siblings(slots[0]) == [w1]  # w2's file is unreadable: left out, nothing raised
    assert siblings(slots[0], now=time.time() + STALE + 1) == []  # a dead worker's file goes stale
    withdraw(slots[1])
    assert siblings(slots[0]) == []
