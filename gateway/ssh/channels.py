"""Session channel requests asyncssh would handle on its own (agent, X11): refused here, and audited."""

from __future__ import annotations

from typing import Any, cast

import asyncssh

from gateway.sessions import LiveSession


class AuditedChannel(asyncssh.SSHServerChannel[bytes]):
    """An SSHServerChannel whose agent and X11 forwarding requests are refused and audited.

    asyncssh answers these requests inside the channel, with no application hook, and its server
    grants agent forwarding by default. The listener disables both at the connection level; this
    subclass adds the audit record (and a second refusal). No new state: it is adopted by swapping
    ``__class__`` on the channel asyncssh built, so asyncssh's constructor stays its own business.
    """

    _gw_session: LiveSession

    @classmethod
    def adopt(cls, chan: asyncssh.SSHServerChannel[bytes], session: LiveSession) -> AuditedChannel:
        """Turn a channel made by ``create_server_channel`` into an audited one."""
        chan.__class__ = cls
        audited = cast(AuditedChannel, chan)
        audited._gw_session = session
        return audited

    # asyncssh reports a handler's bool result itself (SSHChannel._service_next_request); its own
    # agent handler returns None only because it answers later, from a task.
    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: Any) -> bool:  # type: ignore[override]
        """ssh -A: the engineer's agent is never exposed to the target."""
        packet.check_end()
        self._gw_session.audit_soon("ssh.forward", severity="warning", kind="agent", allowed=False)
        return False

    def _process_x11_req_request(self, packet: Any) -> bool:
        """ssh -X / -Y: refused."""
        self._gw_session.audit_soon("ssh.forward", severity="warning", kind="x11", allowed=False)
        return False
