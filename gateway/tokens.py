"""Approval tokens: EdDSA (Ed25519) JWTs signed by the gateway's key ring; JWKS export; strict verification."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "nbf", "exp", "target", "scope", "reason", "approvers")
MAX_TOKEN_BYTES = 8192  # a JWT bigger than this is not one of ours; refuse before parsing


class TokenError(Exception):
    """A token was refused; `code` is stable for tests and metrics, str() is safe to show the client."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified content of an approval token."""

    sub: str
    jti: str
    target: str
    scope: str
    iat: int
    nbf: int
    exp: int
    reason: str
    approvers: tuple[str, ...]
    iss: str
    aud: str
    max_sessions: int | None = None
    workload: Mapping[str, str] | None = None  # a pipeline's grant: issuer name, run id, workflow, ...

    def to_jwt_claims(self) -> dict[str, Any]:
        """The claim set as signed."""
        out: dict[str, Any] = {
            "iss": self.iss,
            "aud": self.aud,
            "sub": self.sub,
            "jti": self.jti,
            "iat": self.iat,
            "nbf": self.nbf,
            "exp": self.exp,
            "target": self.target,
            "scope": self.scope,
            "reason": self.reason,
            "approvers": list(self.approvers),
        }
        if self.max_sessions is not None:
            out["max_sessions"] = self.max_sessions
        if self.workload is not None:
            out["workload"] = dict(self.workload)
        return out


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A stable id for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


