"""Console sign-in by OIDC: authorization code with PKCE (S256), state and nonce, against the [oidc] issuer.

The console is a public client whose client_id is [oidc] audience (the ID token's audience is the client).
The ID token is verified by the API's own OidcVerifier (pinned algorithms, issuer, audience, expiry, JWKS),
then its nonce against the one this browser's flow was started with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp

from gateway.api.auth import AuthError, OidcVerifier

FLOW_TTL = 600.0
MAX_FLOWS = 10_000
MAX_DOC = 1 << 20
TIMEOUT = aiohttp.ClientTimeout(total=10)


class SignInRefused(Exception):
    """The sign-in did not complete; str() is safe to show (no code, token or verifier in it)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """One started sign-in: what the callback must match."""

    nonce: str
    verifier: str
    redirect_uri: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Flow(redirect_uri={self.redirect_uri!r}, expires_at={self.expires_at})"


def challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class OidcSignIn:
    """Start flows (the IdP URL to send the browser to) and finish them (code -> verified user)."""

    verifier: OidcVerifier
    _flows: dict[str, Flow] = field(default_factory=dict)
    _endpoints: dict[str, str] | None = None
    _session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"OidcSignIn(issuer={self.verifier.cfg.issuer!r}, pending={len(self._flows)})"

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    async def _discover(self) -> dict[str, str]:
        if self._endpoints is None:
            issuer = self.verifier.cfg.issuer
            url = issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with self._http().get(url) as resp:
                    if resp.status != 200:
                        raise SignInRefused(f"the identity provider's discovery document answered {resp.status}")
                    doc = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                raise SignInRefused("the identity provider cannot be reached") from None
            if not isinstance(doc, dict) or doc.get("issuer") != issuer:
                raise SignInRefused("the identity provider's discovery document names another issuer")
            ends = {k: doc.get(k) for k in ("authorization_endpoint", "token_endpoint")}
            if not all(isinstance(v, str) and v.startswith(("https://", "http://")) for v in ends.values()):
                raise SignInRefused("the identity provider's discovery document lacks its endpoints")
            self._endpoints = {k: str(v) for k, v in ends.items()}
        return self._endpoints

    async def start(self, redirect_uri: str, *, now: float) -> tuple[str, str]:
        """(state, the authorization URL): the state goes into the browser's flow cookie."""
        ends = await self._discover()
        self._flows = {s: f for s, f in self._flows.items() if f.expires_at > now}
        while len(self._flows) >= MAX_FLOWS:
            self._flows.pop(next(iter(self._flows)))
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        self._flows[state] = Flow(nonce, verifier, redirect_uri, now + FLOW_TTL)
        params = {
            "response_type": "code",
            "client_id": self.verifier.cfg.audience,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge(verifier),
            "code_challenge_method": "S256",
        }
        return state, f"{ends['authorization_endpoint']}?{urlencode(params)}"

    async def finish(
        self, query: dict[str, str], cookie_state: str | None, *, now: float
    ) -> tuple[str, frozenset[str]]:
        """(user, groups) of the callback's code; the state must be this browser's and unused, the nonce ours."""
        state = query.get("state", "")
        if not cookie_state or not hmac.compare_digest(state.encode(), cookie_state.encode()):
            raise SignInRefused("this sign-in was not started in this browser; start again")
        flow = self._flows.pop(state, None)
        if flow is None or now >= flow.expires_at:
            raise SignInRefused("this sign-in expired or was already used; start again")
        if "error" in query:
            raise SignInRefused(f"the identity provider refused: {query['error'][:100]}")
        code = query.get("code")
        if not code:
            raise SignInRefused("the identity provider sent no code")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "client_id": self.verifier.cfg.audience,
            "code_verifier": flow.verifier,
        }
        ends = await self._discover()
        try:
            async with self._http().post(ends["token_endpoint"], data=form) as resp:
                body = await resp.content.read(MAX_DOC)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            raise SignInRefused("the identity provider's token endpoint cannot be reached") from None
        if status != 200:
            raise SignInRefused(f"the identity provider refused the code ({status})")
        try:
            id_token = json.loads(body)["id_token"]
        except (ValueError, KeyError, TypeError):
            raise SignInRefused("the identity provider's token answer has no ID token") from None
        try:
            user, groups, claims = await self.verifier.verify(str(id_token))
        except AuthError as exc:
            raise SignInRefused(f"the ID token is not accepted: {exc.message}") from None
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), flow.nonce.encode()):
            raise SignInRefused("the ID token's nonce is not this sign-in's")
        return user, groups
