"""Command rules matched against parsed simple commands (sans-IO; the rule language is in the README).

A glob pattern is split into words like a command (quotes removed): NAME, then FLAGS (words starting
with `-`), then OPERAND globs. A simple command matches when

* its name (basename of the command word) matches NAME (a glob; NAME's own directory is ignored),
* it has every flag of the pattern: `-rf` is satisfied by `-rf`, `-fr`, `-r -f`, `-Rf`,
  `--recursive --force` (short flags as a set; long names and synonyms per command in `SYNONYMS`),
  extra flags do not matter,
* its operands (non-flag words, everything after `--`) joined by single spaces match the pattern's
  operand globs joined by single spaces (`*` spans words; no operands in the pattern: none in the command),

or when its canonical text (name and arguments joined by single spaces) matches the whole pattern
as a glob (so `*passwd*` still catches `grep root /etc/passwd`). `regex:` patterns are searched in
each simple command's canonical text and in the whole line, by RE2 (gateway/linearre.py: linear time).
"""

from __future__ import annotations

import fnmatch
import shlex
from dataclasses import dataclass
from functools import lru_cache

from gateway import linearre
from gateway.linearre import LinearPattern
from gateway.policy import CommandRule
from gateway.ssh.shellparse import Analysis, SimpleCommand

# Per command: spellings that mean the same flag (long options and upper/lower-case twins).
SYNONYMS: dict[str, dict[str, str]] = {
    "rm": {"R": "r", "--recursive": "r", "--force": "f", "--dir": "d", "--verbose": "v", "--interactive": "i"},
    "cp": {"r": "R", "--recursive": "R", "--force": "f", "--archive": "a"},
    "chmod": {"--recursive": "R", "--verbose": "v"},
    "chown": {"--recursive": "R", "--verbose": "v"},
    "chgrp": {"--recursive": "R"},
    "shutdown": {"--halt": "H", "--poweroff": "P", "--reboot": "r"},
    "kill": {"--signal": "s"},
    "mkfs": {},
    "dd": {},
    "find": {},
}


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled command pattern."""

    regex: LinearPattern | None  # RE2 (gateway/linearre); None for a glob
    name: str = ""
    flags: tuple[str, ...] = ()  # each flag word of the pattern, normalised
    operands: str = ""
    text: str = ""  # the whole pattern as a glob over a command's canonical text


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Pattern:
    """Parse a rule's pattern once (policies are validated at load, so this does not fail)."""
    if pattern.startswith("regex:"):
        return Pattern(linearre.cached(pattern[len("regex:") :]))
    try:
        words = shlex.split(pattern)
    except ValueError:
        words = pattern.split()
    if not words:
        return Pattern(None, name="\0")  # matches nothing
    name = words[0].rsplit("/", 1)[-1] or words[0]
    _, operands = split_flags(name, words[1:])
    rest = words[1 : words.index("--")] if "--" in words[1:] else words[1:]
    flags = tuple(w for w in rest if w.startswith("-") and len(w) > 1)
    return Pattern(None, name, flags, " ".join(operands), " ".join([name, *words[1:]]))


def split_flags(name: str, args: list[str] | tuple[str, ...]) -> tuple[set[str], list[str]]:
    """A command's flags (normalised) and operands, getopt-style: flags may come anywhere before `--`."""
    syn = SYNONYMS.get(name, {})
    flags: set[str] = set()
    operands: list[str] = []
    done = False
    for a in args:
        if done or a == "-" or not a.startswith("-") or len(a) < 2:
            operands.append(a)
        elif a == "--":
            done = True
        elif a.startswith("--"):
            long = a.split("=", 1)[0]
            flags.add(syn.get(long, long))
        else:
            flags.add(a)  # the whole word too: find's `-delete`, `-exec`
            flags.update(syn.get(c, c) for c in a[1:])
    return flags, operands


def _pattern_flag_ok(flag: str, have: set[str], name: str) -> bool:
    """One pattern flag word: present as written, or all of its letters present (`-rf` = `-r -f`)."""
    syn = SYNONYMS.get(name, {})
    if flag.startswith("--"):
        long = flag.split("=", 1)[0]
        return syn.get(long, long) in have
    return flag in have or all(syn.get(c, c) in have for c in flag[1:])


def command_matches(pattern: str, cmd: SimpleCommand) -> bool:
    """Whether one simple command matches a glob or `regex:` pattern."""
    p = compile_pattern(pattern)
    text = cmd.text
    if p.regex is not None:
        return p.regex.search(text) is not None
    if fnmatch.fnmatchcase(text, p.text):
        return True
    if not fnmatch.fnmatchcase(cmd.name, p.name):
        return False
    flags, operands = split_flags(cmd.name, cmd.args)
    if not all(_pattern_flag_ok(f, flags, cmd.name) for f in p.flags):
        return False
    return fnmatch.fnmatchcase(" ".join(operands), p.operands)


def rule_matches(rule: CommandRule, analysis: Analysis, line: str) -> bool:
    """Whether a rule matches any simple command of the analysed line (or, for `regex:`, the whole line)."""
    p = compile_pattern(rule.pattern)
    if any(command_matches(rule.pattern, c) for c in analysis.commands):
        return True
    if p.regex is not None:
        return any(p.regex.search(t.strip()) is not None for t in {analysis.text, line})
    # The parser recovered from a syntax error: it may have lost words, so the raw text is tried too.
    return analysis.incomplete and fnmatch.fnmatchcase(line.strip(), rule.pattern)
