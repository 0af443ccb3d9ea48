"""The API's JSON views of requests and grants."""

from __future__ import annotations

import time
from typing import Any

from gateway.control.rules import EXPIRED, is_stale
from gateway.store import GrantRecord, RequestRecord


def request_json(req: RequestRecord, *, needs: int | None = None, now: float | None = None) -> dict[str, Any]:
    """The API view of a request."""
    now = time.time() if now is None else now
    return {
        "id": req.id,
        "requester": req.requester,
        "target": req.target,
        "scope": req.scope,
        "reason": req.reason,
        "ttl": req.ttl,
        "state": EXPIRED if is_stale(req, now) else req.state,
        "created_at": req.created_at,
        "expires_at": req.expires_at,
        "approvals": [dict(a) for a in req.approvals],
        "approvals_needed": needs,
        "decided_at": req.decided_at,
        "decided_by": req.decided_by,
        "comment": req.comment,
        "grant": req.grant_id,
        "workload": req.workload,
    }


def grant_json(g: GrantRecord) -> dict[str, Any]:
    """The API view of a grant (never its token)."""
    return {
        "id": g.id,
        "user": g.user,
        "target": g.target,
        "scope": g.scope,
        "reason": g.reason,
        "approvers": list(g.approvers),
        "issued_at": g.issued_at,
        "not_before": g.not_before,
        "expires_at": g.expires_at,
        "state": g.state,
        "break_glass": g.break_glass,
        "request": g.request_id,
        "max_sessions": g.max_sessions,
        "revoked_at": g.revoked_at,
        "revoked_by": g.revoked_by,
        "revoke_reason": g.revoke_reason,
        "workload": g.workload,
    }
