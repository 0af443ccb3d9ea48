"""asyncssh's internals that gateway/ssh/asyncssh_compat.py overrides: fails loudly when an upgrade changes them."""

from __future__ import annotations

import importlib.metadata

from gateway.ssh import asyncssh_compat
from gateway.ssh.asyncssh_compat import AGENT_HANDLER, X11_HANDLER, AuditedChannel, check_internals


def test_asyncssh_internals_are_as_expected() -> None:
    problems = check_internals()
    assert problems == [], (
        f"asyncssh {importlib.metadata.version('asyncssh')} changed what {asyncssh_compat.__name__} relies on: "
        f"{problems}; agent/X11 requests would no longer be audited. Look for a public hook, or adapt the overrides."
    )


def test_the_overrides_replace_asyncssh_handlers() -> None:
    for name in (AGENT_HANDLER, X11_HANDLER):
        assert name in vars(AuditedChannel), name  # defined here, so asyncssh's own is not what runs


def test_check_names_what_changed(monkeypatch: object) -> None:
    import asyncssh
    import pytest

    mp = pytest.MonkeyPatch()
    try:
        mp.delattr(asyncssh.SSHServerChannel, X11_HANDLER)
        mp.setattr(asyncssh.SSHServerChannel, AGENT_HANDLER, lambda self, packet, extra: None)
        problems = check_internals()
    finally:
        mp.undo()
    assert any("_process_x11_req_request is gone" in p for p in problems), problems
    assert any("expected (self, packet)" in p for p in problems), problems
