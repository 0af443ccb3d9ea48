"""What a recording file holds: the version in every header, typed events, and the one encoder of each line.

Three file formats (written by ``gateway.recording.formats``, read by ``gateway.recording.reader``):

* SQL sessions, ``<session>.sql.jsonl``: JSON lines. The first is the header::

      {"type": "header", "recording_version": 2, "session": "s-1", "user": "alice", "target": "orders-db",
       "database": "shop", "login": "ro_alice", "scope": "read", "grant": "jti", "client": "10.0.0.7:50112",
       "application_name": "psql", "started_at": 1764210136.2, "protocol": "postgres"}

  then one object per event, each with ``t`` (seconds since the session started); absent keys are left out
  (``null`` also means absent) and unknown keys are ignored::

      {"type": "statement", "t": 1.5,
       "sql": "SELECT ...",                               the statement text as the client sent it
       "params": ["42", "\\x00ff"],                       bind parameters (extended protocol), each whole up to
                                                          2048 bytes, longer ones as head + U+2026 + tail
       "long_params": [{"index": 0, "bytes": 3100, "sha256": "...", "offset": 0, "format": "text"}],
                                                          the long ones, whole in the sidecar <session>.sql.blobs
                                                          at `offset` (see gateway/recording/sidecar.py)
       "fingerprint": "...", "kind": "select", "tables": ["orders"],
       "verdict": "allow" | "alert" | "deny" | "kill",    the policy decision
       "rule": "read-only", "reason": "UPDATE on orders", why (deny / kill / alert)
       "alerts": ["sensitive-table"],                     detections of an allowed statement
       "rows": 50, "duration_ms": 0.8, "tag": "SELECT 50", when it ran
       "sqlstate": "42P01", "error": "relation ... does not exist",   when the server refused it
       "tx": "idle" | "transaction" | "failed"}           transaction state after it (ReadyForQuery I / T / E)
      {"type": "transaction", "t": 9.1, "outcome": "commit" | "rollback"}   a transaction block ended
      {"type": "kill", "t": 12.0, "reason": "grant revoked"}                the session was killed
      {"type": "tripwire", "t": 3.0, "reason": ..., "parameter": "is_superuser", "value": "on", ...}  a wall fell
      {"type": "end", "t": 12.1, "reason": "client closed"}                 the session ended
      {"type": "sidecar", "t": 12.1, "file": "s-1.sql.blobs", "bytes": 3100, "sha256": "..."}   last, if any

* SSH sessions with a terminal, ``<session>.cast``: asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/),
  so ``asciinema play`` works: a header object (asciicast's own ``"version": 2`` plus ``recording_version``),
  then ``[t, code, data]`` lines, codes ``o`` output, ``i`` input, ``r`` resize (``"WxH"``), ``m`` marker.
* SSH channels without a terminal: a binary stream (see ``gateway.recording``), whose JSON header carries
  ``recording_version`` too; its frames (plain, or inside compressed ``z`` blocks) read as the same
  ``[t, code, data]`` events.

Markers (``m``) are how the SSH front end annotates a terminal recording; their labels are made by the
functions below and parsed by `parse_marker`, nowhere else: ``command: LINE`` is every command line (and exec
command) the policy judged, exactly as judged; ``blocked: ...``, ``sftp: ...``, ``kill: ...``,
``warning: ...``, ``exit: ...``, ``channel N: ...`` and, last in every file, ``session end: REASON``.

Versions: a header without ``recording_version`` is version 1 (files written before the field existed; they
may spell verdicts ``allowed``/``denied``/``killed``, name a transaction event ``tx``, and leave ``type`` out
of statement lines). Version 2 is this schema with plain binary streams; version 3 (this gateway) lets a binary
stream hold zstd-compressed blocks of frames (``gateway.recording.blocks``; the header says
``"compression": "zstd"``, frame format ``"version": 2``), the other formats unchanged. Every older version
is still read. A reader meeting a newer version reads what it knows, warns, and ignores the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _js
from typing import Any, NamedTuple, Protocol

RECORDING_VERSION = 3
"""The schema version this gateway writes."""
VERSION_KEY = "recording_version"
"""The header key that holds it, in every format."""
LEGACY_VERSION = 1
"""The version of a header without VERSION_KEY."""

ASCIICAST_VERSION = 2
BINARY_FORMAT = "gateway-binary-stream"
BINARY_FRAME_VERSION = 2
"""1: plain frames only; 2: runs of frames may be compressed ``z`` blocks (header ``"compression"``)."""

# -- markers (SSH) -------------------------------------------------------------------------------------------

COMMAND, BLOCKED, SFTP, KILL, WARNING, EXIT, CHANNEL, END, OTHER = (
    "command", "blocked", "sftp", "kill", "warning", "exit", "channel", "session end", "other",
)  # fmt: skip
_PREFIXES = tuple((kind, kind + ": ") for kind in (COMMAND, BLOCKED, SFTP, KILL, WARNING, EXIT, END))


class Marker(NamedTuple):
    """A parsed marker label: its kind (COMMAND, BLOCKED, ..., OTHER) and the text after the prefix."""

    kind: str
    text: str


def command_marker(line: str) -> str:
    """The label of a command line (or exec command) as the policy judged it."""
    return f"{COMMAND}: {line}"


def blocked_marker(what: str) -> str:
    """The label of something refused (a line, a channel request)."""
    return f"{BLOCKED}: {what}"


def sftp_marker(what: str) -> str:
    """The label of an SFTP file operation."""
    return f"{SFTP}: {what}"


def kill_marker(reason: str) -> str:
    """The label of the session's kill."""
    return f"{KILL}: {reason}"


