"""Per-statement bookkeeping of a relayed session: pairs server replies with statements, records one line each."""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.policy import Decision
from gateway.recording import schema

MAX_PARAM_CHARS = 2048  # longer bind parameters: head and tail in the line, the whole value in the sidecar
PARAM_EDGE = 1024
ELISION = "\u2026"  # between head and tail of a long value (the line's long_params says it is elided)
SUSPENDED = "PortalSuspended"
TX_NAMES = schema.TX_STATES


class Recorder(Protocol):
    """What the journal needs of a StatementRecorder."""

    def record(self, event: dict[str, Any]) -> None: ...

    def record_line(self, line: str) -> None: ...

    def elapsed(self) -> float: ...


class Watcher(Protocol):
    """What the journal tells detection (gateway/detect/watch.py): results of `large_rows` rows or more, failures."""

    large_rows: int

    def large_result(self, fingerprint: str, tables: Any, rows: int) -> None: ...

    def failed(self) -> None: ...


class _Unwatched:
    large_rows = sys.maxsize

    def large_result(self, fingerprint: str, tables: Any, rows: int) -> None:
        """Nobody looks."""

    def failed(self) -> None:
        """Nobody counts."""


class Stmt:
    """One statement on its way through the upstream (simple Query part, or an Execute)."""

    __slots__ = ("batch", "decision", "fingerprint", "kind", "limit", "long", "params", "sql", "t0", "tables", "tx")

    def __init__(self, sql: str, params: list[str] | None, fingerprint: str, kind: str, tables: Any,
                 decision: Decision, batch: int, tx: str, limit: int = 0,
                 long: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        self.sql = sql
        self.params = params
        self.fingerprint = fingerprint
        self.kind = kind
        self.tables = tables
        self.decision = decision
        self.batch = batch
        self.tx = tx
        self.limit = limit  # Execute's row limit: a PortalSuspended means exactly this many rows came back
        self.long = long  # where elided parameters are kept whole (sidecar)
        self.t0 = time.perf_counter()


LongParams = list[dict[str, Any]]


def describe_params(
    values: Sequence[bytes | None], formats: Sequence[int], attach: Callable[[bytes], int] | None = None
) -> tuple[list[str] | None, LongParams | None]:
    """Bind parameters for the recording: text ones as text, binary ones as hex, every one of them.

    A value longer than MAX_PARAM_CHARS bytes is shown as its head and tail (PARAM_EDGE bytes each,
    joined by ELISION) and kept whole in the recording's sidecar through `attach`; the second list
    says where (index, bytes, sha256, offset, format). Nothing is dropped: a payload padded past
    any limit is still recorded, searchable and covered by the recording's hash.
    """
    if not values:
        return None, None
    out: list[str] = []
    long: list[dict[str, Any]] | None = None
    nfmt = len(formats)
    for i, v in enumerate(values):
        if v is None:
            out.append("NULL")
            continue
        fmt = formats[0] if nfmt == 1 else formats[i] if i < nfmt else 0
        if len(v) <= MAX_PARAM_CHARS:
            out.append(v.decode("utf-8", "replace") if fmt == 0 else "\\x" + v.hex())
            continue
        head, tail = v[:PARAM_EDGE], v[-PARAM_EDGE:]
        if fmt == 0:
            out.append(head.decode("utf-8", "replace") + ELISION + tail.decode("utf-8", "replace"))
        else:
            out.append("\\x" + head.hex() + ELISION + tail.hex())
        entry = schema.long_param(i, len(v), hashlib.sha256(v).hexdigest(), binary=fmt != 0,
                                  offset=attach(v) if attach is not None else None)  # fmt: skip
        if long is None:
            long = []
        long.append(entry)
    return out, long


_Done = tuple[Stmt, int | None, float, str | None, str | None, str | None]


class Journal:
    """The statement FIFO: server replies arrive in the order statements were sent.

    Statement lines are rendered by `schema.StatementEncoder` (the schema is in gateway/recording/schema.py).
    """

    def __init__(self, recorder: Recorder, *, max_rows: int | None, alert: Any) -> None:
        self.recorder = recorder
        # Long values go to the recording's sidecar (a recorder without one records head and tail only).
        self.attach: Callable[[bytes], int] | None = getattr(recorder, "attach", None)
        self.max_rows = max_rows
        self._alert = alert
        self.pending: deque[Stmt] = deque()
        self.statements = 0
        self.denied = 0
        self.errors = 0
        self.rows = 0
        self.last_tag = ""
        # Finished, waiting for ReadyForQuery to learn the tx state: (stmt, rows, ms, sqlstate, error, tag).
        self._done: list[_Done] = []
        self._encoder = schema.StatementEncoder()
        self.watch: Watcher = _Unwatched()
        # The relay writes a batch's lines after it has passed ReadyForQuery on (`write_later`), so encoding
        # them is off the client's round trip; lines recorded for any other reason write these first (order).
        self.defer = False
        self._later: list[tuple[float, str, list[_Done], str | None]] = []

    def started(self, sql: str, params: list[str] | None, fingerprint: str, kind: str, tables: Any,
                decision: Decision, batch: int, tx: str, limit: int = 0,
                long: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        """A statement was forwarded upstream."""
        self.pending.append(Stmt(sql, params, fingerprint, kind, tables, decision, batch, tx, limit, long))

    def refused(self, sql: str, params: list[str] | None, fingerprint: str, kind: str, tables: Any,
                decision: Decision, tx: str) -> None:  # fmt: skip
        """A statement the gateway refused: recorded now, it never reaches the upstream."""
        self.denied += 1
        self.statements += 1
        why = f"blocked by gateway policy: {decision.rule}: {decision.reason}"
        self.write_later()
        s = Stmt(sql, params, fingerprint, kind, tables, decision, 0, tx)
        self.recorder.record_line(self._line(self.recorder.elapsed(), s, None, 0.0, "42501", why, None, tx))

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
            if rows >= self.watch.large_rows:
                self.watch.large_result(s.fingerprint, s.tables, rows)
        self.statements += 1
        self._done.append((s, rows, (time.perf_counter() - s.t0) * 1000.0, None, None, tag))

    def failed(self, sqlstate: str, message: str, batch: int) -> None:
        """ErrorResponse in batch `batch`: its oldest pending statement failed (the server skips the rest)."""
        self.errors += 1
        self.watch.failed()
        if self.pending and self.pending[0].batch == batch:
            self._finish(self.pending.popleft(), sqlstate, message)

    def batch_end(self, batch: int, before: str, status: str) -> None:
        """ReadyForQuery number `batch` with transaction status `status`: write the batch's statements."""
        pending = self.pending
        while pending and pending[0].batch <= batch:
            self._finish(pending.popleft(), None, "not executed: an earlier statement in the batch failed")
        outcome = None
        if before != "I" and status == "I":
            tag = self.last_tag.upper()
            outcome = "rollback" if before == "E" or tag.startswith("ROLLBACK") else "commit"
        if not self._done and outcome is None:
            return
        entry = (self.recorder.elapsed(), status, self._done, outcome)
        self._done = []
        self._later.append(entry)
        if not self.defer:
            self.write_later()

    def write_later(self) -> None:
        """Record the lines of the batches that have ended (the relay calls this after writing to the client)."""
        later = self._later
        if not later:
            return
        record_line, line = self.recorder.record_line, self._encoder.line
        for t, status, done, outcome in later:
            tx = TX_NAMES.get(status) or status
            for s, rows, ms, sqlstate, error, tag in done:
                record_line(line(t, s.sql, s.fingerprint, s.kind, s.tables, s.decision, ms, tx, s.params, s.long,
                                 rows, sqlstate, error, tag))  # fmt: skip
            if outcome is not None:
                record_line(schema.transaction_line(t, outcome))
        later.clear()

    def killed(self, reason: str) -> None:
        """The session is being killed."""
        self.write_later()
        self.recorder.record_line(schema.event_line(self.recorder.elapsed(), schema.KILL_EVENT, reason=reason))

    def tripwire(self, reason: str, **detail: str) -> None:
        """A wall fell upstream (the server reported a parameter it must not)."""
        self.write_later()
        self.recorder.record_line(schema.event_line(self.recorder.elapsed(), schema.TRIPWIRE, reason=reason, **detail))

    def flush(self) -> None:
        """Write what is still waiting (the session is ending); their tx is the one they started in."""
        self.write_later()
        t = self.recorder.elapsed()
        for s, rows, ms, sqlstate, error, tag in self._done:
            self.recorder.record_line(self._line(t, s, rows, ms, sqlstate, error, tag, s.tx))
        self._done.clear()

    def _finish(self, s: Stmt, sqlstate: str | None, error: str | None) -> None:
        self.statements += 1
        self._done.append((s, None, (time.perf_counter() - s.t0) * 1000.0, sqlstate, error, None))

    def _line(self, t: float, s: Stmt, rows: int | None, ms: float, sqlstate: str | None, error: str | None,
              tag: str | None, status: str) -> str:  # fmt: skip
        """One statement line; `status` is ReadyForQuery's transaction status byte."""
        return self._encoder.line(t, s.sql, s.fingerprint, s.kind, s.tables, s.decision, ms,
                                  TX_NAMES.get(status) or status, s.params, s.long, rows, sqlstate, error,
                                  tag)  # fmt: skip
