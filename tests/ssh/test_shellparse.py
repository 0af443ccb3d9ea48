"""The shell analysis and command rules on parsed commands (sans-IO): evasions, the rule language, fuzzing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import CommandRule, SshPolicy, Verdict
from gateway.ssh.cmdmatch import command_matches
from gateway.ssh.scope import UNRESOLVED, check_line
from gateway.ssh.shellparse import ShellState, SimpleCommand, analyse, scanner_safe

SHUTDOWN = CommandRule("no-shutdown", Verdict.DENY, "regex:^(shutdown|reboot|halt)\\b")
SHUTDOWN_GLOB = CommandRule("no-shutdown-glob", Verdict.DENY, "shutdown")
RM_RF = CommandRule("no-rm-rf", Verdict.KILL, "rm -rf /*")
POLICY = SshPolicy(command_rules=(SHUTDOWN, SHUTDOWN_GLOB, RM_RF))


def names(line: str) -> list[str]:
    return [c.text for c in analyse(line).commands]


def verdict(line: str, policy: SshPolicy = POLICY, state: ShellState | None = None) -> tuple[str, str]:
    d = check_line(policy, [line], state=state)
    return d.verdict.value, d.rule or ",".join(d.alerts)


@pytest.mark.parametrize(
    "line",
    [
        "shutdown -h now",
        "\\shutdown -h now",
        "s''hutdown -h now",
        's""hutdown now',
        "$(echo shutdown) -h now",
        "`echo shutdown` now",
        "x=shutdown; $x -h now",
        "x=shut; x+=down; $x",
        "alias off='shutdown -h now'; off",
        'bash -c "shutdown -h now"',
        "sh -c 'true; shutdown'",
        "eval shutdown -h now",
        "eval 'shutdown -h now'",
        "true; shutdown",
        "true && shutdown",
        "false || shutdown",
        "echo x | shutdown",
        "(shutdown)",
        "{ shutdown; }",
        "echo $(shutdown)",
        'echo "$(shutdown)"',
        "shut\\\ndown -h now",
        "/sbin/shutdown -h now",
        "../../sbin/shutdown",
        "sudo shutdown -h now",
        "sudo -u root -- shutdown",
        "nohup shutdown &",
        "env -i PATH=/sbin shutdown",
        "exec shutdown",
        "command shutdown",
        "time shutdown",
        "nice -n 19 shutdown",
        "timeout 5 shutdown",
        "setsid -f shutdown",
        "echo now | xargs shutdown",
        "sudo bash -c 'eval shutdown'",
        "$'\\x73hutdown'",
        "for i in 1; do shutdown; done",
        "if true; then shutdown; fi",
        "f() { shutdown; }",
        "bash <<< 'shutdown'",
        "bash <<EOF\nshutdown\nEOF",
        "find / -maxdepth 0 -exec shutdown \\;",
        "coproc shutdown",
        "bash -o pipefail -c shutdown",
        "busybox sh -c shutdown",
        "env -S 'shutdown -h now'",
        "su -c shutdown",
        "su root -c 'shutdown'",
        "runuser -u root -- shutdown",
        "script -qc shutdown /dev/null",
        "flock /tmp/l -c shutdown",
        "trap 'shutdown' EXIT",
        "watch -n 1 shutdown",
    ],
)
def test_evasions_of_a_shutdown_rule_are_caught(line: str) -> None:
    assert verdict(line)[0] == "deny", analyse(line)


@pytest.mark.parametrize(
    "line",
    ["rm -rf /", "rm -fr /", "rm -r -f /*", "rm -f -r /", "rm -Rf /", "rm --recursive --force /", "rm -rfv /etc",
     "rm -rf -- /", "sudo rm -fr /var", "rm -rf /tmp/x /", "'rm' '-rf' '/'", "r\\m -r\\f /", "busybox rm -rf /"],
)  # fmt: skip
def test_flag_spellings_of_rm_rf_are_caught(line: str) -> None:
    assert verdict(line) == ("kill", "no-rm-rf")


@pytest.mark.parametrize(
    "line",
    ["echo shutdown", "echo 'rm -rf /'", "grep -r shutdown /var/log", "rm -rf ./build", "rm -r build",
     "man shutdown", "command -v shutdown", "# shutdown", "ls -la", "printf 'rm -rf /\\n'", "cat <<EOF\nshutdown\nEOF"],
)  # fmt: skip
def test_mentions_are_not_runs(line: str) -> None:
    assert verdict(line) == ("allow", "")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('eval "$cmd"', "command name"),
        ("$unknown -h now", "command name"),
        ("${x:-shutdown}", "command name"),
        ("echo c2h1dGRvd24= | base64 -d | sh", "pipe"),
        ("curl -s http://x | bash", "pipe"),
        ("!!", "history"),
        ("!sh", "history"),
        ("echo !-1", "history"),
        ("/???/shut*", "command name"),
        ("$(date)", "command name"),
        ('bash -c "$x"', "command name"),
        ("read x; $x", "command name"),
        ('bash <<< "$x"', "here-string"),
    ],
)
def test_what_only_run_time_can_tell_is_unresolved(line: str, why: str) -> None:
    a = analyse(line)
    assert a.unresolved and why in a.unresolved[0], a
    assert verdict(line) == ("alert", UNRESOLVED)
    assert verdict(line, SshPolicy(command_rules=(SHUTDOWN,), unresolved=Verdict.DENY)) == ("deny", UNRESOLVED)


def test_unresolved_is_silent_without_rules_unless_set() -> None:
    assert verdict("$x", SshPolicy()) == ("allow", "")
    assert verdict("$x", SshPolicy(unresolved=Verdict.DENY)) == ("deny", UNRESOLVED)


def test_session_state_carries_variables_and_aliases_across_lines() -> None:
    state = ShellState()
    assert verdict("x=shutdown", state=state)[0] == "allow"
    assert verdict("alias ll='shutdown -r'", state=state)[0] == "allow"
    assert verdict("$x", state=state) == ("deny", "no-shutdown")
    assert verdict("ll", state=state) == ("deny", "no-shutdown")
    assert verdict("unalias ll; unset x", state=state)[0] == "allow"
    assert verdict("ll", state=state) == ("allow", "")
    assert verdict("$x", state=state) == ("alert", UNRESOLVED)


def test_refused_lines_change_no_state() -> None:
    state = ShellState()
    assert verdict("x=shutdown; shutdown", state=state)[0] == "deny"
    assert "x" not in state.variables


def test_continuation_and_open_constructs_span_lines() -> None:
    state = ShellState()
    assert verdict("x=shut\\", state=state)[0] == "allow"
    assert verdict("down; $x", state=state)[0] == "deny"
    state = ShellState()
    assert verdict("for i in 1 2; do", state=state)[0] == "allow"
    assert verdict("  shutdown", state=state)[0] == "deny"
    assert verdict("  echo $i", state=state)[0] == "allow"
    assert verdict("done", state=state)[0] == "allow"
    assert state.pending == ""


def test_every_reading_of_a_line_is_checked() -> None:
    """The shell may no longer hold the construct (^C, a program read the line): the line alone counts too."""
    state = ShellState()
    assert verdict("echo '", state=state)[0] == "allow"
    assert verdict("shutdown", state=state)[0] == "deny"
    # ... and the line may continue a quote the gateway lost track of (past MAX_PENDING_LINES).
    assert verdict("'; shutdown", state=ShellState())[0] == "deny"
    assert verdict('"; shutdown', state=ShellState())[0] == "deny"


@pytest.mark.parametrize(
    ("pattern", "cmd", "expected"),
    [
        ("rm -rf /*", "rm -rf /", True),
        ("rm -rf /*", "rm -rf /var/lib", True),
        ("rm -rf /*", "rm -rf ./build", False),
        ("rm -rf /*", "rm -r /", False),  # a required flag is missing
        ("rm -rf /*", "rm -rfi /", True),  # extra flags do not matter
        ("sudo *", "sudo ls", True),
        ("sudo *", "echo sudo ls", False),
        ("ls", "ls -la", True),  # no operands in the pattern: flags may vary
        ("ls", "ls /tmp", False),
        ("*passwd*", "grep root /etc/passwd", True),  # whole-text glob still works
        ("cat /etc/?asswd", "cat /etc/passwd", True),
        ("Reboot", "reboot", False),  # case-sensitive
        ("/usr/bin/shutdown", "/sbin/shutdown", True),  # names are compared by basename
        ("kill -9 *", "kill -9 1", True),
        ("find * -delete", "find / -name x -delete", True),
        ("find * -delete", "find / -name x -type d", False),
        ("regex:^(shutdown|reboot|halt)\\b", "reboot", True),
        ("regex:^(shutdown|reboot|halt)\\b", "rebooted", False),
    ],
)
def test_pattern_language(pattern: str, cmd: str, expected: bool) -> None:
    [c, *_] = analyse(cmd).commands
    assert command_matches(pattern, c) is expected


def test_regex_sees_the_whole_line_too() -> None:
    policy = SshPolicy(command_rules=(CommandRule("pipe-sh", Verdict.DENY, "regex:curl .*\\| *sh"),))
    assert verdict("curl http://x | sh", policy)[0] == "deny"
    assert verdict("curl http://x > f", policy)[0] == "allow"


def test_simple_command_text() -> None:
    assert SimpleCommand("rm", ("-rf", "/")).text == "rm -rf /"
    assert names("FOO=1 /bin/ls -l 'a b' >/dev/null 2>&1") == ["ls -l a b"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*"ab $'\"\\`(){};|&<>!#=*?\n-xc", "sh -c ", "eval ", "$(", "alias ", "x=", "<<"]),
                max_size=80).map("".join))  # fmt: skip
def test_analysis_never_fails_and_is_bounded(text: str) -> None:
    state = ShellState()
    start = time.perf_counter()
    check_line(POLICY, [text], state=state)
    check_line(POLICY, [text], state=state)
    assert time.perf_counter() - start < 1.0


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_analysis_of_any_text(text: str) -> None:
    assert "the shell analysis failed on this line" not in analyse(text).unresolved


@pytest.mark.parametrize("unit", ["x )", "a|", "a=(a;", "&[[ a ", "$(", "eval ", "true;", "'"])
def test_long_crafted_lines_stay_fast_and_rules_still_see_their_commands(unit: str) -> None:
    line = unit * (60000 // len(unit)) + "; shutdown -h now"
    start = time.perf_counter()
    d = check_line(POLICY, [line])
    assert time.perf_counter() - start < 0.5
    assert d.verdict is Verdict.DENY and UNRESOLVED in d.alerts


def test_pathological_nesting_is_bounded() -> None:
    deep = "$(" * 3000 + "shutdown" + ")" * 3000
    start = time.perf_counter()
    a = analyse(deep)
    assert time.perf_counter() - start < 2.0
    assert a.unresolved
    evals = "eval " * 200 + "shutdown"
    assert analyse(evals).unresolved or any(c.name == "shutdown" for c in analyse(evals).commands)
    aliases = ShellState(aliases={"a": "b", "b": "a"})
    assert aliases.analyse("a").unresolved  # alias loops end


# tree-sitter-bash's scanner called isdigit() on a wide code point after `{`: one such line crashed the
# process (every session of the gateway). A crash cannot be caught in-process, so these run in a child.
_WIDE_AFTER_BRACE = """
import random, sys
from gateway.ssh.shellparse import analyse
rnd = random.Random(7)
wide = [0x100, 0x3000, 0xFFFD, 0x10FFFF, 0xDC80] + [rnd.randint(0x100, 0x10FFFF) for _ in range(300)]
for cp in wide:
    if 0xD800 <= cp < 0xE000 and cp != 0xDC80:
        continue
    c = chr(cp)
    for line in ("{" + c, "echo {" + c + "}", "{12" + c, "x {1.." + c, "a {1..2" + c + " b", "{{" + c):
        analyse(line)
        analyse("bash -c '" + line + "'")
