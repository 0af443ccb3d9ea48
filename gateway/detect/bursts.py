"""Bursts: many denials or errors in a short window, many sessions opened quickly, a grant used from a new address.

Sliding windows of timestamps per user (a bounded deque: O(1) per event); one detection per window, not
one per event past the threshold.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gateway.detect.model import Detection

DENIALS = "burst.denials"
ERRORS = "burst.errors"
SESSIONS = "burst.sessions"
NEW_ADDRESS = "burst.new_address"
RULES = (DENIALS, ERRORS, SESSIONS, NEW_ADDRESS)


@dataclass(frozen=True, slots=True)
class BurstSettings:
    """How many events in how many seconds make a burst."""

    denials: int = 5
    errors: int = 20
    sessions: int = 10
    window: float = 60.0


_WHAT = {DENIALS: "statements or commands denied", ERRORS: "statements failed", SESSIONS: "sessions opened"}


class Bursts:
    """Per-user windows; `grant_addresses` remembers the first client host of each grant."""

    def __init__(self, settings: BurstSettings | None = None) -> None:
        self.settings = settings or BurstSettings()
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._quiet_until: dict[tuple[str, str], float] = {}
        self.grant_addresses: dict[str, str] = {}

    def _count(self, rule: str, limit: int, user: str, target: str, session: str, now: float) -> list[Detection]:
        key = (rule, user)
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = deque(maxlen=limit)
        w.append(now)
        span = self.settings.window
        if len(w) < limit or now - w[0] > span or now < self._quiet_until.get(key, 0.0):
            return []
        self._quiet_until[key] = now + span
        return [
            Detection(
                rule,
                "warning",
                f"{user} had {limit} {_WHAT[rule]} on {target} within {now - w[0]:.0f} s",
                user,
                target,
                session,
            )
        ]

    def address_of(self, grant: str, client: str) -> str:
        """The first client host the grant was used from (this one, when it is the first)."""
        return self.grant_addresses.setdefault(grant, _host(client))

    def denied(self, user: str, target: str, session: str, now: float) -> list[Detection]:
        """A statement or command line was denied (someone probing a wall?)."""
        return self._count(DENIALS, self.settings.denials, user, target, session, now)

    def failed(self, user: str, target: str, session: str, now: float) -> list[Detection]:
        """A statement failed upstream."""
        return self._count(ERRORS, self.settings.errors, user, target, session, now)

    def opened(self, user: str, target: str, session: str, grant: str, client: str, now: float) -> list[Detection]:
        """A session opened: many quickly, or its grant used from another client host than before."""
        out = self._count(SESSIONS, self.settings.sessions, user, target, session, now)
        host = _host(client)
        first = self.address_of(grant, client)
        if first != host:
            out.append(
                Detection(
                    NEW_ADDRESS,
                    "warning",
                    f"{user}'s grant {grant} for {target} was used from {host}, first used from {first}",
                    user,
                    target,
                    session,
                )
            )
        return out


def _host(client: str) -> str:
    """The host of a front end's `host:port` (`[::1]:5432` too)."""
    host, _, port = client.rpartition(":")
    return host.strip("[]") if host and port.isdigit() else client
