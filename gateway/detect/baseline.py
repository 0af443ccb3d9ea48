"""Per (user, target) baselines: what each user has done where, and for how many sessions; O(1) per lookup."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

ANY_TARGET = ""  # the user's own row: which targets they have used


class Seen(enum.Enum):
    """What a lookup found: known already, new but still warming up, or new after warm-up (flag it)."""

    KNOWN = "known"
    LEARNED = "learned"
    NOVEL = "novel"


@dataclass(slots=True)
class History:
    """How many sessions a (user, target) has had, and since when."""

    sessions: int = 0
    since: float | None = None


class Baselines:
    """Everything each user was seen doing (kind, value) on each target; sans-IO, the caller persists news."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seen: set[tuple[str, str, str, str]] = set()
        self.history: dict[tuple[str, str], History] = {}

    def load(self, sessions: Iterable[tuple[str, str, int, float]], seen: Iterable[tuple[str, str, str, str]]) -> None:
        """Start from stored history: (user, target, sessions, first start) and seen (user, target, kind, value)."""
        for user, target, n, since in sessions:
            for key in ((user, target), (user, ANY_TARGET)):
                h = self.history.setdefault(key, History())
                h.sessions += n
                h.since = since if h.since is None else min(h.since, since)
        self.seen.update(seen)

    def start(self, user: str, target: str, now: float) -> Seen:
        """A session starts: count it, and say whether this target is new to the user."""
        for key in ((user, target), (user, ANY_TARGET)):
            h = self.history.setdefault(key, History())
            h.sessions += 1
            if h.since is None:
                h.since = now
        return self.note(user, ANY_TARGET, "target", target)

    def note(self, user: str, target: str, kind: str, value: str) -> Seen:
        """Look (kind, value) up for this user on this target, remembering it; NOVEL only after warm-up.

        Called during a session (already counted): warm-up is over once `warmup` sessions came before it.
        """
        key = (user, target, kind, value)
        if key in self.seen:
            return Seen.KNOWN
        self.seen.add(key)
        h = self.history.get((user, target))
        return Seen.NOVEL if h is not None and h.sessions > self.warmup else Seen.LEARNED

    def of(self, user: str, target: str) -> History:
        """The history of a (user, target); ANY_TARGET for the user's own."""
        return self.history.get((user, target)) or History()