def warning_marker(message: str) -> str:
    """The label of a warning shown to the user (the expiry notice)."""
    return f"{WARNING}: {message}"


def exit_marker(status: object) -> str:
    """The label of an exec channel's exit status or signal."""
    return f"{EXIT}: {status}"


def channel_marker(n: int, what: str, file_name: str) -> str:
    """The label, in the main file, that points at a further channel's file."""
    return f"{CHANNEL} {n}: {what} -> {file_name}"


def end_marker(reason: str) -> str:
    """The label that ends every terminal recording."""
    return f"{END}: {reason}"


def parse_marker(label: str) -> Marker:
    """What a marker label says."""
    for kind, prefix in _PREFIXES:
        if label.startswith(prefix):
            return Marker(kind, label[len(prefix) :])
    if label.startswith(CHANNEL + " ") and ": " in label:
        return Marker(CHANNEL, label[len(CHANNEL) + 1 :])
    if label == END:
        return Marker(END, "")
    return Marker(OTHER, label)


# -- terminal recordings ---------------------------------------------------------------------------------------


class TermEvent(NamedTuple):
    """One event of a terminal recording: seconds since the start, code (o, i, r, m), text."""

    t: float
    code: str
    data: str

    @property
    def marker(self) -> Marker | None:
        """The parsed marker, for an ``m`` event."""
        return parse_marker(self.data) if self.code == "m" else None


@dataclass(frozen=True)
class TermHeader:
    """The header of a terminal recording (asciicast, or a binary stream's)."""

    version: int
    width: int
    height: int
    timestamp: float | None
    title: str
    env: Mapping[str, str]
    binary: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict)


def cast_header(*, width: int, height: int, timestamp: float, title: str, env: Mapping[str, str]) -> str:
    """The asciicast v2 header line of a new terminal recording."""
    head = {"version": ASCIICAST_VERSION, VERSION_KEY: RECORDING_VERSION, "width": int(width), "height": int(height),
            "timestamp": int(timestamp), "title": title, "env": dict(env)}  # fmt: skip
    return json.dumps(head) + "\n"


