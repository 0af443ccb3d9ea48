"""Reviewer side on recordings made by the real recorders: sanitising, replay, print, search."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.recording import AsciicastRecorder, BinaryStreamRecorder, StatementRecorder
from gateway.review import (
    END_MARKER,
    Neutraliser,
    neutralise,
    play,
    print_cast,
    print_statements,
    render_final_text,
    search,
)

ESC = "\x1b"


class FakeTime:
    """A clock and a sleep that only advances it: replay tests need no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        await asyncio.sleep(0)


def ignore(reason: str) -> None:
    """on_failure for recorders that must not fail in these tests."""
    raise AssertionError(reason)


async def make_cast(path: Path, script: Sequence[tuple[float, str, object]]) -> Path:
    """Record `script` ([(t, call, arg)]) with the real AsciicastRecorder and a fake clock."""
    clock = [100.0]
    rec = AsciicastRecorder.open(
        path,
        width=80,
        height=24,
        title="t",
        env={"TERM": "xterm"},
        # Not yet started by the wall clock: the recorder adds no catch-up time (time.time() - started_at),
        # so event times are the fake clock's alone, however loaded the machine.
        started_at=time.time() + 60,
        on_failure=ignore,
        clock=lambda: clock[0],
    )
    for t, call, arg in script:
        clock[0] = 100.0 + t
        getattr(rec, call)(arg)
    await rec.close()
    return path


SESSION = [
    (0.5, "output", b"$ "),
    (0.9, "input", b"lss\x7f -l\r"),
    (0.95, "marker", "command: ls -l"),
    (1.0, "output", b"ls -l\r\n"),
    (11.0, "output", b"file-\xe2\x82"),
    (11.02, "output", b"\xac.txt\r\n"),
    (11.5, "output", b"$ "),
]


@pytest.fixture
async def session_cast(tmp_path: Path) -> Path:
    return await make_cast(tmp_path / "s.cast", SESSION)


# -- sanitize -----------------------------------------------------------------------------------

HOSTILE = [
    f"{ESC}]52;c;cm0gLXJmIH4K\x07",  # OSC 52: write the reviewer's clipboard (BEL-terminated)
    f"{ESC}]52;c;cm0gLXJmIH4K{ESC}\\",  # ... ST-terminated
    f"{ESC}]0;pwned title\x07",
    f"{ESC}]2;pwned title{ESC}\\",
    f"{ESC}]8;;http://evil/{ESC}\\",  # hyperlink
    f"{ESC}P1$r0m{ESC}\\",  # DCS
    f"{ESC}_apc payload{ESC}\\",
    f"{ESC}^pm payload{ESC}\\",
    f"{ESC}Xsos payload{ESC}\\",
    "\x9d0;c1 title\x9c",  # 8-bit OSC ... ST
    "\x906n\x9c",
    "\x9b6n",  # 8-bit CSI device status report
    f"{ESC}[6n",  # DSR: the terminal would type a reply into the reviewer's input
    f"{ESC}[c",
    f"{ESC}[21t",  # report window title
    f"{ESC}[?1000h",  # mouse reporting
    f"{ESC}[?2004h",
    f"{ESC}[3J",  # erase scrollback
    f"{ESC}c",  # full reset
    f"{ESC}(0",  # line-drawing charset
    "\x07\x0e\x0f\x00\x85",
]


@pytest.mark.parametrize("seq", HOSTILE)
@pytest.mark.parametrize("keep_sgr", [True, False])
def test_hostile_sequences_are_removed(seq: str, keep_sgr: bool) -> None:
    assert neutralise(f"before{seq}after", keep_sgr=keep_sgr) == "beforeafter"


def test_sgr_and_cursor_movement_kept_only_for_replay() -> None:
    text = f"{ESC}[1;31mred{ESC}[0m {ESC}[2Dx{ESC}[K{ESC}[?25l{ESC}7{ESC}8"
    assert neutralise(text, keep_sgr=True) == text
    assert neutralise(text) == "red x"


def test_plain_mode_turns_carriage_returns_into_newlines() -> None:
    assert neutralise("a\r\nb\rc\bd\te") == "a\nb\ncd\te"


