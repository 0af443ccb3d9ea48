"""Signed termination receipts: when a session ends, a JWS (the gateway key, verifiable with the JWKS) says what it was.

A receipt is not an approval token: it has no `aud`, `nbf` or `exp`, and its `typ` is RECEIPT_TYP, so
verify_token (which requires those claims) refuses it at every door.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import jwt

from gateway.sessions import SessionEnd
from gateway.store import SessionRecord, Store
from gateway.tokens import ALGORITHM, KeyRing

log = logging.getLogger(__name__)

RECEIPT_TYP = "gateway-receipt+jwt"
RECEIPT_EVENT = "session.receipt"
REQUIRED = ("iss", "jti", "iat", "session", "grant", "user", "target", "scope", "started_at", "ended_at", "audit")


class ReceiptError(Exception):
    """A receipt does not verify; str() says why."""


class ReceiptIssuer:
    """Issue one receipt per ended session: built from the store's records, signed, kept in the audit chain."""

    def __init__(self, store: Store, ring: KeyRing, *, issuer: str, origin: str) -> None:
        self.store = store
        self.ring = ring
        self.issuer = issuer
        self.origin = origin

    def __repr__(self) -> str:
        return f"ReceiptIssuer({self.issuer!r})"

    async def on_session_end(self, end: SessionEnd) -> None:
        """The session-end listener: never raises (a receipt that cannot be made is logged, the end stands)."""
        try:
            record = await self.store.get_session(end.session.id)
            if record is None:
                raise ReceiptError(f"session {end.session.id} is not in the store")
            await self.issue(record)
        except Exception as exc:
            log.error("session %s: no receipt: %s", end.session.id, type(exc).__name__)

    async def issue(self, record: SessionRecord) -> str:
        """Sign the receipt of an ended session and append it to the audit log (`session.receipt`)."""
        events = await self.store.events(session=record.id)
        end = next((e for e in reversed(events) if e.type == "session.end"), None)
        if end is None or record.ended_at is None:
            raise ReceiptError(f"session {record.id} has not ended")
        kill = next((e for e in reversed(events) if e.type == "session.kill"), None)
        grant = await self.store.get_grant(record.grant_id)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "jti": f"rcpt_{record.id}",
            "iat": int(time.time()),
            "session": record.id,
            "grant": record.grant_id,
            "request": grant.request_id if grant else None,
            "user": record.user,
            "workload": grant.workload if grant else None,
            "target": record.target,
            "scope": record.scope,
            "protocol": record.protocol,
            "client": record.client_addr,
            "approvers": list(grant.approvers) if grant else [],
            "reason": grant.reason if grant else "",
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            "end_reason": record.end_reason,
            # Who ended it: the revoker or killer (the kill event's actor), else the client or the clock.
            "ended_by": kill.actor if kill is not None else "client",
            "counts": record.stats,
            "recording_sha256": record.recording_sha256,
            "audit": {"origin": self.origin, "seq": end.seq, "hash": end.hash},
        }
        receipt = self.ring.sign_jws(claims, RECEIPT_TYP)
        await self.store.append(
            RECEIPT_EVENT,
            actor="gateway",
            session=record.id,
            grant=record.grant_id,
            target=record.target,
            data={"receipt": receipt, "kid": self.ring.active_kid, "end_seq": end.seq},
        )
        return receipt


async def stored_receipt(store: Store, session_id: str) -> str | None:
    """The receipt of a session, as the audit log keeps it (None: live, or ended before receipts existed)."""
    for e in reversed(await store.events(session=session_id, types=[RECEIPT_EVENT])):
        value = e.data.get("receipt")
        if isinstance(value, str):
            return value
    return None


def verify_receipt(receipt: str, ring: KeyRing, *, issuer: str | None = None) -> dict[str, Any]:
    """The claims of a receipt signed by one of `ring`'s keys; ReceiptError for anything altered or foreign."""
    receipt = receipt.strip()
    try:
        header = jwt.get_unverified_header(receipt)
    except (jwt.PyJWTError, UnicodeError):
        raise ReceiptError("not a receipt (not a JWS)") from None
    if header.get("alg") != ALGORITHM:
        raise ReceiptError(f"algorithm {header.get('alg')!r} is not the gateway's (EdDSA)")
    if header.get("typ") != RECEIPT_TYP:
        raise ReceiptError(f"typ {header.get('typ')!r} is not {RECEIPT_TYP}: not a receipt")
    kid = header.get("kid")
    key = ring.public_key(kid) if isinstance(kid, str) else None
    if key is None:
        raise ReceiptError(f"signed by key {kid!r}, which is not in the given keys")
    try:
        claims: dict[str, Any] = jwt.decode(
            receipt,
            key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={"require": list(REQUIRED), "verify_aud": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError:
        raise ReceiptError("the signature does not match the content (altered)") from None
    except jwt.InvalidIssuerError:
        raise ReceiptError("issued by another gateway") from None
    except jwt.MissingRequiredClaimError as exc:
        raise ReceiptError(f"the receipt lacks {exc.claim!r}") from None
    except jwt.PyJWTError:
        raise ReceiptError("malformed receipt") from None
    return claims


def describe(claims: Mapping[str, Any]) -> str:
    """One line: whose session, where, how it ended."""
    end = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(claims["ended_at"])))
    counts = claims.get("counts") or {}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if isinstance(v, int | float)) or "no counts"
    return (
        f"session {claims['session']} of {claims['user']} on {claims['target']}/{claims['scope']} "
        f"(grant {claims['grant']}), ended {end}: {claims.get('end_reason')} (by {claims.get('ended_by')}); "
        f"{shown}; recording sha256 {claims.get('recording_sha256') or '-'}; audit #{claims['audit']['seq']}"
    )
