"""After a session: end the processes it left running on the target (`setsid nohup ... &`), with a critical alert.

A revoked or expired session must not keep access through a process it detached. When a session ends,
the gateway logs in to the target again (its own key, the same login) and runs `SCRIPT` with `sh -s`.
The script lists the login's processes and keeps every one still *attached*: whose chain of parents
owned by the login ends at a process of another user that is an sshd (a live SSH connection: of the
gateway, another replica or anyone) or that it cannot see (hidepid). Detached ones (the chain ends at
pid 1, or at another visible non-sshd process: a cron daemon, a subreaper) are the candidates. A
candidate still carrying the `MARKER` variable of a session that is live is kept too (it belongs to
that session); the rest are reported and, in `kill` mode, sent SIGTERM and then SIGKILL.

What this cannot see: processes that changed user (setuid programs, `sudo -b`), other namespaces, and
anything scheduled rather than running (crontab, at, systemd user timers, authorized_keys changes).
"""

from __future__ import annotations

import asyncio
import getpass
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import asyncssh

from gateway.sessions import LiveSession
from gateway.ssh.upstream import UpstreamError, UpstreamLogin, connect_upstream

log = logging.getLogger(__name__)

MARKER = "LC_GATEWAY_SESSION"
"""Environment variable the gateway sets on every upstream channel: the session id (LC_* passes AcceptEnv)."""
SWEEP_TIMEOUT = 15.0
"""Bound on one sweep (login + script): a target that hangs cannot hold a session's end for long."""
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Output lines: "found PID MARKER ARGS..." (MARKER "-" when absent), "killed PID", "survived PID".
SCRIPT = r"""
mode=$1; shift
live=" $* "
uid=$(id -u)
detached() {
  ps -A -o pid= -o ppid= -o uid= -o stat= -o comm= 2>/dev/null | awk -v uid="$uid" '
    { pp[$1] = $2; ow[$1] = $3; st[$1] = $4; cm[$1] = $5; seen[$1] = 1 }
    END {
      for (p in seen) {
        if (ow[p] != uid || p == 1 || st[p] ~ /^Z/) continue  # a zombie runs nothing (and cannot be killed)
        top = p; n = 0
        while ((pp[top] in seen) && ow[pp[top]] == uid && n < 4096) { top = pp[top]; n++ }
        a = pp[top]
        if (a == 1 || a == 0 || ((a in seen) && cm[a] !~ /^sshd/)) print p
      }
    }'
}
marker() {
  tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | sed -n 's/^__MARKER__=//p' | head -n 1
}
round=0
while [ "$round" -lt 3 ]; do
  round=$((round + 1))
  victims=""
  for p in $(detached); do
    m=$(marker "$p")
    case "$live" in *" $m "*) [ -n "$m" ] && continue ;; esac
    a=$(ps -o args= -p "$p" 2>/dev/null) || continue
    echo "found $p ${m:--} $a"
    victims="$victims $p"
  done
  if [ -z "$victims" ]; then
    [ "$round" -ge 2 ] && break
    sleep 1
    continue
  fi
  [ "$mode" = kill ] || break
  kill -TERM $victims 2>/dev/null
  sleep 1
  for p in $victims; do
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null; echo "survived $p"; else echo "killed $p"; fi
  done
done
""".replace("__MARKER__", MARKER)


