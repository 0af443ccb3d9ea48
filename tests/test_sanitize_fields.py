"""`printable` (one stored value, shown inert with visible markers) and `free_text_problem` (the input check)."""

from __future__ import annotations

import pyte
from hypothesis import given
from hypothesis import strategies as st

from gateway.review.sanitize import free_text_problem, neutralise, printable, unsafe_char

NASTY = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(["\x1b", "\x9b", "\x9d", "\x9c", "\x07", "\r", "\n", "\b", "\u202e", "\u2066", "\u200b"]),
        st.sampled_from(["[", "]", "0;", "52;c;", "2K", "1A", "H", "P", "\\"]),
    ),
    max_size=40,
).map("".join)


def test_markers() -> None:
    assert printable("a\x1b[2Kb") == "a\\x1b[2Kb"
    assert printable("\u009b2K \u202eX\u2069 \u200b") == "\\x9b2K \\u202eX\\u2069 \\u200b"
    assert printable("one\ntwo\rthree\tfour\bfive") == "one\\ntwo\\rthree\\tfour\\x08five"
    assert printable("INC-1 \u2013 ünïcødé 日本 ✓") == "INC-1 \u2013 ünïcødé 日本 ✓"  # printable text untouched
    assert printable(None) == "-" and printable(42) == "42"


@given(NASTY)
def test_printable_output_cannot_act_on_a_terminal(value: str) -> None:
    shown = printable(value)
    assert not any(unsafe_char(c) for c in shown)
    # a VT emulator draws it as plain text on the one line it started on, after the prefix, with no title
    screen = pyte.Screen(400, 3)
    pyte.Stream(screen).feed("scope: admin | " + shown)
    assert screen.display[0].startswith("scope: admin | ")
    assert screen.display[1].strip() == "" and screen.cursor.y == 0
    assert screen.title == ""


@given(NASTY)
def test_the_input_check_refuses_exactly_what_printable_would_mark(value: str) -> None:
    problem = free_text_problem(value, limit=1000)
    assert (problem is None) == (printable(value) == value)
    if problem is not None:
        assert problem.isprintable()  # it names the character by its marker, never echoes it


def test_length_limit() -> None:
    assert free_text_problem("x" * 500) is None
    assert free_text_problem("x" * 501) == "is too long (501 characters; at most 500)"


def test_neutralise_drops_bidi_overrides() -> None:
    assert neutralise("ab\u202ecd\u2066e\u2069") == "abcde"
    assert neutralise("x\u202ey", keep_sgr=True) == "xy"