def binary_header(*, width: int, height: int, timestamp: float, title: str, env: Mapping[str, str],
                  streams: Mapping[str, str], compression: str | None = None) -> str:  # fmt: skip
    """The JSON header line of a new binary stream recording (`compression`: the codec of its ``z`` blocks)."""
    head: dict[str, Any] = {"format": BINARY_FORMAT, "version": BINARY_FRAME_VERSION, VERSION_KEY: RECORDING_VERSION,
                            "width": int(width), "height": int(height), "timestamp": int(timestamp), "title": title,
                            "env": dict(env), "streams": dict(streams)}  # fmt: skip
    if compression is not None:
        head["compression"] = compression
    return json.dumps(head) + "\n"


def cast_event(t: float, code: str, text: str) -> str:
    """One asciicast event line, ASCII-only JSON."""
    return f'[{t:.6f}, "{code}", {_js(text)}]\n'


def term_header(obj: Mapping[str, Any], *, binary: bool = False) -> TermHeader:
    """A terminal header from its parsed JSON (missing or odd fields get neutral values)."""
    env = obj.get("env")
    return TermHeader(
        version=_version(obj),
        width=_int(obj.get("width"), 80),
        height=_int(obj.get("height"), 24),
        timestamp=_number(obj.get("timestamp")),
        title=str(obj.get("title") or ""),
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        binary=binary,
        fields=dict(obj),
    )


def term_event(obj: object) -> TermEvent | None:
    """A parsed ``[t, code, data]`` line as an event, or None when it is not one."""
    if isinstance(obj, list) and len(obj) == 3 and isinstance(obj[1], str) and isinstance(obj[2], str):
        t = _number(obj[0])
        if t is not None:
            return TermEvent(t, obj[1], obj[2])
    return None


# -- SQL recordings --------------------------------------------------------------------------------------------

HEADER, STATEMENT, TRANSACTION, KILL_EVENT, END_EVENT, TRIPWIRE, SIDECAR = (
    "header", "statement", "transaction", "kill", "end", "tripwire", "sidecar",
)  # fmt: skip
_OLD_VERDICTS = {"allowed": "allow", "denied": "deny", "killed": "kill"}
TX_STATES = {"I": "idle", "T": "transaction", "E": "failed"}
"""ReadyForQuery's status byte -> the ``tx`` value of a statement line."""


@dataclass(frozen=True)
class SqlHeader:
    """The first line of a SQL recording."""

    version: int
    session: str = ""
    user: str = ""
    target: str = ""
    database: str = ""
    login: str = ""
    scope: str = ""
    grant: str = ""
    client: str = ""
    application_name: str = ""
    started_at: float | None = None
    protocol: str = "postgres"
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LongParam:
    """Where a bind parameter too long for its line is kept whole (the sidecar)."""

    index: int
    size: int
    sha256: str
    offset: int | None
    binary: bool


@dataclass(frozen=True)
class Statement:
    """A statement the client sent, with the policy's verdict and (when it ran) its outcome."""

    t: float
    sql: str
    verdict: str = "allow"
    params: tuple[str, ...] | None = None
    long_params: tuple[LongParam, ...] = ()
    fingerprint: str = ""
    kind: str = ""
    tables: tuple[str, ...] = ()
    rule: str = ""
    reason: str = ""
    alerts: tuple[str, ...] = ()
    rows: int | None = None
    duration_ms: float | None = None
    tag: str = ""
    sqlstate: str = ""
    error: str = ""
    tx: str = ""

    @property
    def refused(self) -> bool:
        """The gateway refused it (deny or kill): it never reached the server."""
        return self.verdict in ("deny", "kill")


@dataclass(frozen=True)
class SqlEvent:
    """Any other line of a SQL recording: transaction, kill, end, tripwire, sidecar, or one unknown here."""

    t: float | None
    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The event's reason (kill, end, tripwire), or ''."""
        r = self.fields.get("reason")
        return "" if r is None else str(r)