def test_sequences_split_across_chunks_never_leak() -> None:
    n = Neutraliser(keep_sgr=True)
    out = n.feed(f"one{ESC}]5") + n.feed("2;c;QUJD") + n.feed(f"REVG\x07two{ESC}") + n.feed("[32mgreen")
    assert out + n.flush() == f"onetwo{ESC}[32mgreen"
    n = Neutraliser(keep_sgr=True)
    assert n.feed(f"x{ESC}") == "x"  # a lone ESC is held back, not emitted
    assert n.flush() == ""


def test_overlong_csi_is_dropped() -> None:
    assert neutralise(f"a{ESC}[{'1;' * 100}mb", keep_sgr=True) == "ab"


_ALLOWED_OUT = re.compile(r"\x1b\[(?:[0-9;:]*m|[0-9;]*[ABCDEFGHJKSTdefrXP@LM`a]|\?25[hl])|\x1b[78DEM]")


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab;[]0123?P_^X\\m\x1b\x07\x9b\x9c\x9d\r\n\b\t")), max_size=80),
    st.lists(st.integers(min_value=0, max_value=80), max_size=6),
)
def test_fuzz_streaming_equals_one_shot_and_output_is_safe(text: str, cuts: list[int]) -> None:
    for keep in (True, False):
        n = Neutraliser(keep_sgr=keep)
        bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
        streamed = "".join(n.feed(text[a:b]) for a, b in itertools.pairwise(bounds)) + n.flush()
        assert streamed == neutralise(text, keep_sgr=keep)
        rest = _ALLOWED_OUT.sub("", streamed) if keep else streamed
        assert not re.search(r"[\x00-\x07\x0b-\x1f\x7f-\x9f]", rest.replace("\r", "").replace("\b", ""))
        if not keep:
            assert "\r" not in streamed and "\b" not in streamed


def test_render_final_text_applies_line_editing() -> None:
    events = [
        [0.1, "o", "progress 10%\rprogress 100%\r\n"],
        [0.2, "o", "typo\b\bpo\r\n"],
        [0.3, "o", "abcdef\x1b[3D\x1b[K!\r\n"],
        [0.4, "o", "old line\x1b[2K\rnew\r\n"],
        [0.5, "o", f"{ESC}]0;title\x07{ESC}[31mcolour{ESC}[0m\tend  \r\n"],
        [0.6, "i", "input is not output"],
        [0.7, "o", "last \x1b[1Cgap"],
    ]
    assert render_final_text(events) == "progress 100%\ntypo\nabc!\nnew\ncolour  end\nlast  gap"


# -- replay -------------------------------------------------------------------------------------


async def test_print_cast_shows_commands_and_output(session_cast: Path) -> None:
    out = io.StringIO()
    result = print_cast(session_cast, out)
    assert out.getvalue() == "$ ls -l\nfile-\u20ac.txt\n$\n"
    assert result.warnings == []
    out = io.StringIO()
    print_cast(session_cast, out, show_markers=True)
    assert "# command: ls -l" in out.getvalue()


async def test_play_real_speed_speed_and_idle_limit(session_cast: Path) -> None:
    times = {}
    for label, kw in {"real": {}, "fast": {"speed": 2.0}, "idle": {"idle_limit": 2.0}}.items():
        fake, out = FakeTime(), io.StringIO()
        result = await play(session_cast, out, sleep=fake.sleep, clock=fake.clock, **kw)  # type: ignore[arg-type]
        assert result.events == 5 and not result.quit and result.warnings == []
        assert "file-\u20ac.txt" in out.getvalue() and "ls -l" in out.getvalue()
        times[label] = fake.slept
    assert times["real"] == pytest.approx(11.5, abs=1e-3)
    assert times["fast"] == pytest.approx(11.5 / 2, abs=1e-3)
    assert times["idle"] == pytest.approx(0.5 + 0.5 + 2.0 + 0.02 + 0.48, abs=1e-3)


async def keys_from(script: list[tuple[Callable[[], bool], str]]) -> AsyncIterator[str]:
    """Yield each key once its condition holds (conditions look at the replay's output)."""
    for ready, key in script:
        for _ in range(10_000):
            if ready():
                break
            await asyncio.sleep(0)
        yield key


