"""Per-statement bookkeeping of a relayed session: pairs server replies with statements, records one line each."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.policy import Decision

MAX_PARAM_CHARS = 2048  # bind parameters are truncated in the recording: evidence, not a backup
MAX_PARAMS = 64
SUSPENDED = "PortalSuspended"
TX_NAMES = {"I": "idle", "T": "transaction", "E": "failed"}


class Recorder(Protocol):
    """What the journal needs of a StatementRecorder."""

    def record(self, event: dict[str, Any]) -> None: ...


class StatementInfo(Protocol):
    """The inspector's view of one statement."""

    kind: str
    tables: Any


class Stmt:
    """One statement on its way through the upstream (simple Query part, or an Execute)."""

    __slots__ = ("batch", "decision", "fingerprint", "kind", "limit", "params", "sql", "t0", "tables", "tx")

    def __init__(self, sql: str, params: list[str] | None, fingerprint: str, kind: str, tables: list[str],
                 decision: Decision, batch: int, tx: str) -> None:  # fmt: skip
        self.sql = sql
        self.params = params
        self.fingerprint = fingerprint
        self.kind = kind
        self.tables = tables
        self.decision = decision
        self.batch = batch
        self.tx = tx
        self.limit = 0  # Execute's row limit: a PortalSuspended means exactly this many rows came back
        self.t0 = time.perf_counter()


def describe_params(values: Sequence[bytes | None], formats: Sequence[int]) -> list[str] | None:
    """Bind parameters for the recording: text ones as text, binary ones as hex, each truncated."""
    if not values:
        return None
    out: list[str] = []
    nfmt = len(formats)
    for i, v in enumerate(values[:MAX_PARAMS]):
        if v is None:
            out.append("NULL")
            continue
        fmt = formats[0] if nfmt == 1 else formats[i] if i < nfmt else 0
        if fmt == 0:
            s = v[:MAX_PARAM_CHARS].decode("utf-8", "replace")
        else:
            s = "\\x" + v[: MAX_PARAM_CHARS // 2].hex()
        if len(v) > (MAX_PARAM_CHARS if fmt == 0 else MAX_PARAM_CHARS // 2):
            s += f"... ({len(v)} bytes)"
        out.append(s)
    if len(values) > MAX_PARAMS:
        out.append(f"... ({len(values)} parameters)")
    return out


def _tables(x: Any) -> list[str]:
    return sorted(x) if x else []


class Journal:
    """The statement FIFO: server replies arrive in the order statements were sent."""

    def __init__(self, recorder: Recorder, *, max_rows: int | None, alert: Any) -> None:
        self.recorder = recorder
        self.max_rows = max_rows
        self._alert = alert
        self.pending: deque[Stmt] = deque()
        self.statements = 0
        self.denied = 0
        self.errors = 0
        self.rows = 0
        self.last_tag = ""
        self._done: list[dict[str, Any]] = []  # finished, waiting for ReadyForQuery to learn the tx state

    def started(self, sql: str, params: list[str] | None, fingerprint: str, kind: str, tables: Any,
                decision: Decision, batch: int, tx: str, limit: int = 0) -> None:  # fmt: skip
        """A statement was forwarded upstream."""
        s = Stmt(sql, params, fingerprint, kind, _tables(tables), decision, batch, tx)
        s.limit = limit
        self.pending.append(s)

    def refused(self, sql: str, params: list[str] | None, fingerprint: str, kind: str, tables: Any,
                decision: Decision, tx: str) -> None:  # fmt: skip
        """A statement the gateway refused: recorded now, it never reaches the upstream."""
        self.denied += 1
        self.statements += 1
        why = f"blocked by gateway policy: {decision.rule}: {decision.reason}"
        ev = self._event(sql, params, fingerprint, kind, _tables(tables), decision, None, 0.0, "42501", why, tx)
        self.recorder.record(ev)

    def completed(self, rows: int | None, tag: str) -> None:
        """CommandComplete / EmptyQueryResponse / PortalSuspended for the oldest pending statement."""
        self.last_tag = tag
        if not self.pending:
            return
        s = self.pending.popleft()
        if tag == SUSPENDED:
            rows = s.limit or None
        if rows is not None:
            self.rows += rows
            if self.max_rows is not None and rows > self.max_rows and tag.startswith(("SELECT", "COPY", "FETCH")):
                self._alert("sql.max_rows", f"statement returned {rows} rows (policy max_rows {self.max_rows})",
                            rows=rows, fingerprint=s.fingerprint)  # fmt: skip
        self._finish(s, rows, None, None, tag)

    def failed(self, sqlstate: str, message: str, batch: int) -> None:
        """ErrorResponse in batch `batch`: its oldest pending statement failed (the server skips the rest)."""
        self.errors += 1
        if self.pending and self.pending[0].batch == batch:
            self._finish(self.pending.popleft(), None, sqlstate, message, None)

    def batch_end(self, batch: int, before: str, status: str) -> None:
        """ReadyForQuery number `batch` with transaction status `status`: write the batch's statements."""
        pending = self.pending
        while pending and pending[0].batch <= batch:
            self._finish(pending.popleft(), None, None, "not executed: an earlier statement in the batch failed", None)
        tx = TX_NAMES.get(status, status)
        record = self.recorder.record
        for ev in self._done:
            ev["tx"] = tx
            record(ev)
        self._done.clear()
        if before != "I" and status == "I":
            tag = self.last_tag.upper()
            outcome = "rollback" if before == "E" or tag.startswith("ROLLBACK") else "commit"
            record({"type": "transaction", "outcome": outcome})

    def flush(self) -> None:
        """Write what is still waiting (the session is ending)."""
        for ev in self._done:
            self.recorder.record(ev)
        self._done.clear()

    def _finish(self, s: Stmt, rows: int | None, sqlstate: str | None, error: str | None, tag: str | None) -> None:
        self.statements += 1
        ms = round((time.perf_counter() - s.t0) * 1000.0, 3)
        ev = self._event(s.sql, s.params, s.fingerprint, s.kind, s.tables, s.decision, rows, ms, sqlstate, error,
                         s.tx)  # fmt: skip
        if tag:
            ev["tag"] = tag
        self._done.append(ev)

    def _event(self, sql: str, params: list[str] | None, fingerprint: str, kind: str, tables: list[str],
               d: Decision, rows: int | None, ms: float, sqlstate: str | None, error: str | None,
               tx: str) -> dict[str, Any]:  # fmt: skip
        """One statement line; the schema is in gateway/review/replay.py. Empty keys are left out (null = absent):
        the recording's JSON encoding shares the GIL with the relay, so fewer keys are more TPS."""
        ev: dict[str, Any] = {"type": "statement", "sql": sql, "fingerprint": fingerprint, "kind": kind,
                              "verdict": d.verdict.value, "duration_ms": ms, "tx": TX_NAMES.get(tx, tx)}  # fmt: skip
        if params:
            ev["params"] = params
        if tables:
            ev["tables"] = tables
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
        return ev