@dataclass(frozen=True, slots=True)
class Detached:
    """A process of the login that belonged to no live session."""

    pid: int
    marker: str  # the session id it carried ("" when none)
    args: str


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep found and did."""

    found: tuple[Detached, ...] = ()
    killed: tuple[int, ...] = ()  # ended by SIGTERM (or already gone)
    forced: tuple[int, ...] = ()  # needed SIGKILL


def parse_output(text: str) -> SweepResult:
    """The script's report (lines it does not know are ignored: a login's shell may print a banner)."""
    found: dict[int, Detached] = {}
    killed: list[int] = []
    forced: list[int] = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0] == "found" and parts[1].isdigit():
            pid, marker = int(parts[1]), "" if parts[2] == "-" else parts[2]
            found.setdefault(pid, Detached(pid, marker, parts[3] if len(parts) > 3 else ""))
        elif len(parts) == 2 and parts[1].isdigit() and parts[0] in ("killed", "survived"):
            (killed if parts[0] == "killed" else forced).append(int(parts[1]))
    return SweepResult(tuple(found.values()), tuple(dict.fromkeys(killed)), tuple(dict.fromkeys(forced)))


async def sweep(session: UpstreamLogin, live_ids: Iterable[str], *, kill: bool) -> SweepResult:
    """Log in again as the session's login and run the script; raises UpstreamError or asyncssh.Error."""
    ids = sorted({i for i in live_ids if _ID.match(i)})
    conn = await connect_upstream(session, limit=SWEEP_TIMEOUT / 2)
    async with conn:
        command = " ".join(["sh", "-s", "--", "kill" if kill else "report", *ids])
        r = await asyncio.wait_for(conn.run(command, input=SCRIPT, encoding="utf-8", errors="replace"),
                                   SWEEP_TIMEOUT)  # fmt: skip
    if r.exit_status not in (0, None):
        raise UpstreamError(f"process sweep exited with status {r.exit_status}: {str(r.stderr or '')[:200]}")
    return parse_output(str(r.stdout or ""))


def _is_loopback(host: str) -> bool:
    """Whether a target address is this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def own_account(session: UpstreamLogin) -> bool:
    """Whether the login is the account the gateway runs as, on this machine (a demo, a test as a normal user)."""
    return session.login.user == getpass.getuser() and _is_loopback(session.target.address.host)


async def reap_after(session: LiveSession, *, mode: str) -> None:
    """Run after a session's end is recorded: sweep the login, audit the outcome (one of ssh.detached,
    ssh.detached.none, ssh.detached.unchecked), alert on what was found or could not be checked."""
    if mode == "off":
        return
    target, login = session.target.name, session.login.user
    if own_account(session):
        # The gateway's own account (a demo or a test as a normal user): its detached processes are the
        # developer's tmux, agents and jobs, not a session's leftovers. Never sweep those.
        await session.audit(
            "ssh.detached.unchecked", severity="warning", reason="the login is the gateway's own account"
        )
        return
    live = {s.id for s in session.registry.live() if s.target.name == target and s.login.user == login}
    try:
        live.update(r.id for r in await session.store.list_sessions(target=target, live=True))
        result = await sweep(session, live - {session.id}, kill=mode == "kill")
    except Exception as exc:  # never raises: a failed check is itself audited
        if not isinstance(exc, (UpstreamError, asyncssh.Error, OSError, TimeoutError)):
            log.exception("session %s: detached-process sweep failed", session.id)
        why = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        await session.audit("ssh.detached.unchecked", severity="warning", reason=why)
        summary = f"could not check {login}@{target} for processes left by session {session.id}: {why}"
        await session.registry.alert(session, "ssh.detached.unchecked", summary, "warning", {"reason": why})
        return
    if not result.found:  # the audit shows the check ran (the end is already recorded)
        await session.audit("ssh.detached.none", login=login, mode=mode)
        return
    procs = [{"pid": d.pid, "args": d.args[:300], "session": d.marker or None} for d in result.found]
    ended = "ended" if mode == "kill" else "NOT ended (detached: alert)"
    await session.audit("ssh.detached", severity="critical", login=login, processes=procs, mode=mode,
                        killed=list(result.killed), forced=list(result.forced))  # fmt: skip
    summary = f"{len(procs)} process(es) of {login}@{target} outlived session {session.id} of {session.user}: {ended}"
    await session.registry.alert(session, "ssh.detached", summary, "critical", {"login": login, "processes": procs})