async def test_play_keys_speed_pause_step_quit(session_cast: Path) -> None:
    fake, out = FakeTime(), io.StringIO()
    result = await play(session_cast, out, keys=keys_from([(lambda: True, "+")]), sleep=fake.sleep, clock=fake.clock)
    assert fake.slept == pytest.approx(11.5 / 2, abs=1e-3) and result.events == 5

    fake, out = FakeTime(), io.StringIO()
    script = [
        (lambda: True, " "),
        (lambda: True, "."),
        (lambda: "$ " in out.getvalue(), "."),
        (lambda: "ls -l" in out.getvalue(), "q"),
    ]
    result = await play(session_cast, out, keys=keys_from(script), sleep=fake.sleep, clock=fake.clock)
    assert result.quit and result.ended_by == "quit" and result.events == 2
    assert "file-" not in out.getvalue()
    assert fake.slept == 0  # stepping plays the next event at once


async def test_torn_last_line_is_reported(session_cast: Path) -> None:
    with open(session_cast, "ab") as f:
        f.write(b'[12.0, "o", "half a li')
    out = io.StringIO()
    result = print_cast(session_cast, out)
    assert "file-\u20ac.txt" in out.getvalue()
    assert result.warnings == ["line 9 is torn (recording cut off): skipped"]
    fake, out = FakeTime(), io.StringIO()
    played = await play(session_cast, out, sleep=fake.sleep, clock=fake.clock)
    assert played.warnings == ["line 9 is torn (recording cut off): skipped"] and played.events == 5


async def test_bad_line_in_the_middle_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "bad.cast"
    path.write_text(
        '{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "a\\r\\n"]\nnot json\n'
        '[0.2, "o", "b\\r\\n"]\n[0.3, "o", "complete but no newline"]'
    )
    out = io.StringIO()
    result = print_cast(path, out)
    assert out.getvalue() == "a\nb\ncomplete but no newline\n"
    assert result.warnings == [
        "line 3 does not parse as an asciicast event: skipped",
        "line 5 lacks its newline (recording cut off)",
    ]


async def test_replay_neutralises_hostile_output(tmp_path: Path) -> None:
    path = await make_cast(
        tmp_path / "h.cast",
        [
            (0.1, "output", f"x{ESC}]52;c;cm0gLXJm".encode()),
            (0.2, "output", f"IH4K\x07y{ESC}]0;t\x07{ESC}[31mz{ESC}[6n".encode()),
        ],
    )
    fake, out = FakeTime(), io.StringIO()
    await play(path, out, sleep=fake.sleep, clock=fake.clock)
    assert out.getvalue().startswith(f"xy{ESC}[31mz")
    assert "52;" not in out.getvalue() and "[6n" not in out.getvalue()
    printed = io.StringIO()
    print_cast(path, printed)
    assert printed.getvalue() == "xyz\n"


async def test_follow_plays_a_live_recording_until_its_end_marker(tmp_path: Path) -> None:
    path = tmp_path / "live.cast"
    rec = AsciicastRecorder.open(
        path, width=80, height=24, title="live", env={}, started_at=time.time(), on_failure=ignore
    )

    async def session() -> None:
        rec.output(b"first\r\n")
        await asyncio.sleep(0.3)
        rec.output(b"second\r\n")
        rec.marker(f"{END_MARKER}: client closed")
        await asyncio.sleep(0.3)
        rec.output(b"after the end\r\n")
        await rec.close()

    task = asyncio.create_task(session())
    out = io.StringIO()
    result = await asyncio.wait_for(
        play(path, out, follow=True, is_live=lambda: True, poll_interval=0.02, speed=4.0), 10
    )
    await task
    assert result.ended_by == "end-marker"
    assert "first" in out.getvalue() and "second" in out.getvalue() and "after" not in out.getvalue()


async def test_follow_stops_when_closed_and_not_growing(tmp_path: Path) -> None:
    path = tmp_path / "live.cast"
    rec = AsciicastRecorder.open(
        path, width=80, height=24, title="live", env={}, started_at=time.time(), on_failure=ignore
    )
    live = [True]

    async def session() -> None:
        rec.output(b"only\r\n")
        await asyncio.sleep(0.4)
        await rec.close()
        live[0] = False

    task = asyncio.create_task(session())
    out = io.StringIO()
    result = await asyncio.wait_for(
        play(path, out, follow=True, is_live=lambda: live[0], poll_interval=0.02, settle=0.1), 10
    )
    await task
    assert result.ended_by == "closed" and "only" in out.getvalue() and result.events == 1