def sql_header_line(fields: Mapping[str, Any]) -> str:
    """The header line of a new SQL recording."""
    head = {"type": HEADER, VERSION_KEY: RECORDING_VERSION}
    head.update({k: v for k, v in fields.items() if k not in ("type", VERSION_KEY)})
    return encode_event(head)


def encode_event(ev: Mapping[str, Any]) -> str:
    """One SQL recording line: compact ASCII JSON; values JSON cannot carry are written as str()."""
    return json.dumps(ev, separators=(",", ":"), default=str) + "\n"


def transaction_line(t: float, outcome: str) -> str:
    """A transaction block ended: ``commit`` or ``rollback``."""
    return f'{{"t":{t:.6f},"type":"{TRANSACTION}","outcome":{_js(outcome)}}}\n'


def event_line(t: float, type_: str, **fields: Any) -> str:
    """Any other event (kill, end, tripwire, sidecar) with its fields."""
    return encode_event({"t": round(t, 6), "type": type_, **fields})


class Judgement(Protocol):
    """What a statement line needs of a policy decision."""

    @property
    def verdict(self) -> str: ...

    @property
    def rule(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def alerts(self) -> tuple[str, ...]: ...


_MAX_SHAPES = 1024  # cached line fragments per encoder (by fingerprint); cleared when full


class StatementEncoder:
    """Statement lines rendered straight to JSON text (the relay's hot path).

    Everything fixed for a statement shape (fingerprint, kind, tables, decision) is rendered once per shape
    and cached; per execution only the SQL text, parameters and numbers are escaped or formatted. The result
    parses to the same object `encode_event` of the event's dict (absent keys left out) would give.
    """

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[str, object, Judgement, str]] = {}

    def _shape(self, fp: str, kind: str, tables: object, d: Judgement) -> str:
        """The fixed part of a statement's line: fingerprint, kind, verdict, tables, rule, reason, alerts."""
        hit = self._shapes.get(fp)
        if hit is not None and hit[0] == kind and hit[1] is tables and (hit[2] is d or hit[2] == d):
            return hit[3]
        parts = [',"fingerprint":', _js(fp), ',"kind":', _js(kind), ',"verdict":', _js(str(d.verdict))]
        names = sorted(tables) if tables else []  # type: ignore[call-overload]
        if names:
            parts += [',"tables":[', ",".join(map(_js, names)), "]"]
        if d.rule:
            parts += [',"rule":', _js(d.rule), ',"reason":', _js(d.reason)]
        if d.alerts:
            parts += [',"alerts":[', ",".join(map(_js, d.alerts)), "]"]
        shape = "".join(parts)
        if len(self._shapes) >= _MAX_SHAPES:
            self._shapes.clear()
        self._shapes[fp] = (kind, tables, d, shape)
        return shape

    def line(self, t: float, sql: str, fingerprint: str, kind: str, tables: object, decision: Judgement,
             duration_ms: float, tx: str, params: Sequence[str] | None = None,
             long_params: Sequence[Mapping[str, Any]] | None = None, rows: int | None = None,
             sqlstate: str | None = None, error: str | None = None, tag: str | None = None) -> str:  # fmt: skip
        """One statement line (JSON object and newline); `tx` is a TX_STATES value. (Positional parameters: the
        relay calls this once a statement, and keyword arguments cost more.)"""
        line = (
            f'{{"t":{t:.6f},"type":"statement","sql":{_js(sql)}{self._shape(fingerprint, kind, tables, decision)}'
            f',"duration_ms":{duration_ms:.3f},"tx":{_js(tx)}'
        )
        if params:
            line += ',"params":[' + ",".join(map(_js, params)) + "]"
            if long_params:
                line += ',"long_params":' + json.dumps(list(long_params), separators=(",", ":"))
        if rows is not None:
            line += f',"rows":{rows:d}'
        if sqlstate:
            line += ',"sqlstate":' + _js(sqlstate)
        if error:
            line += ',"error":' + _js(error)
        if tag:
            line += ',"tag":' + _js(tag)
        return line + "}\n"


