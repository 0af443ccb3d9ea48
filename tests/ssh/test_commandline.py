"""Command-line reconstruction from keystrokes and echo (sans-IO), byte by byte and fuzzed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ssh.commandline import Line, StdinLines
from gateway.ssh.scope import reads_stdin_commands
from gateway.terminal import MAX_LINE, CommandTracker, EchoLine, Enter


def lines_of(tracker: CommandTracker, data: bytes) -> list[Enter]:
    return [x for x in tracker.feed_input(data) if isinstance(x, Enter)]


def typed(data: bytes) -> list[str]:
    """Feed one byte at a time, as a slow typist would; the lines completed."""
    t = CommandTracker()
    out: list[str] = []
    for b in data:
        out += [e.line for e in lines_of(t, bytes([b]))]
    return out


def test_plain_line_and_enter_held_back() -> None:
    t = CommandTracker()
    items = t.feed_input(b"ls -la\r")
    assert items[0] == b"ls -la"
    assert isinstance(items[1], Enter) and items[1].line == "ls -la" and items[1].key == b"\r"
    assert len(items) == 2


def test_bytes_after_enter_are_a_new_line() -> None:
    t = CommandTracker()
    items = t.feed_input(b"echo a\recho b\n")
    assert [i.line if isinstance(i, Enter) else i for i in items] == [b"echo a", "echo a", b"echo b", "echo b"]


def test_backspace_both_codes() -> None:
    assert typed(b"lss\x7f -l\r") == ["ls -l"]
    assert typed(b"lss\x08 -l\r") == ["ls -l"]
    assert typed(b"\x7f\x7fid\r") == ["id"]


def test_ctrl_u_ctrl_w_ctrl_k() -> None:
    assert typed(b"rm -rf /\x15echo safe\r") == ["echo safe"]
    assert typed(b"echo one two\x17three\r") == ["echo one three"]
    assert typed(b"echo one two  \x17\x17x\r") == ["echo x"]
    assert typed(b"echo abc\x01\x06\x06\x06\x06\x0b\r") == ["echo"]


def test_ctrl_c_abandons_the_line() -> None:
    t = CommandTracker()
    assert lines_of(t, b"rm -rf /\x03") == []
    assert [e.line for e in lines_of(t, b"id\r")] == ["id"]


def test_cursor_movement_and_insert() -> None:
    assert typed(b"eho hi\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dc\r") == ["echo hi"]
    assert typed(b"cho\x01e\x05 x\r") == ["echo x"]
    assert typed(b"echo\x1bOD\x1bODX\r") == ["ecXho"]
    assert typed(b"echo xy\x1b[D\x1b[3~\r") == ["echo x"]
    assert typed(b"Xecho\x1b[H\x1b[3~\x1b[F!\r") == ["echo!"]


def test_bracketed_paste_keeps_newlines_inside() -> None:
    t = CommandTracker()
    evs = lines_of(t, b"\x1b[200~echo a\recho b\x1b[201~\r")
    assert [e.line for e in evs] == ["echo a\necho b"]


def test_quoted_insert_is_not_enter() -> None:
    assert typed(b"echo \x16\rx\r") == ["echo \rx"]


def test_ctrl_o_runs_the_line() -> None:
    t = CommandTracker()
    (ev,) = lines_of(t, b"whoami\x0f")
    assert ev.line == "whoami" and ev.key == b"\x0f"


def test_utf8_split_across_chunks() -> None:
    data = "echo héllo ✓\r".encode()
    assert typed(data) == ["echo héllo ✓"]


def test_history_recall_uses_the_echo() -> None:
    t = CommandTracker()
    t.feed_output(b"$ ")
    t.feed_input(b"\x1b[A")  # up arrow: bash redraws the recalled line
    t.feed_output(b"echo from-history")
    (ev,) = lines_of(t, b"\r")
    assert not ev.exact
    assert ev.line == "echo from-history"
    assert ev.typed == ""


def test_tab_completion_uses_the_echo() -> None:
    t = CommandTracker()
    t.feed_output(b"user@host:~$ ")
    t.feed_input(b"ech")
    t.feed_output(b"ech")
    t.feed_input(b"\t")
    t.feed_output(b"o ")
    t.feed_input(b"hi")
    t.feed_output(b"hi")
    (ev,) = lines_of(t, b"\r")
    assert ev.line == "echo hi"
    assert ev.typed == "echhi"


def test_readline_redraw_with_backspaces_and_erase() -> None:
    t = CommandTracker()
    t.feed_output(b"$ ")
    t.feed_input(b"\x1b[A")
    t.feed_output(b"rm -rf /tmp/x" + b"\x08" * 13 + b"\x1b[Kls")
    (ev,) = lines_of(t, b"\r")
    assert ev.line == "ls"


def test_echo_off_line_is_flagged() -> None:
    t = CommandTracker()
    t.feed_output(b"Password: ")
    for b in b"secret":
        t.feed_input(bytes([b]))  # typed key by key, nothing echoed back
    (ev,) = lines_of(t, b"\r")
    assert ev.line == "secret" and not ev.echoed
    t.feed_output(b"\r\n$ ")
    for b in b"ls":
        t.feed_input(bytes([b]))
        t.feed_output(bytes([b]))
    (ev,) = lines_of(t, b"\r")
    assert ev.echoed


def test_pasted_line_counts_as_echoed() -> None:
    (ev,) = lines_of(CommandTracker(), b"echo pasted\r")
    assert ev.echoed


def test_overlong_line_is_truncated_not_unbounded() -> None:
    t = CommandTracker()
    t.feed_input(b"x" * 200_000)
    (ev,) = lines_of(t, b"\r")
    assert ev.truncated and len(ev.line) <= 64 * 1024


def test_echo_line_vt_subset() -> None:
    e = EchoLine()
    e.feed(b"\x1b]0;title\x07$ abc\x1b[2D\x1b[1@X")
    assert e.text == "$ aXbc"
    e.feed(b"\r\x1b[K$ ok\x1b[?2004h")
    assert e.text == "$ ok"
    e.feed(b"\r\n")
    assert e.text == "" and e.rows == 1


# -- properties ----------------------------------------------------------------------------------

printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=40)


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
@settings(max_examples=300, deadline=None)
def test_forwarding_is_transparent_and_chunking_invariant(data: bytes, cuts: list[int]) -> None:
    """Forwarded bytes plus every held Enter key rebuild the input exactly; the lines do not depend on chunking."""
    whole = CommandTracker()
    items = whole.feed_input(data)
    rebuilt = b"".join(i if isinstance(i, bytes) else i.key for i in items)
    assert rebuilt == data
    chunked = CommandTracker()
    pieces, last = [], 0
    for c in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        pieces.append(data[last:c])
        last = c
    got: list[bytes | Enter] = []
    for p in pieces:
        got += chunked.feed_input(p)
    assert [(e.line, e.typed, e.key) for e in got if isinstance(e, Enter)] == [
        (e.line, e.typed, e.key) for e in items if isinstance(e, Enter)
    ]
    assert b"".join(i if isinstance(i, bytes) else i.key for i in got) == data


@given(st.lists(printable, min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_typed_text_comes_back_as_lines(texts: list[str]) -> None:
    t = CommandTracker()
    data = b"".join(x.encode() + b"\r" for x in texts)
    assert [e.line for e in lines_of(t, data)] == texts


@given(st.binary(max_size=500))
@settings(max_examples=300, deadline=None)
def test_echo_model_never_fails(data: bytes) -> None:
    e = EchoLine()
    e.feed(data)
    assert 0 <= e.cursor <= 64 * 1024
    t = CommandTracker()
    t.feed_output(data)
    t.feed_input(data)


# --- stdin lines of a shell without a terminal ------------------------------------------------------


def stdin_lines(allow: Callable[[str], bool | None] = lambda _t: True) -> tuple[StdinLines, list[Line]]:
    seen: list[Line] = []

    def decide(line: Line) -> bool | None:
        seen.append(line)
        return allow(line.text)

    return StdinLines(decide), seen


def test_stdin_lines_are_held_until_complete_then_decided() -> None:
    lines, seen = stdin_lines(lambda t: "bad" not in t)
    assert lines.feed(b"echo a\necho b") == b"echo a\n"
    assert [s.text for s in seen] == ["echo a"]
    assert lines.feed(b"c\nbad\r\necho d\n") == b"echo bc\necho d\n"
    assert [s.text for s in seen] == ["echo a", "echo bc", "bad", "echo d"]


def test_stdin_last_line_without_newline_is_decided_at_eof() -> None:
    lines, seen = stdin_lines(lambda t: t != "bad")
    assert lines.feed(b"ok\nbad") == b"ok\n"
    assert lines.finish() == b""
    assert seen[-1].text == "bad" and seen[-1].raw == b"bad"
    lines, _ = stdin_lines()
    lines.feed(b"fine")
    assert lines.finish() == b"fine"


def test_stdin_overlong_line_follows_its_first_part() -> None:
    lines, seen = stdin_lines(lambda _t: False)
    assert lines.feed(b"x" * (MAX_LINE + 10)) == b""
    assert seen[0].truncated
    assert lines.feed(b"yyy\nok\n") == b""  # the rest of the refused line, then a new line (refused too here)
    assert [s.text for s in seen[1:]] == ["ok"]
    lines, seen = stdin_lines()
    assert lines.feed(b"x" * (MAX_LINE + 10) + b"tail\nnext\n") == b"x" * (MAX_LINE + 10) + b"tail\nnext\n"


def test_stdin_unfinished_construct_is_held_and_decided_whole() -> None:
    lines, _ = stdin_lines(lambda t: None if t.endswith("\\") else "bad" not in t)
    assert lines.feed(b"echo a\\\n") == b""
    assert lines.feed(b"b\n") == b"echo a\\\nb\n"
    assert lines.feed(b"x\\\n") == b""
    assert lines.feed(b"bad\nok\n") == b"ok\n"  # the held line goes with the refused one
    assert lines.feed(b"open\\\n") == b""
    assert lines.finish() == b"open\\\n"


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_stdin_lines_forward_exactly_what_is_allowed(chunks: list[bytes]) -> None:
    lines, seen = stdin_lines()
    out = b"".join(lines.feed(c) for c in chunks) + lines.finish()
    assert out == b"".join(chunks)
    assert b"".join(s.raw for s in seen) == out


@pytest.mark.parametrize(
    ("command", "expected"),
    [("bash", True), ("sh -s", True), ("/bin/sh", True), ("sudo -i", True), ("env X=1 bash", True),
     ("exec bash -l", True), ("nice -n 5 sh", True), ("sh -s -- a b", True), ("bash -c ls", False),
     ("bash script.sh", False), ("ls", False), ("cat", False), ("bash -lc x", False), ("sh -c bash", True),
     ("su", True), ("su -c id", False), ("sudo ls", False), ("su - root", True), ("bash -o pipefail", True)],
)  # fmt: skip
def test_reads_stdin_commands(command: str, expected: bool) -> None:
    assert reads_stdin_commands(command) is expected


def test_ctrl_c_is_counted() -> None:
    t = CommandTracker()
    t.feed_input(b"echo 'open\x03")
    assert t.cancels == 1
    t.feed_input(b"\x16\x03")  # ^V^C inserts a literal ^C: nothing is cancelled
    assert t.cancels == 1


@given(st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\\", b"") + b"\\\n" if b[:1] == b"c" else b),
                max_size=20))  # fmt: skip
def test_stdin_held_constructs_are_forwarded_whole_when_allowed(chunks: list[bytes]) -> None:
    lines, _ = stdin_lines(lambda t: None if t.endswith("\\") else True)
    out = b"".join(lines.feed(c) for c in chunks) + lines.finish()
    assert out == b"".join(chunks)
