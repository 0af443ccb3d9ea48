"""The journal renders statement lines itself (cached fragments + escaped values): they must parse to exactly the
object the reference encoding (a dict through json.dumps, as before) gives, for any text the server might send."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pg.journal import TX_NAMES, Journal
from gateway.policy import Decision, Verdict


class Lines:
    """A recorder that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.now = 1.25

    def record(self, event: dict[str, Any]) -> None:
        self.lines.append(json.dumps(event) + "\n")

    def record_line(self, line: str) -> None:
        assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
        self.lines.append(line)

    def elapsed(self) -> float:
        return self.now


def reference(
    sql: str,
    params: list[str] | None,
    fingerprint: str,
    kind: str,
    tables: Any,
    d: Decision,
    rows: int | None,
    sqlstate: str | None,
    error: str | None,
    tx: str,
    tag: str | None,
) -> dict[str, Any]:
    """The event as a dict, empty keys left out (the schema in gateway/recording/schema.py)."""
    ev: dict[str, Any] = {"t": 1.25, "type": "statement", "sql": sql, "fingerprint": fingerprint, "kind": kind,
                          "verdict": d.verdict.value, "tx": TX_NAMES.get(tx, tx)}  # fmt: skip
    if params:
        ev["params"] = params
    if tables:
        ev["tables"] = sorted(tables)
    if rows is not None:
        ev["rows"] = rows
    if d.rule:
        ev["rule"] = d.rule
        ev["reason"] = d.reason
    if sqlstate:
        ev["sqlstate"] = sqlstate
    if error:
        ev["error"] = error
    if d.alerts:
        ev["alerts"] = list(d.alerts)
    if tag:
        ev["tag"] = tag
    out: dict[str, Any] = json.loads(json.dumps(ev))
    return out


def parsed(line: str) -> dict[str, Any]:
    ev: dict[str, Any] = json.loads(line)
    assert ev.pop("duration_ms") >= 0
    return ev


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["SELECT 1", 'x"y\\z', "\u2028\u00e9\x00\x1b]52;", "\ud800"]
)
decisions = st.builds(Decision, st.sampled_from(list(Verdict)), texts, texts, st.lists(texts, max_size=3).map(tuple))


@settings(max_examples=300, deadline=None)
@given(sql=texts, params=st.none() | st.lists(texts, max_size=3), fp=texts, kind=texts,
       tables=st.frozensets(texts, max_size=3), d=decisions, rows=st.none() | st.integers(0, 2**62),
       tag=texts, status=st.sampled_from(["I", "T", "E", "?", '"']))  # fmt: skip
def test_completed_line_matches_reference(sql: str, params: list[str] | None, fp: str, kind: str,
                                          tables: frozenset[str], d: Decision, rows: int | None, tag: str,
                                          status: str) -> None:  # fmt: skip
    rec = Lines()
    j = Journal(rec, max_rows=None, alert=lambda *a, **k: None)
    for _ in range(2):  # the second time from the cached fragment
        j.started(sql, params, fp, kind, tables, d, 1, "I")
        j.completed(rows, tag)
        j.batch_end(1, "I", status)
    assert len(rec.lines) == 2 and rec.lines[0].split('"duration_ms"')[0] == rec.lines[1].split('"duration_ms"')[0]
    want = reference(sql, params, fp, kind, tables, d, rows, None, None, status, tag)
    assert parsed(rec.lines[0]) == want and parsed(rec.lines[1]) == want


@settings(max_examples=100, deadline=None)
@given(sql=texts, fp=texts, d=decisions, sqlstate=texts, error=texts)
def test_failed_and_refused_lines_match_reference(sql: str, fp: str, d: Decision, sqlstate: str, error: str) -> None:
    rec = Lines()
    j = Journal(rec, max_rows=None, alert=lambda *a, **k: None)
    j.started(sql, None, fp, "select", frozenset({"b", "a"}), d, 1, "T")
    j.started("SELECT 2", None, fp, "select", frozenset({"b", "a"}), d, 1, "T")
    j.failed(sqlstate, error, 1)
    j.batch_end(1, "T", "E")
    j.refused(sql, ["1"], fp, "update", (), d, "E")
    first, second, refused = (parsed(line) for line in rec.lines)
    assert first == reference(sql, None, fp, "select", {"a", "b"}, d, None, sqlstate, error, "E", None)
    assert second == reference("SELECT 2", None, fp, "select", {"a", "b"}, d, None, None,
                               "not executed: an earlier statement in the batch failed", "E", None)  # fmt: skip
    why = f"blocked by gateway policy: {d.rule}: {d.reason}"
    assert refused == reference(sql, ["1"], fp, "update", (), d, None, "42501", why, "E", None)


