"""Fixtures for the SSH front end: a gateway in front of the rig's sshd, tokens, OpenSSH and asyncssh clients."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import pytest

from gateway.config import Address, Config, Login, Target
from gateway.grants import Issued, issue_grant
from gateway.services import Services
from gateway.ssh import SshListener
from tests.rig.sshd import SshServer
from tests.threaded import OnLoop, serve_in_thread

T = TypeVar("T")
TARGET = "rig"
OTHER_TARGET = "rig-2"
BAD_KEY_TARGET = "rig-badkey"
USER = "alice"

POLICY = """
target: rig
scopes:
  ops:
    max_ttl: 1h
    ssh:
      detached: "off"   # the rig's login is shared by every test run on this machine (test_detached has its own)
      sftp: read-write
      commands:
        - {name: no-rm-rf, pattern: "rm -rf *", action: deny}
        - {name: passwd-touch, pattern: "*passwd*", action: alert}
        - {name: no-shutdown, pattern: "regex:^(shutdown|reboot|halt)\\\\b", action: kill}
        - {name: no-canary, pattern: "touch *canary-*", action: deny}
  readonly:
    max_ttl: 1h
    ssh:
      detached: "off"
      shell: false
      allowed_commands: ["cat *", "ls*", "sleep *", "echo *", "env", "true", "false", "id", "md5sum *",
                         {pattern: "head *", options: ["-c *"]}]
      sftp: read-only
      scp: true
  noscp:
    max_ttl: 1h
    ssh:
      detached: "off"
      scp: false
      sftp: "off"
  tunnel:
    max_ttl: 1h
    ssh:
      detached: "off"
      local_forwarding: true
