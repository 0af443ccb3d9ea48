"""The workflow's rules as plain values, and the store-backed workflow with the clock passed in."""

from __future__ import annotations

import pytest

from gateway.alerts import Alerts
from gateway.config import Config
from gateway.control.caller import Caller
from gateway.control.errors import WorkflowError
from gateway.control.rules import approver_refusal, check_create, may_view_request
from gateway.control.workflow import Workflow
from gateway.policy import ApprovalRule, ScopePolicy
from gateway.services import build_services
from gateway.store import RequestRecord

ALICE = Caller("alice", frozenset({"engineers"}))
BOB = Caller("bob", frozenset({"engineers"}))
CAROL = Caller("carol", frozenset({"dba"}))
ERIN = Caller("erin", frozenset({"admins"}), admin=True)
REQ = RequestRecord("r_1", "alice", "orders-db", "write", "INC", 600.0, 0.0, expires_at=100.0)


def test_nobody_approves_their_own_request() -> None:
    anyone = ScopePolicy("read")
    assert approver_refusal(REQ, anyone, ALICE) == "nobody approves their own request"
    assert approver_refusal(REQ, anyone, BOB) is None
    # even when the requester is named as an approver
    named = ScopePolicy("read", approvals=ApprovalRule(1, frozenset({"alice"})))
    assert approver_refusal(REQ, named, ALICE) == "nobody approves their own request"


def test_approvers_from_groups_and_users() -> None:
    dba = ScopePolicy("write", approvals=ApprovalRule(2, frozenset({"bob"}), frozenset({"dba"})))
    assert approver_refusal(REQ, dba, CAROL) is None
    assert approver_refusal(REQ, dba, BOB) is None
    refusal = approver_refusal(REQ, dba, ERIN)
    assert refusal is not None and "user bob, group dba" in refusal  # admins are not approvers by default


def test_visibility_rules() -> None:
    dba = ScopePolicy("write", approvals=ApprovalRule(1, frozenset(), frozenset({"dba"})))
    assert may_view_request(REQ, dba, ALICE)
    assert may_view_request(REQ, dba, CAROL)
    assert may_view_request(REQ, dba, ERIN)
    assert not may_view_request(REQ, dba, BOB)


def test_check_create(config: Config) -> None:
    from gateway.services import load_policies

    policies = load_policies(config)
    assert check_create(config, policies, ALICE, "orders-db", "read", 900, "INC").name == "read"
    for args, code in [
        (("orders-db", "read", 900, ""), "invalid"),
        (("orders-db", "read", 7200, "INC"), "invalid"),
        (("orders-db", "read", 0, "INC"), "invalid"),
        (("orders-db", "read", 900, "x" * 501), "invalid"),
        (("nope", "read", 900, "INC"), "invalid"),
        (("orders-db", "root", 900, "INC"), "invalid"),
    ]:
        with pytest.raises(WorkflowError) as exc:
            check_create(config, policies, ALICE, *args)
        assert exc.value.code == code
    with pytest.raises(WorkflowError) as exc:
        check_create(config, policies, Caller("mallory", frozenset({"contractors"})), "orders-db", "read", 900, "x")
    assert exc.value.code == "forbidden"


async def test_expired_request_cannot_be_approved(config: Config) -> None:
    svc = await build_services(config)
    try:
        wf = Workflow(config, svc.ring, svc.store, svc.policies, Alerts(svc.store), request_timeout=60)
        req = await wf.create(ALICE, target="orders-db", scope="read", ttl=600, reason="INC", now=1000.0)
        with pytest.raises(WorkflowError) as exc:
            await wf.approve(BOB, req.id, comment="", now=1060.0)
        assert exc.value.code == "conflict" and "already expired" in exc.value.message
        stored = await svc.store.get_request(req.id)
        assert stored is not None and stored.state == "expired" and stored.grant_id is None
        assert await svc.store.list_grants() == []
        assert await svc.store.events(types=["request.expired"])
    finally:
        await svc.close()


async def test_expire_stale_sweeps_only_old_pending(config: Config) -> None:
    svc = await build_services(config)
    try:
        wf = Workflow(config, svc.ring, svc.store, svc.policies, Alerts(svc.store), request_timeout=60)
        old = await wf.create(ALICE, target="orders-db", scope="read", ttl=600, reason="a", now=1000.0)
        new = await wf.create(ALICE, target="orders-db", scope="read", ttl=600, reason="b", now=1050.0)
        assert await wf.expire_stale(1070.0) == [old.id]
        assert (await wf.load(new.id, ALICE, 1070.0)).state == "pending"
    finally:
        await svc.close()


async def test_concurrent_replicas_issue_one_grant(config: Config) -> None:
    """Two replicas (two workflows, one store) approving at once: one grant, the loser is told to retry."""
    svc = await build_services(config)
    try:
        a = Workflow(config, svc.ring, svc.store, svc.policies, Alerts(svc.store))
        b = Workflow(config, svc.ring, svc.store, svc.policies, Alerts(svc.store))
        req = await a.create(ALICE, target="orders-db", scope="read", ttl=600, reason="INC", now=1000.0)
        stale = await svc.store.get_request(req.id)
        assert stale is not None
        await a.approve(BOB, req.id, comment="", now=1001.0)
        # b decided on the stale copy; its compare-and-set must fail and its grant be withdrawn
        with pytest.raises(WorkflowError) as exc:
            await b._grant(stale, stale, actor="carol", approvers=("carol",), now=1001.0)
        assert exc.value.code == "conflict"
        grants = await svc.store.list_grants()
        assert sorted(g.state for g in grants) == ["active", "revoked"]
        final = await svc.store.get_request(req.id)
        assert final is not None and final.decided_by == "bob"
    finally:
        await svc.close()
