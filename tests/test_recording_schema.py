"""The recording schema and its one reader: versions in every header, old files still read, typed events."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from gateway.recording import AsciicastRecorder, BinaryStreamRecorder, RecordingError, StatementRecorder, schema
from gateway.recording.reader import TerminalReader, commands, sql_lines, statements, terminal_events
from gateway.recording.schema import SqlEvent, SqlHeader, Statement
from gateway.review import print_statements


def ignore(reason: str) -> None:
    """on_failure for recorders that must not fail."""


def first_line(path: Path) -> dict[str, object]:
    obj: dict[str, object] = json.loads(path.read_bytes().split(b"\n", 1)[0])
    return obj


async def test_every_new_file_carries_the_version(tmp_path: Path) -> None:
    cast = AsciicastRecorder.open(tmp_path / "a.cast", width=80, height=24, title="t", env={}, started_at=time.time(),
                                  on_failure=ignore)  # fmt: skip
    binary = BinaryStreamRecorder.open(
        tmp_path / "b.cast", title="t", env={}, started_at=time.time(), on_failure=ignore
    )
    sql = StatementRecorder.open(tmp_path / "c.sql.jsonl", header={"session": "s"}, on_failure=ignore)
    for rec in (cast, binary, sql):
        await rec.close()
    for name in ("a.cast", "b.cast", "c.sql.jsonl"):
        assert first_line(tmp_path / name)[schema.VERSION_KEY] == schema.RECORDING_VERSION
    assert first_line(tmp_path / "a.cast")["version"] == 2  # asciicast's own version stays (asciinema play)
    with TerminalReader(tmp_path / "a.cast", []) as r:
        r.read()
        assert r.header is not None and r.header.version == schema.RECORDING_VERSION
    (header,) = sql_lines(tmp_path / "c.sql.jsonl", [])
    assert isinstance(header, SqlHeader) and header.version == schema.RECORDING_VERSION and header.session == "s"


def test_version_1_sql_file_still_reads(tmp_path: Path) -> None:
    """A file written before the version field: no version, old verdict spellings, a `tx` event, untyped lines."""
    path = tmp_path / "old.sql.jsonl"
    lines = [
        {"type": "header", "session": "s-old", "user": "alice", "target": "db", "started_at": 1764209936.0},
        {"t": 1.0, "type": "statement", "sql": "SELECT 1", "verdict": "allowed", "rows": 1, "tx": "idle"},
        {"t": 2.0, "sql": "DELETE FROM t", "verdict": "denied", "rule": "read-only", "reason": "DELETE on t"},
        {"t": 3.0, "type": "tx", "tx": "commit"},
        {"t": 4.0, "type": "statement", "sql": "SELECT pg_sleep(9)", "verdict": "killed", "rule": "deadline"},
        {"t": 5.0, "type": "end", "reason": "killed"},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    warnings: list[str] = []
    header, *events = sql_lines(path, warnings)
    assert warnings == []
    assert isinstance(header, SqlHeader) and header.version == schema.LEGACY_VERSION == 1
    assert header.user == "alice" and header.started_at == 1764209936.0
    st = [e for e in events if isinstance(e, Statement)]
    assert [(s.sql, s.verdict, s.refused) for s in st] == [
        ("SELECT 1", "allow", False),
        ("DELETE FROM t", "deny", True),
        ("SELECT pg_sleep(9)", "kill", True),
    ]
    tx = [e for e in events if isinstance(e, SqlEvent) and e.type == schema.TRANSACTION]
    assert [e.fields["outcome"] for e in tx] == ["commit"]
    out = io.StringIO()
    print_statements(path, out)
    text = out.getvalue().splitlines()
    assert "DENIED [read-only]  DELETE FROM t" in text[2] and "transaction committed" in text[3]
    assert "KILLED [deadline]" in text[4] and text[5].endswith("END  killed")


def test_version_2_lines_need_their_type(tmp_path: Path) -> None:
    """Only version 1 files may leave `type` out of a statement line; in version 2 such a line is not one."""
    path = tmp_path / "v2.sql.jsonl"
    path.write_text(schema.sql_header_line({"session": "s"}) + json.dumps({"t": 1, "sql": "SELECT 1"}) + "\n")
    header, ev = sql_lines(path, [])
    assert isinstance(header, SqlHeader) and isinstance(ev, SqlEvent) and ev.type == ""
    assert list(statements(path)) == []


def test_newer_version_is_read_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "new.sql.jsonl"
    head = {"type": "header", schema.VERSION_KEY: 99, "session": "s"}
    path.write_text(json.dumps(head) + "\n" + json.dumps({"t": 1, "type": "statement", "sql": "SELECT 2",
                                                          "new_field": [1]}) + "\n")  # fmt: skip
    warnings: list[str] = []
    assert [s.sql for s in statements(path, warnings)] == ["SELECT 2"]
    assert len(warnings) == 1 and "recording_version 99 is newer" in warnings[0]


def test_version_1_terminal_files_still_read(tmp_path: Path) -> None:
    """Asciicast and binary stream headers without the field are version 1; their markers parse the same."""
    cast = tmp_path / "old.cast"
    head = {"version": 2, "width": 100, "height": 30, "timestamp": 1764209936, "title": "t", "env": {"TERM": "xterm"}}
    cast.write_text(json.dumps(head) + "\n" + '[0.5, "o", "$ "]\n' + '[1.0, "m", "command: ls -l"]\n'
                    + '[2.0, "m", "session end: client closed"]\n')  # fmt: skip
    warnings: list[str] = []
    with TerminalReader(cast, warnings) as r:
        events = r.read() + r.finish()
        assert r.header is not None and r.header.version == 1 and (r.header.width, r.header.height) == (100, 30)
    assert warnings == []
    assert [ev.marker for ev in events] == [None, schema.Marker(schema.COMMAND, "ls -l"),
                                            schema.Marker(schema.END, "client closed")]  # fmt: skip
    assert list(commands(cast)) == [(1.0, "ls -l")]
    binary = tmp_path / "old.bin"
    bhead = {"format": schema.BINARY_FORMAT, "version": 1, "width": 80, "height": 24, "timestamp": 0, "title": "x",
             "env": {}, "streams": {}}  # fmt: skip
    label = b"command: tar cf - /etc"
    binary.write_bytes(json.dumps(bhead).encode() + b"\n" + b"m" + (250).to_bytes(4, "big")
                       + len(label).to_bytes(4, "big") + label)  # fmt: skip
    with TerminalReader(binary, warnings) as r:
        assert [ev.marker for ev in r.read()] == [schema.Marker(schema.COMMAND, "tar cf - /etc")]
        assert r.header is not None and r.header.version == 1 and r.header.binary
    assert list(commands(binary)) == [(0.25, "tar cf - /etc")]


def test_not_a_terminal_recording(tmp_path: Path) -> None:
    path = tmp_path / "x.cast"
    path.write_text("not json\n")
    with pytest.raises(RecordingError, match="not an asciicast"):
        list(terminal_events(path, []))
    path.write_text("")
    with pytest.raises(RecordingError, match="no complete header"):
        list(terminal_events(path, []))


def test_markers_are_made_and_parsed_in_one_place() -> None:
    made = {
        schema.command_marker("rm -rf /tmp/x"): (schema.COMMAND, "rm -rf /tmp/x"),
        schema.blocked_marker("shell: not allowed"): (schema.BLOCKED, "shell: not allowed"),
        schema.sftp_marker("open /etc/passwd"): (schema.SFTP, "open /etc/passwd"),
        schema.kill_marker("grant revoked"): (schema.KILL, "grant revoked"),
        schema.warning_marker("60 s left"): (schema.WARNING, "60 s left"),
        schema.exit_marker(0): (schema.EXIT, "0"),
        schema.channel_marker(2, "exec ls", "s.2.cast"): (schema.CHANNEL, "2: exec ls -> s.2.cast"),
        schema.end_marker("client closed"): (schema.END, "client closed"),
        "something else": (schema.OTHER, "something else"),
        "command:no space": (schema.OTHER, "command:no space"),
    }
    for label, want in made.items():
        assert tuple(schema.parse_marker(label)) == want, label


def test_statement_encoder_round_trips_through_the_reader() -> None:
    from gateway.policy import Decision

    enc = schema.StatementEncoder()
    line = enc.line(1.5, "SELECT $1", fingerprint="fp", kind="select", tables=frozenset({"b", "a"}),
                    decision=Decision.allow("sensitive"), duration_ms=0.25, tx="idle", params=["x" * 3],
                    long_params=[schema.long_param(0, 3000, "ab", binary=False, offset=7)], rows=2,
                    tag="SELECT 2")  # fmt: skip
    ev = schema.sql_event(json.loads(line), schema.RECORDING_VERSION)
    assert isinstance(ev, Statement)
    assert (ev.t, ev.sql, ev.verdict, ev.tables, ev.alerts, ev.rows, ev.tag) == (
        1.5, "SELECT $1", "alert", ("a", "b"), ("sensitive",), 2, "SELECT 2",
    )  # fmt: skip
    assert ev.params == ("xxx",) and ev.long_params == (schema.LongParam(0, 3000, "ab", 7, False),)