def test_shape_cache_follows_the_decision() -> None:
    rec = Lines()
    j = Journal(rec, max_rows=None, alert=lambda *a, **k: None)
    for d in (Decision.allow(), Decision.allow("sensitive-table:x"), Decision.deny("r", "why"), Decision.allow()):
        j.started("SELECT 1", None, "select ?", "select", frozenset({"x"}), d, 1, "I")
        j.completed(1, "SELECT 1")
        j.batch_end(1, "I", "I")
    got = [parsed(line) for line in rec.lines]
    assert [g["verdict"] for g in got] == ["allow", "alert", "deny", "allow"]
    assert [g.get("alerts") for g in got] == [None, ["sensitive-table:x"], None, None]
    assert [g.get("rule") for g in got] == [None, None, "r", None]


def test_transaction_and_flush_lines() -> None:
    rec = Lines()
    j = Journal(rec, max_rows=None, alert=lambda *a, **k: None)
    j.started("BEGIN", None, "begin", "begin", (), Decision.allow(), 1, "I")
    j.completed(None, "BEGIN")
    j.batch_end(1, "I", "T")
    j.started("COMMIT", None, "commit", "commit", (), Decision.allow(), 2, "T")
    j.completed(None, "COMMIT")
    j.batch_end(2, "T", "I")
    j.started("SELECT 1", None, "select ?", "select", (), Decision.allow(), 3, "I")
    j.completed(1, "SELECT 1")
    j.flush()
    evs = [json.loads(line) for line in rec.lines]
    assert [e["type"] for e in evs] == ["statement", "statement", "transaction", "statement"]
    assert evs[2] == {"t": 1.25, "type": "transaction", "outcome": "commit"}
    assert evs[3]["tx"] == "idle" and evs[3]["rows"] == 1
    assert j.statements == 3 and j.rows == 1


def test_deferred_lines_wait_for_write_later_and_keep_their_order_and_times() -> None:
    """The relay's mode: a batch's lines are encoded after the client has its answer, with the batch's time;
    a line recorded for another reason (a refusal, a kill, the session's end) writes them first."""
    rec = Lines()
    j = Journal(rec, max_rows=None, alert=lambda *a, **k: None)
    j.defer = True
    j.started("BEGIN", None, "begin", "begin", (), Decision.allow(), 1, "I")
    j.completed(None, "BEGIN")
    j.batch_end(1, "I", "T")
    j.started("COMMIT", None, "commit", "commit", (), Decision.allow(), 2, "T")
    j.completed(None, "COMMIT")
    j.batch_end(2, "T", "I")
    assert rec.lines == []
    rec.now = 9.5
    j.write_later()
    evs = [json.loads(line) for line in rec.lines]
    assert [(e["type"], e["t"]) for e in evs] == [("statement", 1.25), ("statement", 1.25), ("transaction", 1.25)]
    j.write_later()
    assert len(rec.lines) == 3  # written once
    j.started("SELECT 1", None, "select ?", "select", (), Decision.allow(), 3, "I")
    j.completed(1, "SELECT 1")
    j.batch_end(3, "I", "I")
    j.refused("DROP TABLE t", None, "drop table t", "ddl", (), Decision.deny("r", "no"), "I")
    j.started("SELECT 2", None, "select ?", "select", (), Decision.allow(), 4, "I")
    j.completed(1, "SELECT 1")
    j.batch_end(4, "I", "I")
    j.killed("revoked")
    sqls = [json.loads(line).get("sql") or json.loads(line)["type"] for line in rec.lines[3:]]
    assert sqls == ["SELECT 1", "DROP TABLE t", "SELECT 2", "kill"]
    assert json.loads(rec.lines[3])["t"] == 9.5
