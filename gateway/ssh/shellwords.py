"""What common commands do with their arguments: which ones run another command, a script, or read stdin.

Plain functions on argument lists (no syntax tree), shared by the shell analysis and the exec checks.
"""

from __future__ import annotations

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh", "fish", "csh", "tcsh",
                    "busybox"})  # fmt: skip
# Wrappers that run their first operand as a command: option letters that take a value (skipped with it).
WRAPPERS: dict[str, str] = {"sudo": "ugCDhpRrtU", "doas": "uC", "env": "uCS", "nohup": "", "exec": "a",
                            "command": "", "builtin": "", "time": "fo", "nice": "n", "ionice": "cnp", "setsid": "",
                            "timeout": "sk", "stdbuf": "ioe", "xargs": "aEeIiLlnPsd", "chroot": "",
                            "chrt": "", "taskset": "", "unbuffer": "", "watch": "nd", "strace": "eoOpsSuE",
                            "flock": "wE", "runuser": "ugG", "busybox": "", "caffeinate": "", "coproc": "",
                            "systemd-run": "puEM"}  # fmt: skip
# Commands whose -c VALUE is a script for a shell (su's login shell, script's, flock's).
SCRIPT_OPTION = frozenset({"su", "runuser", "script", "flock"})
# Shell options that take the next word as their value (so it is not the script's file name).
_SHELL_VALUE_OPTIONS = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})
_TAKES_OPERAND_FIRST = {"timeout": 1, "chroot": 1, "flock": 1, "taskset": 1, "chrt": 1}  # DURATION, dir, lock...


def find_execs(args: list[str]) -> list[list[str]]:
    """The commands of find's -exec/-execdir/-ok/-okdir actions."""
    out: list[list[str]] = []
    i = 0
    while i < len(args):
        if args[i] in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(args) and args[j] not in (";", "+"):
                j += 1
            if j > i + 1:
                out.append(args[i + 1 : j])
            i = j
        i += 1
    return out


def option_script(name: str, args: list[str]) -> str | None:
    """The VALUE of `-c VALUE` / `--command=VALUE` (su, runuser, script, flock), None when absent."""
    for i, a in enumerate(args):
        if a in ("-c", "--command") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--command="):
            return a.split("=", 1)[1]
        if a.startswith("-") and not a.startswith("--") and "c" in a[1:]:  # -c, -qc, -lcCMD
            at = a.index("c", 1)
            if at < len(a) - 1:
                return a[at + 1 :]
            return args[i + 1] if i + 1 < len(args) else None
    return None


def unwrap(name: str, args: list[str]) -> list[str]:
    """The command a wrapper runs (`sudo -u x cmd a` -> [cmd, a]); [] when it runs none."""
    takes = WRAPPERS.get(name, "")
    if name == "command" and any(a in ("-v", "-V") for a in args[:2]):
        return []  # command -v: a lookup, nothing runs
    i, n = 0, len(args)
    while i < n:
        a = args[i]
        if a == "--":
            i += 1
            break
        if name == "env" and "=" in a and not a.startswith("-"):
            i += 1
            continue
        if name == "env" and a in ("-S", "--split-string") and i + 1 < n:
            return args[i + 1].split() + args[i + 2 :]  # env -S 'cmd args': one word split into many
        if not a.startswith("-") or a == "-":
            break
        if a.startswith("--"):
            if "=" not in a and a[2:] in ("user", "group", "signal", "kill-after", "chdir", "unset", "split-string"):
                i += 1
        elif name in ("su", "runuser") and a[1:2] == "c":
            return []  # su -c STRING: the string is a script for the login shell
        elif len(a) == 2 and a[1] in takes:
            i += 1
        i += 1
    i += _TAKES_OPERAND_FIRST.get(name, 0)
    return args[i:] if i < n else []


def shell_script(base: str, args: list[str]) -> str | None:
    """The script of `sh -c SCRIPT ...` (None when the shell reads a file or stdin)."""
    if base == "busybox":
        return shell_script(args[0], args[1:]) if args and args[0] in SHELLS else None
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == "--" or not a.startswith(("-", "+")):
            return None
        if a in _SHELL_VALUE_OPTIONS:
            skip = True
        elif not a.startswith("--") and "c" in a[1:]:
            rest = args[i + 1 :]
            if rest and rest[0] == "--":
                rest = rest[1:]
            return rest[0] if rest else ""
    return None


def reads_stdin(base: str, args: list[str]) -> bool:
    """Whether a shell started with `args` reads its commands from stdin (no -c, no script file, or -s)."""
    if base == "busybox":
        return bool(args) and args[0] in SHELLS and reads_stdin(args[0], args[1:])
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--":
            return args[-1] == "--"
        if not a.startswith(("-", "+")):
            return False
        if a in _SHELL_VALUE_OPTIONS:
            skip = True
            continue
        if not a.startswith("--") and "s" in a[1:]:
            return True
        if not a.startswith("--") and "c" in a[1:]:
            return False
    return True
