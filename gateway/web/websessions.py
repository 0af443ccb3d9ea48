"""Console sign-in sessions: random ids held server-side with an absolute expiry and a per-session CSRF token."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from gateway.control.caller import Caller

SESSION_TTL = 8 * 3600.0
COOKIE = "gw_console"
MAX_SESSIONS = 10_000  # a flood of sign-ins cannot grow memory without bound: the oldest go first


@dataclass(frozen=True, slots=True)
class WebSession:
    """Who is signed in, until when, and the token every form of theirs must carry."""

    caller: Caller
    expires_at: float
    csrf: str

    def __repr__(self) -> str:
        return f"WebSession({self.caller.name!r}, expires_at={self.expires_at})"

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether a form's CSRF field matches (constant time)."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


@dataclass
class WebSessions:
    """Signed-in browsers by session id; expiry is checked here, not trusted to the cookie."""

    ttl: float = SESSION_TTL
    _by_id: dict[str, WebSession] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"WebSessions({len(self._by_id)} signed in)"

    def open(self, caller: Caller, *, now: float) -> str:
        """Sign `caller` in; the new session id (the cookie's value)."""
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.pop(next(iter(self._by_id)))
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = WebSession(caller, now + self.ttl, secrets.token_urlsafe(32))
        return sid

    def get(self, sid: str | None, *, now: float) -> WebSession | None:
        """The live session of this id, or None (unknown or expired: an expired one is forgotten)."""
        if not sid:
            return None
        ws = self._by_id.get(sid)
        if ws is not None and now >= ws.expires_at:
            del self._by_id[sid]
            return None
        return ws

    def close(self, sid: str | None) -> None:
        """Sign out."""
        if sid:
            self._by_id.pop(sid, None)