async def test_print_and_play_binary_stream_recordings(tmp_path: Path) -> None:
    path = tmp_path / "exec.bin"
    rec = BinaryStreamRecorder.open(path, title="exec", env={}, started_at=time.time(), on_failure=ignore)
    rec.marker("command: cat /etc/hostname")
    rec.stdout(b"db1\n")
    rec.stderr(b"warning: \x1b]52;c;eA==\x07 done\n")
    await rec.close()
    out = io.StringIO()
    print_cast(path, out)
    assert out.getvalue() == "db1\nwarning:  done\n"
    fake, played = FakeTime(), io.StringIO()
    result = await play(path, played, sleep=fake.sleep, clock=fake.clock)
    assert result.events == 2 and "db1" in played.getvalue() and "52;" not in played.getvalue()


async def _statements(path: Path) -> Path:
    clock = [0.0]
    header = {"session": "pg-1", "user": "alice", "target": "orders-db", "started_at": 1764209936.0}
    rec = StatementRecorder.open(path, header=header, on_failure=ignore, clock=lambda: clock[0])
    none = {"params": None, "rule": None, "reason": None, "rows": None, "sqlstate": None, "error": None}
    events: list[dict[str, Any]] = [  # as gateway/pg/journal.py writes them
        {
            "type": "statement",
            "sql": "SELECT id FROM orders",
            **none,
            "verdict": "allow",
            "rows": 3,
            "duration_ms": 1.25,
            "tx": "idle",
            "fingerprint": "f1",
            "kind": "select",
            "tables": ["orders"],
        },
        {"type": "statement", "sql": "BEGIN", **none, "verdict": "allow", "duration_ms": 0.1, "tx": "transaction"},
        {
            "type": "statement",
            "sql": "UPDATE orders SET total = 0",
            **none,
            "verdict": "deny",
            "rule": "read-only",
            "reason": "UPDATE on orders",
            "duration_ms": 0.0,
            "tx": "transaction",
        },
        {
            "type": "statement",
            "sql": "SELECT * FROM nope",
            **none,
            "verdict": "allow",
            "sqlstate": "42P01",
            "error": 'relation "nope" does not exist',
            "tx": "failed",
        },
        {"type": "statement", "sql": "COMMIT", **none, "verdict": "allow", "tx": "idle"},
        {"type": "transaction", "outcome": "rollback"},
        {
            "type": "statement",
            "sql": f"SELECT '{ESC}]52;c;eA==\x07' WHERE id = $1",
            **none,
            "verdict": "allow",
            "rows": 1,
            "params": ["42"],
        },
        {
            "type": "statement",
            "sql": "SELECT pg_sleep(600)",
            **none,
            "verdict": "kill",
            "rule": "deadline",
            "reason": "grant expired",
        },
        {"type": "statement", "sql": "SELECT 1", "verdict": "allowed", "rows": 1},  # older spelling
        {"type": "kill", "reason": "grant revoked"},
        {"type": "end", "reason": "killed"},
    ]
    for ev in events:
        clock[0] += 1.5
        rec.record(ev)
    await rec.close()
    return path


async def test_print_statements_transcript(tmp_path: Path) -> None:
    path = await _statements(tmp_path / "pg.jsonl")
    out = io.StringIO()
    result = print_statements(path, out, color=False)
    text = out.getvalue()
    assert result.warnings == [] and result.events == 12
    assert ESC not in text and "None" not in text
    lines = text.splitlines()
    assert lines[0] == "# session pg-1  user alice  target orders-db  started_at 2025-11-27T02:18:56Z"
    assert lines[1] == "[    1.500s] ALLOWED  SELECT id FROM orders  -- 3 rows, 1.2 ms"
    assert lines[3] == "[    4.500s] DENIED [read-only]  UPDATE orders SET total = 0  -- UPDATE on orders, 0.0 ms"
    assert lines[4] == '[    6.000s] ERROR 42P01  SELECT * FROM nope  -- relation "nope" does not exist'
    assert lines[6] == "[    9.000s] transaction rolled back"
    assert lines[7] == "[   10.500s] ALLOWED  SELECT '' WHERE id = $1  -- 1 row, params 42"  # OSC 52 gone
    assert lines[8] == "[   12.000s] KILLED [deadline]  SELECT pg_sleep(600)  -- grant expired"
    assert lines[9] == "[   13.500s] ALLOWED  SELECT 1  -- 1 row"
    assert lines[10:] == ["[   15.000s] KILLED  grant revoked", "[   16.500s] END  killed"]
    coloured = io.StringIO()
    print_statements(path, coloured, color=True)
    assert f"{ESC}[31;1mDENIED [read-only]{ESC}[0m" in coloured.getvalue()
    assert f"{ESC}[32mALLOWED{ESC}[0m" in coloured.getvalue()
    assert "52;" not in coloured.getvalue()


