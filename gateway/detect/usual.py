"""Usual hours and volumes, from each user's own history: unusual time of day or weekday, volume far over p95.

Pure and O(1) per event: a session's start bumps a 24-hour and a 7-day histogram of its user; its end adds
rows, bytes out, statements per minute and length to the (user, target)'s log histograms (sketch.py). The
limits a live session is compared with are computed once, when it starts (`limits`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.detect.model import Detection
from gateway.detect.sketch import LogHistogram

UNUSUAL_HOUR = "usual.hour"
UNUSUAL_DAY = "usual.day"
VOLUMES = ("rows", "bytes", "rate", "duration")  # rows returned, bytes out, statements/min, seconds
RULES = (UNUSUAL_HOUR, UNUSUAL_DAY, *(f"usual.volume.{v}" for v in VOLUMES))
ANY_USER = ""  # the target's own volumes: every user's sessions there
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_UNITS = {"rows": "rows", "bytes": "bytes out", "rate": "statements a minute", "duration": "s long"}


@dataclass(frozen=True, slots=True)
class UsualSettings:
    """Warm-up and thresholds (a policy may fix the hours instead: `hours=(8, 19)`, UTC, end exclusive)."""

    warmup_sessions: int = 10
    rare: float = 0.02  # an hour (with its neighbours) or weekday with less than this share of sessions
    factor: float = 3.0  # "far above p95": over this many times it
    floors: dict[str, float] = field(
        default_factory=lambda: {"rows": 1000.0, "bytes": 1_000_000.0, "rate": 60.0, "duration": 1800.0}
    )
    hours: tuple[int, int] | None = None


@dataclass
class _Times:
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    days: list[int] = field(default_factory=lambda: [0] * 7)


class Usual:
    """Time histograms per user, volume histograms per (user, target); JSON round trip for the store."""

    def __init__(self, settings: UsualSettings | None = None) -> None:
        self.settings = settings or UsualSettings()
        self.times: dict[str, _Times] = {}
        self.volumes: dict[tuple[str, str], dict[str, LogHistogram]] = {}

    def started(
        self, user: str, target: str, session: str, now: float, *, hours: tuple[int, int] | None = None
    ) -> list[Detection]:
        """A session opened: is this an hour or weekday this user does not work? Then learn it.

        `hours`: a policy's fixed working hours for this session, over the settings' own.
        """
        t = self.times.setdefault(user, _Times())
        tm = time.gmtime(now)
        hour, day = tm.tm_hour, tm.tm_wday
        total = sum(t.hours)
        out: list[Detection] = []
        fixed = hours or self.settings.hours
        if fixed is not None:
            lo, hi = fixed
            if not (lo <= hour < hi if lo <= hi else hour >= lo or hour < hi):
                out.append(
                    Detection(
                        UNUSUAL_HOUR,
                        "warning",
                        f"{user} opened a session on {target} at {hour:02d}:00 "
                        f"UTC, outside the policy's hours {lo:02d}-{hi:02d}",
                        user,
                        target,
                        session,
                    )
                )
        elif total >= self.settings.warmup_sessions:
            near = t.hours[hour] + t.hours[(hour - 1) % 24] + t.hours[(hour + 1) % 24]
            if near / total < self.settings.rare:
                out.append(
                    Detection(
                        UNUSUAL_HOUR,
                        "warning",
                        f"{user} opened a session on {target} at {hour:02d}:00 "
                        f"UTC; {near} of their {total} sessions started within an hour of that",
                        user,
                        target,
                        session,
                    )
                )
            elif t.days[day] / total < self.settings.rare:
                out.append(
                    Detection(
                        UNUSUAL_DAY,
                        "warning",
                        f"{user} opened a session on {target} on a "
                        f"{_DAYS[day]}; {t.days[day]} of their {total} sessions were on that weekday",
                        user,
                        target,
                        session,
                    )
                )
        t.hours[hour] += 1
        t.days[day] += 1
        return out

    def limits(self, user: str, target: str) -> dict[str, float]:
        """Per volume, the level over which this user's session on this target is unusual.

        From the user's own sessions there once they are past warm-up, else from everyone's on the target
        (negative: the target's); nothing while both are warming up.
        """
        s = self.settings
        out: dict[str, float] = {}
        for key, sign in (((ANY_USER, target), -1.0), ((user, target), 1.0)):
            for name, h in self.volumes.get(key, {}).items():
                if h.total >= s.warmup_sessions:
                    out[name] = sign * max(s.floors.get(name, 0.0), s.factor * h.quantile(0.95))
        return out

    def over(self, user: str, target: str, session: str, name: str, value: float, limit: float) -> Detection:
        """The detection for one volume over its limit (a negative limit is the target's, see `limits`)."""
        whose = "their p95 there" if limit > 0 else f"the p95 of all sessions on {target}"
        return Detection(
            f"usual.volume.{name}",
            "warning",
            f"session {session} of {user} on {target} was {value:.0f} "
            f"{_UNITS[name]}, over {abs(limit):.0f} ({self.settings.factor:g}x {whose})",
            user,
            target,
            session,
        )

    def ended(
        self, user: str, target: str, session: str, volumes: dict[str, float], limits: dict[str, float] | None = None
    ) -> list[Detection]:
        """A session closed: compare its volumes with the limits it started with, then learn them."""
        lim = self.limits(user, target) if limits is None else limits
        out = [
            self.over(user, target, session, n, v, lim[n]) for n, v in volumes.items() if n in lim and v > abs(lim[n])
        ]
        for key in ((user, target), (ANY_USER, target)):
            hists = self.volumes.setdefault(key, {})
            for name, value in volumes.items():
                hists.setdefault(name, LogHistogram()).add(value)
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything learned, JSON-ready."""
        return {
            "times": {u: [t.hours, t.days] for u, t in self.times.items()},
            "volumes": [[u, tg, {n: h.counts for n, h in hs.items()}] for (u, tg), hs in self.volumes.items()],
        }

    def load(self, doc: dict[str, Any]) -> None:
        """Take what to_json gave (a restart keeps what was learned)."""
        for u, (hours, days) in doc.get("times", {}).items():
            self.times[u] = _Times(list(hours), list(days))
        for user, target, hs in doc.get("volumes", []):
            self.volumes[(str(user), str(target))] = {n: LogHistogram(c) for n, c in hs.items()}
