"""Who is calling: API keys from the config (hashed at rest) or OIDC bearer tokens checked against the IdP's JWKS."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from gateway.api.errors import ApiError
from gateway.config import ApiSettings, ApiUser, OidcConfig
from gateway.control.apikeys import API_KEY_PREFIX

# Re-exported: the demo and tests make and hash keys through this module.
from gateway.control.apikeys import hash_api_key as hash_api_key
from gateway.control.apikeys import new_api_key as new_api_key
from gateway.control.caller import Caller
from gateway.jwks import JwksCache, JwksError, KeyProblem

log = logging.getLogger(__name__)

# The key helpers live in gateway.control.apikeys; re-exported for the demo and the tests that make keys here.
__all__ = ["API_KEY_PREFIX", "ApiKeys", "AuthError", "Authenticator", "OidcVerifier", "hash_api_key", "new_api_key"]

MAX_CREDENTIAL = 8192


class AuthError(ApiError):
    """401: no, malformed or wrong credentials; the message never repeats the credential."""

    def __init__(self, message: str) -> None:
        super().__init__("unauthorized", message)


class ApiKeys:
    """Look up a user by API key; every stored hash is compared in constant time."""

    def __init__(self, users: Mapping[str, ApiUser]) -> None:
        self._users = list(users.values())

    def __repr__(self) -> str:
        return f"ApiKeys(users={len(self._users)})"

    def lookup(self, key: str) -> ApiUser | None:
        """The user whose key this is, or None."""
        digest = hash_api_key(key).encode()
        found = None
        for user in self._users:
            # No early exit: the time taken does not say which (or whether a) user matched.
            if hmac.compare_digest(digest, user.api_key_sha256.encode()):
                found = user
        return found


class OidcVerifier:
    """Verify IdP tokens: pinned asymmetric algorithms, issuer, audience, expiry; keys from a cached JWKS."""

    def __init__(self, cfg: OidcConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._jwks = JwksCache(url=cfg.jwks_url, what="the identity provider", cache_seconds=cfg.jwks_cache_seconds,
                               min_refresh_seconds=cfg.jwks_min_refresh_seconds, clock=clock)  # fmt: skip

    def __repr__(self) -> str:
        return f"OidcVerifier(issuer={self.cfg.issuer!r}, keys={len(self._jwks)})"

    async def close(self) -> None:
        """Close the HTTP client used for the JWKS."""
        await self._jwks.close()

    async def verify(self, token: str) -> tuple[str, frozenset[str], dict[str, Any]]:
        """(user, groups, claims) of a valid token; AuthError otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("bearer token is not a valid JWT") from None
        alg = header.get("alg")
        if alg not in self.cfg.algorithms:
            raise AuthError(f"token algorithm {alg!r} is not accepted (allowed: {', '.join(self.cfg.algorithms)})")
        jwk = await self._key(header.get("kid"))
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            raise AuthError("the identity provider's key does not fit the token's algorithm") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.cfg.audience,
                issuer=self.cfg.issuer,
                leeway=self.cfg.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token has expired; log in to the identity provider again") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token was issued by another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token is not valid yet") from None
        except jwt.PyJWTError:
            raise AuthError("token signature or claims are invalid") from None
        user = claims.get(self.cfg.user_claim)
        if not isinstance(user, str) or not user:
            raise AuthError(f"token has no usable {self.cfg.user_claim!r} claim (the user name)")
        return user, _groups(claims.get(self.cfg.groups_claim)), claims

    async def _key(self, kid: Any) -> dict[str, Any]:
        try:
            return await self._jwks.key(kid)
        except JwksError as e:
            raise _OIDC_KEY_ERRORS[e.problem]() from None


_OIDC_KEY_ERRORS: dict[KeyProblem, Callable[[], ApiError]] = {
    KeyProblem.MALFORMED_KID: lambda: AuthError("token key id (kid) is malformed"),
    KeyProblem.UNAVAILABLE: lambda: ApiError("idp-unavailable", "cannot fetch the identity provider's keys; try again"),
    KeyProblem.NO_KEYS: lambda: ApiError("idp-unavailable", "the identity provider's JWKS has no keys"),
    KeyProblem.AMBIGUOUS: lambda: AuthError("token has no key id (kid) and the identity provider has several keys"),
    KeyProblem.UNKNOWN_KID: lambda: AuthError("token was signed by a key the identity provider does not publish"),
}


def _groups(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(g for g in value.replace(",", " ").split() if g)
    if isinstance(value, list):
        return frozenset(g for g in value if isinstance(g, str))
    return frozenset()


class Authenticator:
    """Turn an Authorization header into a Caller, or raise AuthError."""

    def __init__(self, users: Mapping[str, ApiUser], settings: ApiSettings) -> None:
        self.settings = settings
        self.keys = ApiKeys(users) if settings.api_keys else None
        self.oidc = OidcVerifier(settings.oidc) if settings.oidc is not None else None

    def __repr__(self) -> str:
        return f"Authenticator(api_keys={self.keys is not None}, oidc={self.oidc is not None})"

    async def close(self) -> None:
        """Release the JWKS client."""
        if self.oidc is not None:
            await self.oidc.close()

    async def authenticate(self, authorization: str | None) -> Caller:
        """`Authorization: Bearer <API key or OIDC token>` -> Caller."""
        if not authorization:
            raise AuthError("authentication required: send Authorization: Bearer <API key or OIDC token>")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError("use the Bearer scheme: Authorization: Bearer <API key or OIDC token>")
        if len(credential) > MAX_CREDENTIAL:
            raise AuthError("credential is too long")
        if credential.startswith(API_KEY_PREFIX):
            if self.keys is None:
                raise AuthError("API keys are disabled on this gateway; use an OIDC token")
            user = self.keys.lookup(credential)
            if user is None:
                raise AuthError("unknown API key")
            return self._caller(user.name, user.groups, "api-key")
        if self.oidc is None:
            raise AuthError("not an API key, and OIDC is not configured on this gateway")
        name, groups, _ = await self.oidc.verify(credential)
        return self._caller(name, groups, "oidc")

    def _caller(self, name: str, groups: frozenset[str], via: str) -> Caller:
        return Caller(name, groups, admin=bool(groups & self.settings.admin_groups), via=via)
