"""Verify a pipeline's OIDC token against its configured issuer: pinned algorithms, audience, time, JWKS keys."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.config import WorkloadIssuer
from gateway.jwks import JwksCache, JwksError, KeyProblem

log = logging.getLogger(__name__)

MAX_TOKEN = 16384
JWKS_CACHE_SECONDS = 300.0
JWKS_MIN_REFRESH_SECONDS = 30.0  # an unknown kid refetches at most this often: forged kids cannot hammer the IdP
# Claims kept on the grant and in every audit event: enough for a reviewer to find the pipeline run.
KEPT_CLAIMS = (
    "repository",
    "ref",
    "sha",
    "environment",
    "workflow",
    "job_workflow_ref",
    "run_id",
    "run_attempt",
    "actor",
    "event_name",
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


class WorkloadRefused(Exception):
    """A workload token was refused; `code` is stable, str() is safe to show the pipeline (never the token)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """A verified pipeline token: which issuer, the grant subject, the claims, and what makes it one-time."""

    issuer: str  # the [workloads.NAME]
    subject: str  # workload:acme/orders@main
    claims: Mapping[str, Any]
    token_key: str  # sha256 of issuer and jti: the one-time-use key
    expires_at: float

    def kept(self) -> dict[str, str]:
        """The claims kept on the grant (strings only), plus the issuer name and token subject."""
        out = {"issuer": self.issuer, "sub": str(self.claims.get("sub", ""))}
        for k in KEPT_CLAIMS:
            v = self.claims.get(k)
            if isinstance(v, str | int) and not isinstance(v, bool):
                out[k] = str(v)
        return out


def unverified_issuer(token: str) -> str:
    """The `iss` a token claims (to pick its configured issuer); '' when it has none."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except (jwt.PyJWTError, UnicodeError):
        return ""
    return iss if isinstance(iss, str) else ""


def subject_of(template: str, claims: Mapping[str, Any]) -> str:
    """`workload:` + the issuer's subject template with claims filled in; a missing claim refuses the token."""

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "ref_short":
            ref = claims.get("ref")
            value = ref.removeprefix("refs/heads/").removeprefix("refs/tags/") if isinstance(ref, str) else None
        else:
            value = claims.get(name)
        if not isinstance(value, str | int) or isinstance(value, bool) or str(value) == "":
            raise WorkloadRefused("missing-claim", f"the token has no {name!r} claim, which names the workload")
        return str(value)

    return "workload:" + _PLACEHOLDER.sub(fill, template)


class WorkloadVerifier:
    """One configured issuer: its keys (a JWKS URL, cached, or a file) and its token rules."""

    def __init__(self, cfg: WorkloadIssuer, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self._jwks = JwksCache(
            url=cfg.jwks_url,
            file=cfg.jwks_file,
            what=f"workload issuer {cfg.name}",
            cache_seconds=JWKS_CACHE_SECONDS,
            min_refresh_seconds=JWKS_MIN_REFRESH_SECONDS,
        )

    def __repr__(self) -> str:
        return f"WorkloadVerifier({self.cfg.name!r}, issuer={self.cfg.issuer!r})"

    async def close(self) -> None:
        """Close the JWKS client."""
        await self._jwks.close()

    async def verify(self, token: str) -> WorkloadIdentity:
        """A verified identity, or WorkloadRefused saying why."""
        cfg = self.cfg
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, UnicodeError):
            raise WorkloadRefused("malformed", "the workload token is not a JWT") from None
        alg = header.get("alg")
        if alg not in cfg.algorithms:
            raise WorkloadRefused("algorithm", f"token algorithm {alg!r} is not accepted for workload {cfg.name}")
        jwk = await self._key(header.get("kid"))
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            raise WorkloadRefused("key", "the issuer's key does not fit the token's algorithm") from None
        now = self.clock()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                options={"require": ["iss", "aud", "sub", "exp", "iat", "jti"], "verify_exp": False},
            )
        except jwt.InvalidAudienceError:
            why = f"the token is for another audience; ask for aud={cfg.audience}"
            raise WorkloadRefused("audience", why) from None
        except jwt.InvalidIssuerError:
            raise WorkloadRefused("issuer", "the token was issued by another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise WorkloadRefused("missing-claim", f"the token lacks the {exc.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise WorkloadRefused("not-yet-valid", "the token is not valid yet") from None
        except jwt.InvalidSignatureError:
            raise WorkloadRefused("signature", "the token's signature is invalid") from None
        except jwt.PyJWTError:
            raise WorkloadRefused("malformed", "the token's claims are invalid") from None
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(exp, int | float) or not isinstance(iat, int | float) or not isinstance(jti, str) or not jti:
            raise WorkloadRefused("malformed", "the token's exp, iat or jti has the wrong type")
        # Time against the clock passed in (tests, replicas); pyjwt's own check would use the wall clock.
        if exp <= now - cfg.leeway:
            raise WorkloadRefused("expired", "the token has expired; ask the CI system for a fresh one")
        if now - iat > cfg.max_token_age + cfg.leeway:
            raise WorkloadRefused("too-old", f"the token was issued more than {cfg.max_token_age} s ago")
        token_key = hashlib.sha256(f"{cfg.name}\n{cfg.issuer}\n{jti}".encode()).hexdigest()
        return WorkloadIdentity(cfg.name, subject_of(cfg.subject, claims), claims, token_key, float(exp))

    async def _key(self, kid: Any) -> dict[str, Any]:
        try:
            return await self._jwks.key(kid)
        except JwksError as e:
            raise WorkloadRefused(*_KEY_REFUSALS[e.problem]) from None


_KEY_REFUSALS: dict[KeyProblem, tuple[str, str]] = {
    KeyProblem.MALFORMED_KID: ("malformed", "the token's key id (kid) is malformed"),
    KeyProblem.UNAVAILABLE: ("issuer-unavailable", "cannot load the issuer's keys; try again"),
    KeyProblem.NO_KEYS: ("issuer-unavailable", "the issuer's JWKS has no keys"),
    KeyProblem.AMBIGUOUS: ("key", "the token has no key id (kid) and the issuer has several keys"),
    KeyProblem.UNKNOWN_KID: ("key", "the token was signed by a key the issuer does not publish"),
}