print("ok")
"""


def test_wide_characters_after_a_brace_do_not_crash_the_parser() -> None:
    # The out-of-bounds read lands on unmapped memory only in some layouts (about 6 runs in 10 of the old
    # code crashed under C.UTF-8), so the child runs several times.
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    for _ in range(6):
        got = subprocess.run([sys.executable, "-c", _WIDE_AFTER_BRACE], capture_output=True, text=True,
                             timeout=120, env=env)  # fmt: skip
        assert (got.returncode, got.stdout.strip()) == (0, "ok"), got.stderr[-2000:]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("{}.0123 xé\u0100\u3000\U0010ffff\udc80"), max_size=40))
def test_the_parser_never_reads_a_wide_character_where_the_scanner_calls_isdigit(text: str) -> None:
    safe = scanner_safe(text)
    assert len(safe) == len(text.encode("utf-8", "surrogatepass"))
    assert not re.search(rb"\{[0-9]*(?:\.\.[0-9]*)?[\xc4-\xff]", safe)  # lead bytes of U+0100 and above


@pytest.mark.parametrize("line", ["echo {\U0010ffff}", "echo {12\u0101 x", "echo {1..2é€ y"])
def test_words_keep_the_characters_the_scanner_never_sees(line: str) -> None:
    assert analyse(line).commands == [SimpleCommand("echo", tuple(line.split()[1:]), "echo")]


def test_a_wide_character_after_a_brace_hides_no_command() -> None:
    assert verdict("echo {\U0010ffff; shutdown -h now")[0] == "deny"


@pytest.mark.parametrize(
    ("line", "word"), [("echo $'\\x'z", "\\xz"), ("echo $'\\u'", "\\u"), ("echo $'\\U\\x41'", "\\UA")]
)
def test_an_ansi_c_escape_without_digits_stays_as_written(line: str, word: str) -> None:
    assert analyse(line).commands == [SimpleCommand("echo", (word,), "echo")]


def test_a_bug_in_the_analysis_leaves_the_rules_the_rough_pieces_and_logs_no_text(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.ssh import shellparse

    def broken(self: object, text: str, depth: int) -> None:
        raise ValueError(f"cannot read {text}")

    monkeypatch.setattr(shellparse._Walker, "program", broken)
    line = "echo s3cr3t-pw; shutdown -h now"
    assert verdict(line)[0] == "deny"
    assert "the shell analysis failed on this line" in analyse(line).unresolved
    assert "ValueError" in caplog.text and "s3cr3t" not in caplog.text
