"""The lingering-access decision (pure): which backends of an injected login no live session owns."""

from __future__ import annotations

from gateway.detect.sweep import (
    ENDED_SESSION_BACKEND,
    STALE_HELPER_BACKEND,
    UNTAGGED_BACKEND,
    Backend,
    LiveUse,
    find_strays,
    tagged_session,
)

NOW = 1_000_000.0


def _b(pid: int, app: str, start: float = NOW - 300) -> Backend:
    return Backend(pid, "app_ro", app, start, "127.0.0.1")


def test_tag_parsing() -> None:
    assert tagged_session("gateway:alice:abc123") == "abc123"
    assert tagged_session("gateway:catalog") is None
    assert tagged_session("psql") is None


def test_live_sessions_and_fresh_helpers_are_kept() -> None:
    live = [LiveUse("s1", "app_ro", NOW - 400)]
    backends = [_b(1, "gateway:alice:s1"), _b(2, "gateway:catalog", NOW - 5), _b(3, "gateway:bob:s9", NOW - 2)]
    assert find_strays("db", backends, live, {}, NOW) == []


def test_ended_session_backend_is_critical_and_names_the_session() -> None:
    (s,) = find_strays("db", [_b(7, "gateway:alice:s2")], [], {"s2": ("alice", "grant revoked: leaver")}, NOW)
    assert (s.detection.rule, s.detection.severity, s.detection.session) == (ENDED_SESSION_BACKEND, "critical", "s2")
    assert "ended (grant revoked: leaver) but its upstream backend 7" in s.detection.explanation


def test_untagged_backend_is_critical_unless_a_live_session_renamed_it() -> None:
    live = [LiveUse("s1", "app_ro", NOW - 300.5)]
    renamed, outsider = _b(1, "my-app", NOW - 300), _b(2, "psql", NOW - 100)
    strays = find_strays("db", [renamed, outsider], live, {}, NOW)
    assert [(s.backend.pid, s.detection.rule, s.detection.severity) for s in strays] == [
        (2, UNTAGGED_BACKEND, "critical")
    ]


def test_stuck_helper_connection_is_flagged() -> None:
    (s,) = find_strays("db", [_b(4, "gateway:catalog", NOW - 1000)], [], {}, NOW)
    assert s.detection.rule == STALE_HELPER_BACKEND


def test_a_session_whose_tag_is_in_view_claims_no_untagged_backend() -> None:
    live = [LiveUse("s1", "app_ro", NOW - 300.5)]
    strays = find_strays("db", [_b(1, "gateway:alice:s1"), _b(2, "psql", NOW - 300)], live, {}, NOW)
    assert [s.backend.pid for s in strays] == [2]
