"""The lingering-access sweep for SSH: each injected login's detached processes that no live session owns.

The end-of-session sweep (gateway/ssh/reaper.py) ends what a session detached when it ends; this pass runs
the same script every `[detection] sweep_every` seconds, so what that one could not reach (a target down
at the session's end, a replica that died before its sessions ended, a process the login started outside
the gateway) is still found. A process carrying the marker of a session that has ended is a revocation,
expiry or kill that did not end the upstream side (critical); one with no live session's marker is the
login used outside the gateway (critical). Each is ended as the login's scopes say (`detached: kill`, or
only reported: `alert`), audited as a `detection` event and alerted. What the script cannot see: reaper.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import asyncssh

from gateway.config import Config, Login, Target
from gateway.detect.engine import Detector
from gateway.detect.model import Detection
from gateway.detect.sweep import ENDED_SESSION_PROCESS, UNOWNED_PROCESS
from gateway.policy import Policies
from gateway.ssh.reaper import Detached, SweepResult, own_account, sweep
from gateway.ssh.upstream import UpstreamError

log = logging.getLogger(__name__)

_STRICTNESS = {"off": 0, "alert": 1, "kill": 2}


@dataclass(frozen=True, slots=True)
class Destination:
    """A target and one of its logins (what reaper.sweep logs in as)."""

    target: Target
    login: Login


def judge(target: str, login: str, d: Detached, ended: Mapping[str, tuple[str, str]], *, outcome: str) -> Detection:
    """The detection for one process the sweep found (pure); `ended` maps an ended session to (user, reason)."""
    what = f"process {d.pid} ({d.args[:120]!r}) of {login}@{target}"
    if d.marker in ended:
        user, reason = ended[d.marker]
        why = f"session {d.marker} of {user} on {target} ended ({reason}) but {what} was still running; {outcome}"
        return Detection(ENDED_SESSION_PROCESS, "critical", why, user, target, d.marker)
    why = f"{what} belongs to no live gateway session (the login used outside the gateway?); {outcome}"
    return Detection(UNOWNED_PROCESS, "critical", why, "gateway", target)


class SshSweeper:
    """The periodic sweep over every SSH target's injected logins; `once(now)` is one pass."""

    def __init__(
        self, config: Config, policies: Policies, detector: Detector, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.policies = policies
        self.detector = detector
        self.clock = clock

    def mode(self, target: Target, login: Login) -> str:
        """The strictest `detached` setting of the scopes that use this login (off: not swept)."""
        modes = ["off"]
        for scope, lg in target.logins.items():
            p = self.policies.scope(target.name, scope)
            if lg.user == login.user and p is not None and p.ssh is not None:
                modes.append(p.ssh.detached)
        return max(modes, key=lambda m: _STRICTNESS.get(m, 0))

    async def once(self, now: float | None = None) -> list[Detection]:
        """Sweep every swept login of every SSH target once; report what was found."""
        now = self.clock() if now is None else now
        store = self.detector.store
        live = {r.id for r in await store.list_sessions(live=True)}
        recent = await store.list_sessions(live=False, since=now - 7 * 86_400)
        ended = {r.id: (r.user, r.end_reason or "ended") for r in recent}
        found: list[Detection] = []
        seen: set[tuple[str, int, str]] = set()
        for target in self.config.targets.values():
            if target.kind != "ssh":
                continue
            for login in target.logins.values():
                where = (target.address.host, target.address.port, login.user)
                mode = self.mode(target, login)
                if where in seen or mode == "off" or own_account(Destination(target, login)):
                    continue
                seen.add(where)
                found += await self._one(Destination(target, login), live, ended, mode)
        return found

    async def _one(
        self, dest: Destination, live: set[str], ended: Mapping[str, tuple[str, str]], mode: str
    ) -> list[Detection]:
        target, login = dest.target.name, dest.login.user
        try:
            result = await sweep(dest, live, kill=mode == "kill")
        except (UpstreamError, asyncssh.Error, OSError, TimeoutError) as exc:
            why = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            await self.detector.alerts.emit(
                "detection.sweep_unchecked", f"could not sweep {login}@{target} for lingering processes: {why}",
                severity="warning", target=target, data={"login": login},
            )  # fmt: skip
            return []
        out = []
        for d in result.found:
            det = judge(target, login, d, ended, outcome=_outcome(d.pid, result, mode))
            extra = {"pid": d.pid, "login": login, "terminated": d.pid in result.killed or d.pid in result.forced}
            await self.detector.emit(det, data=extra)
            out.append(det)
        return out


def _outcome(pid: int, result: SweepResult, mode: str) -> str:
    if pid in result.killed:
        return "terminated"
    if pid in result.forced:
        return "killed (SIGKILL)"
    return "NOT terminated" if mode == "kill" else "alert only (detached: alert)"
