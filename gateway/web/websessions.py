"""Console sign-in sessions: random ids held server-side with an absolute expiry and a per-session CSRF token.

They live in the store, so a browser signed in through one replica is signed in on every replica behind a
load balancer (and signing out ends it on all). The store keeps only the SHA-256 of the cookie: someone who
can read the database cannot use a row to sign in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from gateway.control.caller import Caller
from gateway.store import Store
from gateway.store.records import WebSignIn

SESSION_TTL = 8 * 3600.0
COOKIE = "gw_console"


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
    """Signed-in browsers by session id, in the store; expiry is checked there, not trusted to the cookie."""

    store: Store
    ttl: float = SESSION_TTL

    def __repr__(self) -> str:
        return f"WebSessions({self.store!r})"

    async def open(self, caller: Caller, *, now: float) -> str:
        """Sign `caller` in; the new session id (the cookie's value)."""
        sid = secrets.token_urlsafe(32)
        row = WebSignIn(caller.name, tuple(sorted(caller.groups)), caller.admin, caller.via,
                        secrets.token_urlsafe(32), now + self.ttl)  # fmt: skip
        await self.store.add_web_session(_key(sid), row, now=now)
        return sid

    async def get(self, sid: str | None, *, now: float) -> WebSession | None:
        """The live session of this id, or None (unknown or expired)."""
        if not sid:
            return None
        row = await self.store.get_web_session(_key(sid), now=now)
        if row is None:
            return None
        caller = Caller(row.user, frozenset(row.groups), admin=row.admin, via=row.via)
        return WebSession(caller, row.expires_at, row.csrf)

    async def close(self, sid: str | None) -> None:
        """Sign out."""
        if sid:
            await self.store.drop_web_session(_key(sid))


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()