def long_param(index: int, size: int, sha256: str, *, binary: bool, offset: int | None) -> dict[str, Any]:
    """A ``long_params`` entry as the statement line carries it."""
    entry: dict[str, Any] = {"index": index, "bytes": size, "sha256": sha256, "format": "binary" if binary else "text"}
    if offset is not None:
        entry["offset"] = offset
    return entry


def sql_header(obj: Mapping[str, Any]) -> SqlHeader:
    """A SQL header from its parsed JSON."""
    return SqlHeader(
        version=_version(obj),
        session=_str(obj.get("session")),
        user=_str(obj.get("user")),
        target=_str(obj.get("target")),
        database=_str(obj.get("database")),
        login=_str(obj.get("login")),
        scope=_str(obj.get("scope")),
        grant=_str(obj.get("grant")),
        client=_str(obj.get("client")),
        application_name=_str(obj.get("application_name")),
        started_at=_number(obj.get("started_at")),
        protocol=_str(obj.get("protocol")) or "postgres",
        fields={k: v for k, v in obj.items() if v is not None},
    )


def sql_event(obj: Mapping[str, Any], version: int) -> Statement | SqlEvent:
    """One parsed SQL line (not the header) as a typed event; `version` is the file's header version."""
    ev = {k: v for k, v in obj.items() if v is not None}
    when = _number(ev.get("t"))
    type_ = ev.get("type")
    if type_ is None and version <= LEGACY_VERSION and "sql" in ev:
        type_ = STATEMENT  # version 1 statement lines could leave the type out
    if type_ == "tx" and version <= LEGACY_VERSION:
        type_ = TRANSACTION
        if "outcome" not in ev and "tx" in ev:
            ev["outcome"] = ev["tx"]
    if type_ == STATEMENT and isinstance(ev.get("sql"), str):
        return _statement(ev, when or 0.0)
    return SqlEvent(when, _str(type_), {k: v for k, v in ev.items() if k not in ("type", "t")})


def _statement(ev: Mapping[str, Any], t: float) -> Statement:
    verdict = str(ev.get("verdict") or "allow").lower()
    verdict = _OLD_VERDICTS.get(verdict, verdict)
    params = ev.get("params")
    longs = []
    for e in ev.get("long_params") or ():
        if isinstance(e, dict) and isinstance(e.get("index"), int) and isinstance(e.get("bytes"), int):
            offset = e.get("offset") if isinstance(e.get("offset"), int) else None
            longs.append(LongParam(e["index"], e["bytes"], _str(e.get("sha256")), offset, e.get("format") == "binary"))
    rows, ms = ev.get("rows"), ev.get("duration_ms")
    return Statement(
        t=t,
        sql=ev["sql"],
        verdict=verdict,
        params=tuple(map(str, params)) if isinstance(params, list) else None,
        long_params=tuple(longs),
        fingerprint=_str(ev.get("fingerprint")),
        kind=_str(ev.get("kind")),
        tables=tuple(map(str, ev["tables"])) if isinstance(ev.get("tables"), list) else (),
        rule=_str(ev.get("rule")),
        reason=_str(ev.get("reason")),
        alerts=tuple(map(str, ev["alerts"])) if isinstance(ev.get("alerts"), list) else (),
        rows=rows if isinstance(rows, int) and not isinstance(rows, bool) else None,
        duration_ms=_number(ms),
        tag=_str(ev.get("tag")),
        sqlstate=_str(ev.get("sqlstate")),
        error=_str(ev.get("error")),
        tx=_str(ev.get("tx")),
    )


# -- helpers -----------------------------------------------------------------------------------------------------


def _version(obj: Mapping[str, Any]) -> int:
    v = obj.get(VERSION_KEY)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else LEGACY_VERSION


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: object, default: int) -> int:
    n = _number(v)
    return int(n) if n is not None else default


def _str(v: object) -> str:
    return "" if v is None else str(v)
