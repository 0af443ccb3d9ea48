"""One-time, short-lived sign-in links (`gateway console-link USER`): signed by the gateway key, used once."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass

from gateway.config import Config
from gateway.store import Store
from gateway.tokens import KeyRing

LINK_TTL = 300.0
"""How long a printed link stays usable (seconds)."""

_CONTEXT = b"gateway-console-link:"  # domain separation: no other signed blob of the key verifies as a link
MAX_LINK = 2048


class LinkRefused(Exception):
    """The link is malformed, forged, expired or already used; str() is safe to show."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_link_token(ring: KeyRing, user: str, *, now: float, ttl: float = LINK_TTL) -> str:
    """A signed token naming `user`, expiring `ttl` seconds after `now`, with a one-time id."""
    payload = _b64(json.dumps({"sub": user, "exp": now + ttl, "jti": secrets.token_urlsafe(16)}).encode())
    kid, sig = ring.sign_bytes(_CONTEXT + payload.encode())
    return f"{payload}.{kid}.{sig}"


def console_url(config: Config, base: str | None = None) -> str:
    """The console's root as a browser on this machine reaches it (`base` when given)."""
    addr = config.listen_http
    host = "127.0.0.1" if addr.host in ("0.0.0.0", "::", "") else addr.host
    return (base or f"http://{host}:{addr.port}").rstrip("/") + "/"


def sign_in_link(ring: KeyRing, config: Config, user: str, *, now: float, base: str | None = None) -> str:
    """The one-time sign-in URL for `user` (valid LINK_TTL seconds, once)."""
    return f"{console_url(config, base)}signin?t={make_link_token(ring, user, now=now)}"


@dataclass
class UsedLinks:
    """Which links were used: in the store, so a link used on one replica is used on all of them."""

    store: Store

    async def redeem(self, ring: KeyRing, token: str, *, now: float) -> str:
        """The user the link signs in, marking it used; raises LinkRefused."""
        if len(token) > MAX_LINK or token.count(".") != 2:
            raise LinkRefused("this sign-in link is malformed")
        payload, kid, sig = token.split(".")
        if not ring.verify_bytes(kid, sig, _CONTEXT + payload.encode()):
            raise LinkRefused("this sign-in link is not signed by this gateway")
        try:
            claims = json.loads(_unb64(payload))
            user, exp, jti = str(claims["sub"]), float(claims["exp"]), str(claims["jti"])
        except (ValueError, KeyError, TypeError):
            raise LinkRefused("this sign-in link is malformed") from None
        if now >= exp:
            raise LinkRefused("this sign-in link has expired; ask for a new one (gateway console-link USER)")
        # The one-time store the workload tokens use: one insert, so two replicas cannot both accept it.
        if not await self.store.use_workload_token(f"console-link:{jti}", expires_at=exp, now=now, used_for=user):
            raise LinkRefused("this sign-in link was already used; ask for a new one")
        return user
