"""Shells without a terminal (`ssh -T`, `ssh host bash`): every stdin line is a command under the scope's rules."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.ssh.conftest import Gateway


def canary(gateway: Gateway) -> str:
    """A path on the target that only a command the policy denies would create."""
    return str(gateway.sshd.scratch_dir / f"canary-{random.randrange(10**9)}")


async def command_verdicts(gateway: Gateway, sid: str) -> dict[str, str]:
    return {e.data["line"]: e.data["verdict"] for e in await gateway.events(sid, types=("command",))}


@pytest.mark.parametrize("args", [("-T",), ("-T", "bash"), ("-T", "sh -s"), ("-T", "exec /bin/bash -l")])
async def test_denied_stdin_line_never_reaches_the_shell(gateway: Gateway, args: tuple[str, ...]) -> None:
    path = canary(gateway)
    script = f"echo before-$((1+1))\ntouch {path}\necho after-$((2+2))\n"
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), *args, input=script)
    rec = await gateway.settle()
    assert "before-2" in r.stdout and "after-4" in r.stdout, r.stderr
    assert "[gateway] blocked by policy: no-canary" in r.stderr
    assert not (gateway.sshd.scratch_dir / path).exists()
    verdicts = await command_verdicts(gateway, rec.id)
    assert verdicts[f"touch {path}"] == "deny"
    assert verdicts["echo before-$((1+1))"] == "allow" and verdicts["echo after-$((2+2))"] == "allow"


async def test_last_line_without_newline_is_decided_too(gateway: Gateway) -> None:
    path = canary(gateway)
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-T", input=f"echo one\ntouch {path}")
    rec = await gateway.settle()
    assert "one" in r.stdout and "no-canary" in r.stderr
    assert not (gateway.sshd.scratch_dir / path).exists()
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-T", input="echo last-$((1+1))")
    assert "last-2" in r.stdout
    assert (await command_verdicts(gateway, rec.id))[f"touch {path}"] == "deny"


async def test_kill_rule_on_stdin_ends_the_session_and_stops_what_follows(gateway: Gateway) -> None:
    path = canary(gateway)
    # The killing line and the one after it arrive in one write: the second must never run.
    script = f"echo alive\nshutdown -h now\ntouch {path.replace('canary-', 'after-kill-')}\n"
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-T", input=script)
    rec = await gateway.settle()
    assert "kill rule no-shutdown" in rec.end_reason
    assert not (gateway.sshd.scratch_dir / path.replace("canary-", "after-kill-")).exists()
    assert "blocked by policy: no-shutdown" in r.stderr


async def test_alert_rule_on_stdin_raises_an_alert(gateway: Gateway) -> None:
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-T", input="grep -c root /etc/passwd\n")
    rec = await gateway.settle()
    assert r.stdout.strip() == "1"
    alerts = await gateway.events(rec.id, types=("alert.ssh.command",))
    assert [a.data["rule"] for a in alerts] == ["passwd-touch"]


async def test_exec_command_itself_is_checked(gateway: Gateway) -> None:
    path = canary(gateway)
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), f"touch {path}")
    assert r.returncode != 0 and "no-canary" in r.stderr
    assert not (gateway.sshd.scratch_dir / path).exists()


async def test_exec_of_a_non_shell_passes_stdin_untouched(gateway: Gateway) -> None:
    data = "touch /tmp/canary-data-line\nno newline at the end"
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "cat", input=data)
    assert r.stdout == data


EVASIONS = [
    "t''ouch {}",
    "\\touch {}",
    "/usr/bin/touch {}",
    "x=touch; $x {}",
    "$(echo touch) {}",
    'bash -c "touch {}"',
    "eval touch {}",
    "true; touch {}",
    "tou\\\nch {}",
    "env nohup touch {}",
]


@pytest.mark.parametrize("tty", [False, True], ids=["stdin", "pty"])
async def test_evasions_are_refused_through_real_ssh(gateway: Gateway, tty: bool) -> None:
    paths = [canary(gateway) for _ in EVASIONS]
    lines = [e.format(p) for e, p in zip(EVASIONS, paths, strict=True)]
    # The blank line ends the refused continuation (`tou\` + `ch X`) in both the shell and the gateway.
    script = "".join(line + "\n" + ("\n" if "\\\n" in line else "") for line in lines)
    script += "echo done-$((3*3))\n" + ("exit\n" if tty else "")
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-tt" if tty else "-T", input=script)
    rec = await gateway.settle()
    assert "done-9" in r.stdout, (r.stdout, r.stderr)
    assert [p for p in paths if (gateway.sshd.scratch_dir / p).exists()] == []
    events = await gateway.events(rec.id, types=("command",))
    denied = [e.data["line"] for e in events if e.data["verdict"] == "deny"]
    assert len(denied) == len(lines), "\n".join(f"{e.data['verdict']} {e.data['line'][:25]!r}" for e in events)


async def test_unresolved_line_raises_an_alert(gateway: Gateway) -> None:
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-T", input="echo ZWNobyBoaQo= | base64 -d | sh\n")
    rec = await gateway.settle()
    assert r.stdout.strip() == "hi"
    alerts = await gateway.events(rec.id, types=("alert.ssh.command",))
    assert [a.data["rule"] for a in alerts] == ["unresolved"]


async def test_a_line_that_crashed_the_bash_scanner_is_judged_and_the_gateway_lives_on(gateway: Gateway) -> None:
    # `{` then a code point above U+00FF crashed tree-sitter-bash (isdigit on a wide character), taking
    # down the gateway process and every session on it; the next session proves the process is alive.
    path = canary(gateway)
    line = "echo {\U0010ffff}"
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-T", input=f"{line}\ntouch {path}\n")
    rec = await gateway.settle()
    assert "{\U0010ffff}" in r.stdout and "no-canary" in r.stderr
    assert (await command_verdicts(gateway, rec.id))[line] == "allow"
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "echo {12\u0101..3}; echo alive")
    assert "alive" in r.stdout, r.stderr


async def test_an_escape_without_its_digits_is_read_as_bash_reads_it(gateway: Gateway) -> None:
    # `$'\x'` once raised out of the analysis (int('', 16)); bash keeps such an escape as written.
    path = canary(gateway)
    r = await asyncio.to_thread(gateway.ssh, await gateway.token(), "-T", input=f"echo $'\\x'z\ntouch {path}\n")
    rec = await gateway.settle()
    assert r.stdout.strip() == "\\xz" and "no-canary" in r.stderr
    assert (await command_verdicts(gateway, rec.id))["echo $'\\x'z"] == "allow"