class KeyRing:
    """Signing keys in a folder: `<kid>.pem` private keys (0600) and `active` naming the one that signs."""

    def __init__(
        self,
        folder: Path | None,
        private: Mapping[str, Ed25519PrivateKey],
        public: Mapping[str, Ed25519PublicKey],
        active: str | None,
    ) -> None:
        self.folder = folder
        self._private = dict(private)
        self._public = dict(public)
        self._active = active

    def __repr__(self) -> str:
        return f"KeyRing(kids={sorted(self._public)}, active={self._active!r})"

    @classmethod
    def load_or_create(cls, folder: Path) -> KeyRing:
        """Load the ring; on first start make the folder (0700) and a first key."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        ring = cls.load(folder)
        if ring._active is None:
            ring.rotate()
        return ring

    @classmethod
    def load(cls, folder: Path) -> KeyRing:
        """Load the keys in `folder` (no key yet is fine: an empty ring)."""
        private: dict[str, Ed25519PrivateKey] = {}
        for pem in sorted((folder / "signing").glob("*.pem")) if (folder / "signing").is_dir() else []:
            key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{pem}: not an Ed25519 private key")
            private[key_id(key.public_key())] = key
        active_file = folder / "signing" / "active"
        active = active_file.read_text().strip() if active_file.exists() else None
        if active is not None and active not in private:
            raise ValueError(f"{active_file}: names key {active!r}, which is not in {folder / 'signing'}")
        public = {kid: k.public_key() for kid, k in private.items()}
        return cls(folder, private, public, active)

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> KeyRing:
        """A verify-only ring from a JWKS document (another replica's or a tool's)."""
        public: dict[str, Ed25519PublicKey] = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
                raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
                public[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
        return cls(None, {}, public, None)

    def rotate(self) -> str:
        """Make a new key and let it sign; old keys still verify until their files are removed."""
        if self.folder is None:
            raise ValueError("a verify-only key ring cannot rotate")
        key = Ed25519PrivateKey.generate()
        kid = key_id(key.public_key())
        signing = self.folder / "signing"
        signing.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(signing / f"{kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        tmp = signing / "active.tmp"
        tmp.write_text(kid + "\n")
        tmp.replace(signing / "active")
        self._private[kid] = key
        self._public[kid] = key.public_key()
        self._active = kid
        return kid

    @property
    def active_kid(self) -> str:
        """The id of the key that signs."""
        if self._active is None:
            raise ValueError("no signing key: run `gateway init` or start the gateway once")
        return self._active

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key for `kid`, or None."""
        return self._public.get(kid)

    def public_keys(self) -> list[Ed25519PublicKey]:
        """Every public key of the ring (old ones too: they still verify what they signed)."""
        return [self._public[kid] for kid in sorted(self._public)]

    def sign_bytes(self, data: bytes) -> tuple[str, str]:
        """Sign raw bytes with the active key: (kid, base64url signature)."""
        kid = self.active_kid
        return kid, _b64url(self._private[kid].sign(data))

    def verify_bytes(self, kid: str, signature: str, data: bytes) -> bool:
        """Whether `signature` by key `kid` is valid over `data`."""
        key = self._public.get(kid)
        if key is None:
            return False
        try:
            key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)), data)
        except Exception:
            return False
        return True

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWKS document."""
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": ALGORITHM,
                    "use": "sig",
                    "kid": kid,
                    "x": _b64url(_raw_public(k)),
                }
                for kid, k in sorted(self._public.items())
            ]
        }

    def sign_jws(self, payload: Mapping[str, Any], typ: str) -> str:
        """Sign another kind of document (a receipt) as a compact JWS with its own `typ`."""
        kid = self.active_kid
        return jwt.encode(dict(payload), self._private[kid], algorithm=ALGORITHM, headers={"kid": kid, "typ": typ})

    def issue(self, claims: Claims) -> str:
        """Sign an approval token."""
        kid = self.active_kid
        return jwt.encode(claims.to_jwt_claims(), self._private[kid], algorithm=ALGORITHM, headers={"kid": kid})


def verify_token(
    token: str, ring: KeyRing, *, issuer: str, audience: str, leeway: int, now: float | None = None
) -> Claims:
    """Check signature, algorithm, key id, every required claim, iss/aud and the time window; raise TokenError."""
    now = time.time() if now is None else now
    token = token.strip()
    if not token:
        raise TokenError("empty", "no approval token was given")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("malformed", "approval token is too long")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, UnicodeError):  # lone surrogates (undecodable client bytes) are not a JWT either
        raise TokenError("malformed", "approval token is malformed (not a JWT)") from None
    alg = header.get("alg")
    if alg != ALGORITHM:
        # Pinning the algorithm defeats `alg: none` and HS256-signed-with-the-public-key (CVE-2022-29217 class).
        raise TokenError("algorithm", f"approval token algorithm {alg!r} is not accepted (EdDSA only)")
    kid = header.get("kid")
    key = ring.public_key(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenError("unknown-key", "approval token was signed by an unknown key (kid)")
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={
                "require": list(REQUIRED_CLAIMS),
                # Time is checked below against the clock passed in, so tests and replicas agree.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenError("signature", "approval token signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError("missing-claim", f"approval token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise TokenError("audience", "approval token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise TokenError("issuer", "approval token was issued by someone else") from None
    except jwt.PyJWTError:
        raise TokenError("malformed", "approval token is malformed") from None
    claims = _claims(payload)
    if claims.nbf > now + leeway:
        raise TokenError("not-yet-valid", f"approval token is not valid before {_iso(claims.nbf)}")
    if claims.exp <= now - leeway:
        raise TokenError("expired", f"approval token expired at {_iso(claims.exp)}")
    return claims


def _claims(p: Mapping[str, Any]) -> Claims:
    try:
        approvers = p["approvers"]
        if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
            raise TypeError("approvers")
        for k in ("sub", "jti", "target", "scope", "reason", "iss"):
            if not isinstance(p[k], str) or (k != "reason" and not p[k]):
                raise TypeError(k)
        for k in ("iat", "nbf", "exp"):
            if not isinstance(p[k], int) or isinstance(p[k], bool):
                raise TypeError(k)
        ms = p.get("max_sessions")
        if ms is not None and (not isinstance(ms, int) or isinstance(ms, bool) or ms < 1):
            raise TypeError("max_sessions")
        wl = p.get("workload")
        if wl is not None and (not isinstance(wl, dict) or not all(isinstance(v, str) for v in wl.values())):
            raise TypeError("workload")
        aud = p["aud"]
        aud_s = aud if isinstance(aud, str) else ",".join(aud)
        return Claims(
            p["sub"],
            p["jti"],
            p["target"],
            p["scope"],
            p["iat"],
            p["nbf"],
            p["exp"],
            p["reason"],
            tuple(approvers),
            p["iss"],
            aud_s,
            ms,
            wl,
        )
    except (TypeError, KeyError) as exc:
        raise TokenError("malformed", f"approval token claim {exc.args[0]!r} has the wrong type") from None


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def unverified_claims(token: str) -> dict[str, Any]:
    """Decode without verifying, for error messages and `token verify` output only."""
    try:
        return dict(jwt.decode(token, options={"verify_signature": False}))
    except (jwt.PyJWTError, UnicodeError):
        return {}