"""
SCOPES = ("ops", "readonly", "noscp", "tunnel")

# Options for the stock OpenSSH client: only the token is offered, nothing from ~/.ssh is used.
SSH_OPTS = [
    "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "PubkeyAuthentication=no", "-o", "GSSAPIAuthentication=no", "-o", "IdentityAgent=none",
    "-o", "ConnectTimeout=10", "-o", "NumberOfPasswordPrompts=1",
]  # fmt: skip


@dataclass
class Gateway(OnLoop):
    """A gateway running in its own thread and event loop (uvloop, as in production)."""

    config: Config
    services: Services
    listener: SshListener
    sshd: SshServer
    loop: asyncio.AbstractEventLoop
    host: str = "127.0.0.1"

    async def grant(self, scope: str = "ops", *, ttl: float = 600, user: str = USER, target: str = TARGET,
                    now: float | None = None) -> Issued:  # fmt: skip
        """Issue a grant and its token."""
        svc = self.services
        return await self.run(issue_grant(self.config, svc.ring, svc.store, svc.policies, user=user, target=target,
                                          scope=scope, ttl=ttl, reason="TEST-1", approvers=("bob",),
                                          now=time.time() if now is None else now))  # fmt: skip

    async def token(self, scope: str = "ops", **kw: Any) -> str:
        """A fresh token for `scope`."""
        return (await self.grant(scope, **kw)).token

    @property
    def host_key_line(self) -> str:
        """The gateway's own host key (clients pin it)."""
        return self.config.ssh_host_key.with_name(self.config.ssh_host_key.name + ".pub").read_text().strip()

    async def connect(self, token: str, *, username: str = TARGET, **kw: Any) -> asyncssh.SSHClientConnection:
        """asyncssh through the gateway, the token as password, the gateway's host key pinned."""
        pinned = asyncssh.import_public_key(self.host_key_line)
        return await asyncssh.connect(
            self.host, self.port, username=username, password=token, known_hosts=([pinned], [], []),
            client_keys=None, agent_path=kw.pop("agent_path", None), config=None,
            preferred_auth=kw.pop("preferred_auth", "password"), connect_timeout=10, **kw,
        )  # fmt: skip

    def ssh(self, token: str, *args: str, user: str = TARGET, method: str = "keyboard-interactive",
            input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run the stock OpenSSH client through the gateway with sshpass answering the token prompt."""
        prompt = "Approval token" if method == "keyboard-interactive" else "assword"
        cmd = ["sshpass", "-P", prompt, "-p", token, "ssh", *SSH_OPTS, "-o", f"PreferredAuthentications={method}",
               "-p", str(self.port), f"{user}@{self.host}", *args]  # fmt: skip
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)

    def ssh_argv(self, *args: str, user: str = TARGET) -> list[str]:
        """An ssh command line for SSH_ASKPASS use."""
        return ["ssh", *SSH_OPTS, "-o", "PreferredAuthentications=keyboard-interactive", "-p", str(self.port),
                f"{user}@{self.host}", *args]  # fmt: skip

    def live(self) -> list[str]:
        return [s.id for s in self.services.registry.live()]

    async def events(self, session_id: str | None = None, types: tuple[str, ...] = ()) -> list[Any]:
        """Audit events (of one session)."""
        evs = await self.run(self.services.store.events(types=types))
        return [e for e in evs if session_id is None or e.session == session_id]

    async def session_record(self, session_id: str) -> Any:
        return await self.run(self.services.store.get_session(session_id))

    async def wait_closed(self, session_id: str, timeout: float = 30) -> Any:
        """Wait until the session's end is stored; returns its record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = await self.session_record(session_id)
            if rec is not None and rec.ended_at is not None:
                return rec
            await asyncio.sleep(0.05)
        raise AssertionError(f"session {session_id} did not end within {timeout} s")

    async def settle(self) -> Any:
        """Wait until the most recent session has ended (its audit events are all written by then)."""
        return await self.wait_closed((await self.last_session()).id)

    async def last_session(self, user: str = USER) -> Any:
        """The most recently started session."""
        sessions = await self.run(self.services.store.list_sessions())
        return max(sessions, key=lambda s: s.started_at)

    def recording_lines(self, path: str | Path) -> list[Any]:
        """An asciicast file, parsed line by line."""
        return [json.loads(line) for line in Path(path).read_text().splitlines()]


def make_config(base: Path, sshd: SshServer, *, warn_before: float = 1.5) -> Config:
    """A Config pointing at the rig's sshd; the gateway logs in with the rig's client key."""
    logins = {scope: Login(scope=scope, user=sshd.user, key_file=sshd.client_key_path) for scope in SCOPES}
    policies = base / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "rig.yaml").write_text(POLICY)
    addr = Address(sshd.host, sshd.port)
    target = Target(name=TARGET, kind="ssh", address=addr, logins=logins, host_key=sshd.host_key_line)
    other = Target(name=OTHER_TARGET, kind="ssh", address=addr, logins={"ops": logins["ops"]},
                   host_key=sshd.host_key_line)  # fmt: skip
    wrong_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
    bad = Target(name=BAD_KEY_TARGET, kind="ssh", address=addr, logins={"ops": logins["ops"]},
                 host_key=f"{wrong_key[0]} {wrong_key[1]}")  # fmt: skip
    return Config(
        path=None, base_dir=base, listen_ssh=Address("127.0.0.1", 0), store_url=f"sqlite:///{base}/gateway.db",
        keys_dir=base / "keys", policies_dir=policies, recordings_dir=base / "recordings",
        ssh_host_key=base / "keys" / "ssh_host_ed25519", preauth_timeout=3.0, warn_before=warn_before,
        targets={TARGET: target, OTHER_TARGET: other, BAD_KEY_TARGET: bad},
    )  # fmt: skip


@pytest.fixture(scope="session")
def gateway(sshd_server: SshServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One SSH gateway for the whole session, on uvloop in a thread of its own."""
    config = make_config(tmp_path_factory.mktemp("gw-ssh"), sshd_server)
    with serve_in_thread(config, SshListener, "gateway-ssh") as (services, listener, loop):
        yield Gateway(config, services, listener, sshd_server, loop)


def remote_pids(pattern: str) -> list[int]:
    """pids of processes whose command line contains `pattern` (the rig's sshd runs on this machine)."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture
def clean_env() -> Iterator[dict[str, str]]:
    """An environment for client subprocesses without the caller's SSH agent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    yield env