async def test_print_statements_torn_last_line(tmp_path: Path) -> None:
    path = await _statements(tmp_path / "pg.jsonl")
    with open(path, "ab") as f:
        f.write(b'{"type": "statement", "sql": "SELE')
    out = io.StringIO()
    result = print_statements(path, out)
    assert result.warnings == ["line 13 is torn (recording cut off): skipped"]
    assert "END  killed" in out.getvalue()


# -- search -------------------------------------------------------------------------------------


async def test_search_rebuilds_lines_only_without_markers(tmp_path: Path) -> None:
    """A recording without command markers (not made by this gateway): its lines are rebuilt by the front end's
    own terminal model, keystrokes and echo (so a history recall shows as what the shell echoed)."""
    path = await make_cast(tmp_path / "foreign.cast", [
        (0.5, "output", b"$ "),
        (0.9, "input", b"sudo rm -rf /tmp/x\x15ls -la\x7f\x7fl\r"),
        (1.0, "output", b"ls -l\r\n$ "),
        (2.0, "input", b"echo one two\x17three\r"),
        (2.1, "output", b"echo one three\r\n$ "),
        (3.0, "input", b"\x1b[A"),  # history: only the echo knows the line
        (3.1, "output", b"echo one three"),
        (3.2, "input", b"\r"),
        (4.0, "input", b"abandoned\x03\x1b[200~pasted\nlines\x1b[201~\r"),
    ])  # fmt: skip
    hits = list(search([("f-1", path, "ssh")], ""))
    assert [(h.kind, h.text) for h in hits] == [
        ("input", "ls -l"), ("input", "echo one three"), ("input", "echo one three"), ("input", "pasted\nlines"),
    ]  # fmt: skip


async def test_search_statements_and_commands(tmp_path: Path, session_cast: Path) -> None:
    pg = await _statements(tmp_path / "pg.jsonl")
    recordings = [
        ("ssh-1", session_cast, "asciicast"),
        ("pg-1", pg, "statements"),
        ("gone", tmp_path / "missing.cast", "asciicast"),
    ]
    hits = list(search(recordings, "ls -l"))
    assert [(h.session_id, h.kind, h.text) for h in hits] == [("ssh-1", "command", "ls -l")]  # as judged, once
    assert hits[0].t == pytest.approx(0.95, abs=1e-3)
    hits = list(search(recordings, r"^(UPDATE|DELETE)\b", regex=True))
    assert [(h.session_id, h.text, h.t) for h in hits] == [("pg-1", "UPDATE orders SET total = 0", 4.5)]
    assert [h.text for h in search(recordings, "select id", ignore_case=True)] == ["SELECT id FROM orders"]
    assert [h.text for h in search(recordings, "52;c")] == ["SELECT '' WHERE id = $1"]  # shown neutralised
    with pytest.raises(ValueError, match="unknown recording kind"):
        list(search([("x", pg, "video")], "a"))


async def test_search_binary_markers(tmp_path: Path) -> None:
    path = tmp_path / "exec.bin"
    rec = BinaryStreamRecorder.open(path, title="exec", env={}, started_at=time.time(), on_failure=ignore)
    rec.marker("command: tar cf - /var/lib/app")
    rec.stdin(b"echo piped script\n")
    await rec.close()
    assert [(h.kind, h.text) for h in search([("e-1", path, "binary")], "tar")] == [
        ("command", "tar cf - /var/lib/app")
    ]
    # stdin that no policy judged (tar's data) is not a command line
    assert list(search([("e-1", path, "ssh")], "piped")) == []
