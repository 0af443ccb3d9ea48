"""Lingering access, decided: which upstream backends of the injected logins no live session owns (pure).

The Postgres front end tags every upstream connection `application_name=gateway:<user>:<session id>`
(its catalogue loads use `gateway:catalog`, `gateway target check` `gateway:target-check`, the sweep itself
`gateway:sweep`). A backend of an injected login is lingering when its tag names a session that has ended
(a revocation, expiry or kill that did not end the upstream side: critical), or when it carries no tag of
a live session at all (the injected credentials used outside the gateway: critical too). A live session
may change its own application_name (`SET application_name` is allowed): an untagged backend whose start
lies within `claim_window` seconds after a live session of that login started is taken to be that
session's (one backend per session, and only for a session whose own tag is nowhere in view).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.detect.model import Detection

ENDED_SESSION_BACKEND = "lingering.ended_session_backend"
UNTAGGED_BACKEND = "lingering.untagged_backend"
STALE_HELPER_BACKEND = "lingering.stale_helper_backend"
ENDED_SESSION_PROCESS = "lingering.ended_session_process"
UNOWNED_PROCESS = "lingering.unowned_process"
RULES = (ENDED_SESSION_BACKEND, UNTAGGED_BACKEND, STALE_HELPER_BACKEND, ENDED_SESSION_PROCESS, UNOWNED_PROCESS)

HELPER_TAGS = frozenset({"gateway:catalog", "gateway:sweep", "gateway:target-check"})
HELPER_GRACE = 120.0  # a catalogue load is bounded by seconds; one this old is stuck or forged
NEW_SESSION_GRACE = 10.0  # a tagged backend of a session not yet visible in the store (admission in flight)


@dataclass(frozen=True, slots=True)
class Backend:
    """One row of pg_stat_activity for an injected login."""

    pid: int
    login: str
    application_name: str
    backend_start: float
    client: str


@dataclass(frozen=True, slots=True)
class LiveUse:
    """A live gateway session using a login (from the store: every replica's sessions)."""

    session: str
    login: str
    started_at: float


@dataclass(frozen=True, slots=True)
class Stray:
    """A backend to flag (and, in kill mode, terminate), with the detection that explains it."""

    backend: Backend
    detection: Detection


def tagged_session(application_name: str) -> str | None:
    """The session id in a `gateway:<user>:<id>` tag, or None."""
    parts = application_name.split(":")
    if len(parts) >= 3 and parts[0] == "gateway" and parts[-1]:
        return parts[-1]
    return None


def find_strays(
    target: str,
    backends: Iterable[Backend],
    live: Iterable[LiveUse],
    ended: Mapping[str, tuple[str, str]],
    now: float,
    *,
    claim_window: float = 5.0,
) -> list[Stray]:
    """Backends no live session owns; `ended` maps an ended session id to (user, end reason)."""
    live_list = list(live)
    live_ids = {u.session for u in live_list}
    out: list[Stray] = []
    untagged: list[Backend] = []
    backends = list(backends)
    # A live session whose own tag is in view kept its name: it owns no untagged backend.
    claimed = {sid for b in backends if (sid := tagged_session(b.application_name)) is not None}
    for b in backends:
        age = now - b.backend_start
        if b.application_name in HELPER_TAGS:
            if age > HELPER_GRACE:
                out.append(
                    _stray(
                        target,
                        b,
                        STALE_HELPER_BACKEND,
                        "warning",
                        "",
                        f"a gateway helper connection ({b.application_name}) as {b.login} on {target} "
                        f"has been open {age:.0f} s; backend {b.pid} terminated",
                    )
                )
            continue
        sid = tagged_session(b.application_name)
        if sid is not None and sid in live_ids:
            continue
        if sid is not None and sid in ended:
            user, reason = ended[sid]
            out.append(
                _stray(
                    target,
                    b,
                    ENDED_SESSION_BACKEND,
                    "critical",
                    sid,
                    f"session {sid} of {user} on {target} ended ({reason}) but its upstream backend "
                    f"{b.pid} as {b.login} was still connected",
                    user,
                )
            )
            continue
        if sid is not None and age <= NEW_SESSION_GRACE:
            continue
        untagged.append(b)
    for b in sorted(untagged, key=lambda x: x.backend_start):
        owner = next(
            (
                u
                for u in live_list
                if u.login == b.login
                and u.session not in claimed
                and 0.0 <= b.backend_start - u.started_at <= claim_window
            ),
            None,
        )
        if owner is not None:
            claimed.add(owner.session)
            continue
        out.append(
            _stray(
                target,
                b,
                UNTAGGED_BACKEND,
                "critical",
                "",
                f"backend {b.pid} as injected login {b.login} on {target} (application_name "
                f"{b.application_name[:60]!r}, from {b.client or 'a local socket'}) belongs to no live "
                f"gateway session",
            )
        )
    return out


def _stray(target: str, b: Backend, rule: str, severity: str, session: str, text: str, user: str = "") -> Stray:
    return Stray(b, Detection(rule, severity, text, user or "gateway", target, session))
