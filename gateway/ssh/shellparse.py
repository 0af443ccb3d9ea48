"""Sans-IO shell analysis: a command line in, the simple commands it runs (and what cannot be known) out.

A line is parsed with tree-sitter-bash (error tolerant: an unfinished line still yields its commands)
and walked into ``SimpleCommand`` values: quoting and escapes removed, backslash-newline joined,
variables and aliases set earlier in the same shell substituted, and the commands that wrappers
(``sudo``, ``env``, ``nohup``, ``xargs``...), ``bash -c`` and ``eval`` run followed as commands of
their own. What the shell would only know at run time (a variable nobody set, ``eval "$x"``,
``base64 -d | sh``, history expansion) is reported in ``Analysis.unresolved``.

This is a tripwire, not a sandbox: it sees what a line says, not what the programs it starts do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from gateway.ssh.shellwords import (
    SCRIPT_OPTION,
    SHELLS,
    WRAPPERS,
    find_execs,
    option_script,
    reads_stdin,
    shell_script,
    unwrap,
)

log = logging.getLogger(__name__)

MAX_TEXT = 64 * 1024
# tree-sitter's error recovery is superlinear on some inputs (40 ms for 2 KiB of `x )x )...`, 90 ms for
# 4 KiB, 0.5 s for 16 KiB) and holds the GIL, so the event loop of every session would wait: longer lines
# get only the rough split below (every rule still sees every piece) and are unresolved.
MAX_PARSE = 2048
MAX_DEPTH = 64  # syntax-tree nesting followed, and bash -c / eval / alias re-parses (each counts 8)
MAX_COMMANDS = 512
MAX_VISITS = 4000  # syntax nodes and words looked at per line: the analysis runs on the event loop
MAX_VALUE = 4096  # a variable or alias value longer than this is "unknown" (x=$x$x doubling stays small)
MAX_PENDING_LINES = 64

_ECHO = frozenset({"echo", "printf"})
_GLOB = re.compile(r"(?<!\\)[*?\[]")
_HISTORY = re.compile(r"(?:^|[^\\])!(?=[!$^*\-0-9A-Za-z?#%:])|^\^[^^]*\^")
_ANSI_C = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|c.|.)", re.S)
_ANSI_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f",
                "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}  # fmt: skip

_PARSER = Parser(Language(tree_sitter_bash.language()))
# tree-sitter-bash's external scanner (src/scanner.c, BRACE_START, 0.25.1) calls ctype's isdigit() on the
# lookahead code point after `{`, `{12` and `{1..2`: a code point above U+00FF indexes past glibc's table,
# and `{` followed by such a character (one line: `{\U0010ffff`) crashed the whole gateway process. Only
# that character is swapped, for a same-length ASCII run, in the bytes the parser reads; words are still
# read from the original bytes (the offsets match).
_SCANNER_CRASH = re.compile(r"\{[0-9]*(?:\.\.[0-9]*)?([^\x00-\xff])")


@dataclass(frozen=True, slots=True)
class SimpleCommand:
    """One command the line runs: `name` is the basename of the command word, `args` are unquoted words."""

    name: str
    args: tuple[str, ...] = ()
    path: str = ""  # the command word as written, unquoted (may hold a directory)

    @property
    def text(self) -> str:
        """Canonical text: name and arguments joined by single spaces."""
        return " ".join((self.name, *self.args))


@dataclass(slots=True)
class Analysis:
    """What one line runs, as far as can be told statically."""

    commands: list[SimpleCommand] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # why what runs cannot be known
    incomplete: bool = False  # the line continues on the next one (open quote, `then` without `fi`, `\`)
    text: str = ""  # the analysed text: earlier unfinished lines + this one, backslash-newlines joined
    variables: dict[str, str | None] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ShellState:
    """What an interactive shell remembers between lines that changes what a word means."""

    variables: dict[str, str | None] = field(default_factory=dict)  # None: set, but to something unknown
    aliases: dict[str, str] = field(default_factory=dict)
    pending: str = ""  # an unfinished construct (open quote, loop, continuation) the next line completes
    pending_lines: int = 0

    def analyse(self, line: str) -> Analysis:
        """Analyse `line` in this state (nothing changes until `commit`)."""
        return analyse(self.pending + line, self.variables, self.aliases)

    def readings(self, line: str) -> list[Analysis]:
        """Every plausible reading of `line`: joined to the unfinished construct (the first, the one to
        commit), and, when a construct is open or the line does not parse alone, also the line alone and
        the line continuing a quote. The gateway cannot always know whether the shell still holds the
        construct (a ^C, a program that read the line instead of the shell, a construct past the limits),
        so the rules see all of them: a command in any reading counts.
        """
        first = self.analyse(line)
        if not self.pending and not first.incomplete:
            return [first]
        out = [first]
        for text in (line, "'" + line, '"' + line) if self.pending else ("'" + line, '"' + line):
            out.append(analyse(text, self.variables, self.aliases))
        return out

    def commit(self, analysis: Analysis) -> None:
        """The line was allowed to run: remember its assignments, aliases and unfinished part."""
        self.variables, self.aliases = analysis.variables, analysis.aliases
        if analysis.incomplete and self.pending_lines < MAX_PENDING_LINES and len(analysis.text) < MAX_TEXT:
            self.pending, self.pending_lines = analysis.text + "\n", self.pending_lines + 1
        else:
            self.pending, self.pending_lines = "", 0


def analyse(text: str, variables: dict[str, str | None] | None = None,
            aliases: dict[str, str] | None = None) -> Analysis:  # fmt: skip
    """Analyse a command line; never raises, bounded work for any input."""
    out = Analysis(variables=dict(variables or {}), aliases=dict(aliases or {}))
    if len(text) > MAX_TEXT:
        out.unresolved.append("line too long to analyse")
        text = text[:MAX_TEXT]
    out.text = text
    stripped = text.rstrip("\n")
    # An odd number of trailing backslashes: the shell reads the next line as part of this one.
    out.incomplete = (len(stripped) - len(stripped.rstrip("\\"))) % 2 == 1
    walker = _Walker(out)
    try:
        if len(text) > MAX_PARSE:
            raise _Budget
        walker.program(join_continuations(text), 0)
    except RecursionError:
        out.unresolved.append("too deeply nested to analyse")
    except _Budget:
        _rough(out, text, "line too complex to analyse fully")
    except Exception as e:  # a bug here must not end the session's task: the rules still see the pieces
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        # The message can quote the line (a secret on a command line): only the type and the place.
        log.error("shell analysis failed: %s at line %s", type(e).__name__, tb.tb_lineno if tb else "?")
        _rough(out, text, "the shell analysis failed on this line")
    return out


def _rough(out: Analysis, text: str, why: str) -> None:
    """Say why the line was not analysed, and give the rules every piece of it all the same."""
    # Split roughly at the control operators: padding a line or tripping the parser hides no command.
    out.unresolved.append(why)
    out.commands.extend(rough_commands(text))


class _Budget(Exception):
    """The line needs more work than MAX_VISITS."""


_ROUGH_SPLIT = re.compile(r"[;&|\n(){}`]|\$\(|<\(|>\(")
_ROUGH_QUOTES = re.compile(r"[\\'\"]")


def rough_commands(text: str) -> list[SimpleCommand]:
    """Distinct simple commands of a line without a parse: split at operators, quotes dropped."""
    seen: dict[str, SimpleCommand] = {}
    for piece in _ROUGH_SPLIT.split(text):
        words = _ROUGH_QUOTES.sub("", piece).split()
        while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
            words.pop(0)
        if words:
            key = " ".join(words)
            if key not in seen:
                name = words[0].rstrip("/").rsplit("/", 1)[-1] or words[0]
                seen[key] = SimpleCommand(name, tuple(words[1:]), words[0])
    return list(seen.values())


def join_continuations(text: str) -> str:
    """Remove backslash-newline pairs the way the shell does (not inside single quotes)."""
    if "\\\n" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    single = double = False
    while i < n:
        c = text[i]
        if single:
            single = c != "'"
        elif c == "\\" and i + 1 < n:
            if text[i + 1] != "\n":
                out.append(text[i : i + 2])
            i += 2
            continue
        elif c == "'" and not double:
            single = True
        elif c == '"':
            double = not double
        out.append(c)
        i += 1
    return "".join(out)


class _Walker:
    """Walks a syntax tree into an Analysis (state changes apply in order, as the shell would run them)."""

    def __init__(self, out: Analysis) -> None:
        self.out = out
        self.visits = 0
        self.source = b""  # the bytes of the tree being walked (nodes are read from these, see program)

    def spend(self, n: int = 1) -> None:
        """Count work; past the budget the walk stops (see analyse)."""
        self.visits += n
        if self.visits > MAX_VISITS:
            raise _Budget

    # -- statements ---------------------------------------------------------------------------------

    def program(self, text: str, depth: int) -> None:
        """Parse `text` and walk it."""
        if depth > MAX_DEPTH:
            self.out.unresolved.append("commands nested too deeply to follow")
            return
        self.spend(len(text) // 16)  # re-parses (eval, bash -c, aliases) cost their length too
        if len(text) > MAX_PARSE:
            raise _Budget
        source = text.encode("utf-8", "surrogatepass")
        root = _PARSER.parse(scanner_safe(text) if _SCANNER_CRASH.search(text) else source).root_node
        outer, self.source = self.source, source
        try:
            if root.has_error:
                self.out.incomplete = True
            if _HISTORY.search(text) and self.has_history(root):
                self.out.unresolved.append("history expansion")
            self.node(root, depth, piped=False)
        finally:
            self.source = outer

    def node(self, n: Node, depth: int, *, piped: bool) -> None:
        """Any node: commands are analysed, everything else is searched for commands."""
        self.spend()
        if depth > MAX_DEPTH * 4:
            self.out.unresolved.append("syntax nested too deeply to follow")
            return
        t = n.type
        if t == "command":
            self.command(n, depth, piped=piped)
        elif t == "variable_assignment":
            self.assign(n, depth)
        elif t == "declaration_command":
            for c in n.named_children:
                if c.type == "variable_assignment":
                    self.assign(c, depth)
                elif c.type == "variable_name":
                    self.out.variables.setdefault(self.text(c), None)
                else:
                    self.node(c, depth + 1, piped=False)
        elif t == "unset_command":
            for c in n.named_children:
                self.out.variables.pop(self.text(c), None)
        elif t in ("for_statement", "c_style_for_statement", "select_statement"):
            var = n.child_by_field_name("variable")
            if var is not None:
                self.out.variables[self.text(var)] = None
            self.children(n, depth, piped=False)
        elif t == "pipeline":
            first = True
            for c in n.named_children:
                self.node(c, depth + 1, piped=not first)
                first = False
        elif t == "redirected_statement":
            self.redirected(n, depth, piped=piped)
        elif t in ("heredoc_body", "comment"):
            return
        else:
            self.children(n, depth, piped=piped)

    def children(self, n: Node, depth: int, *, piped: bool) -> None:
        """Walk every named child."""
        for c in n.named_children:
            self.node(c, depth + 1, piped=piped)

    def redirected(self, n: Node, depth: int, *, piped: bool) -> None:
        """A statement with redirections: a heredoc or here-string fed to a shell is that shell's script."""
        body = n.child_by_field_name("body")
        scripts: list[Node] = []
        for c in n.named_children:
            if body is not None and c.id == body.id:
                continue
            if c.type in ("heredoc_redirect", "herestring_redirect"):
                scripts.append(c)
            self.node(c, depth + 1, piped=False)
        if body is None:
            return
        self.node(body, depth + 1, piped=piped)
        if not scripts or body.type != "command" or not self._is_stdin_shell(body):
            return
        for c in scripts:
            for b in c.named_children:
                if b.type == "heredoc_body":
                    self.program(self.text(b), depth + 8)
                elif c.type == "herestring_redirect":
                    value = self.word(b)
                    if value is None:
                        self.out.unresolved.append("a shell runs a here-string known only at run time")
                    else:
                        self.program(value, depth + 8)

    def assign(self, n: Node, depth: int) -> None:
        """`name=value` as a statement of its own: later words see the value."""
        name = n.child_by_field_name("name")
        value = n.child_by_field_name("value")
        if value is not None:
            self.node(value, depth + 1, piped=False)  # $(...) in the value runs
        if name is None:
            return
        key = self.text(name)
        if n.children and len(n.children) > 1 and n.children[1].type == "+=":
            old = self.out.variables.get(key, "")
            new = self.word(value) if value is not None else ""
            self.out.variables[key] = None if old is None or new is None else _bounded(old + new)
        else:
            self.out.variables[key] = _bounded(self.word(value)) if value is not None else ""

    # -- simple commands ----------------------------------------------------------------------------

    def command(self, n: Node, depth: int, *, piped: bool) -> None:
        """A simple command: resolve its words, expand an alias, record it, follow what it runs."""
        name_node = n.child_by_field_name("name")
        words: list[Node] = []
        herestrings: list[Node] = []
        for c in n.named_children:
            if c.type == "variable_assignment":  # FOO=1 cmd: only for cmd; its value may run $(...)
                value = c.child_by_field_name("value")
                if value is not None:
                    self.node(value, depth + 1, piped=False)
            elif c.type in ("file_redirect", "herestring_redirect", "heredoc_redirect"):
                if c.type == "herestring_redirect":
                    herestrings.extend(c.named_children)
                self.node(c, depth + 1, piped=False)
            elif name_node is None or c.id != name_node.id:
                words.append(c)
        for w in [name_node, *words] if name_node is not None else words:
            self.substitutions(w, depth)
        if name_node is None:
            return
        head = name_node.named_children[0] if name_node.named_children else name_node
        if head.type == "word" and name_node.named_child_count == 1:
            alias = self.out.aliases.get(self.text(head))
            if alias is not None:
                rest = self.text(n)[name_node.end_byte - n.start_byte :] if n.end_byte >= name_node.end_byte else ""
                self.program(alias + rest, depth + 8)
                return
        name = self.fields(name_node, command=True)
        if name is None or not name:
            if name is None:
                self.out.unresolved.append(f"command name not known before it runs: {self.text(name_node)[:80]}")
            return
        args: list[str] = name[1:]
        for w in words:
            got = self.fields(w)
            args.extend(got if got is not None else [self.text(w)])
        self.simple(name[0], args, depth, piped=piped)
        base = name[0].rsplit("/", 1)[-1]
        if herestrings and base in SHELLS and reads_stdin(base, args):
            for h in herestrings:  # bash <<< 'script'
                script = self.word(h)
                if script is None:
                    self.out.unresolved.append(f"{base} runs a here-string known only at run time")
                else:
                    self.program(script, depth + 8)

    def simple(self, word: str, args: list[str], depth: int, *, piped: bool) -> None:
        """Record a command and follow the commands it runs (wrappers, shells, eval, alias definitions)."""
        out = self.out
        if len(out.commands) >= MAX_COMMANDS:
            raise _Budget
        base = word.rsplit("/", 1)[-1] if word.rstrip("/") else word
        out.commands.append(SimpleCommand(base, tuple(args), word))
        if base == "eval":
            self.program(" ".join(args), depth + 8)
        elif base == "alias":
            for a in args:
                key, eq, value = a.partition("=")
                if eq:
                    out.aliases[key] = value
        elif base == "unalias":
            for a in args:
                out.aliases.pop(a, None)
        elif base in ("read", "mapfile", "readarray", "getopts", "printf") and args:
            for a in args:  # `read x`: x is now whatever arrived on stdin
                if a.isidentifier():
                    out.variables[a] = None
        elif base == "trap" and len(args) > 1 and not args[0].startswith("-"):
            self.program(args[0], depth + 8)  # trap 'ACTION' SIGNAL...: the action runs later
        script = option_script(base, args) if base in SCRIPT_OPTION else None
        if script is not None:
            self.program(script, depth + 8)
        elif base in SHELLS and not (base == "busybox" and args and args[0] not in SHELLS):
            self.shell(base, args, depth, piped=piped)
        elif base in WRAPPERS and base not in ("su", "script"):
            inner = unwrap(base, args)
            if inner:
                self.simple(inner[0], inner[1:], depth + 1, piped=piped)
        elif base == "find":
            for inner in find_execs(args):
                self.simple(inner[0], inner[1:], depth + 1, piped=False)

    def shell(self, base: str, args: list[str], depth: int, *, piped: bool) -> None:
        """`bash -c STRING` runs STRING; a shell reading a pipe runs whatever the pipe carries."""
        script = shell_script(base, args)
        if script is not None:
            self.program(script, depth + 8)
        elif piped and reads_stdin(base, args):
            self.out.unresolved.append(f"{base} runs commands read from a pipe")

    # -- words --------------------------------------------------------------------------------------

    def substitutions(self, n: Node, depth: int) -> None:
        """Commands inside a word ($(...), `...`, <(...)) run whatever the word resolves to."""
        if n.type in ("command_substitution", "process_substitution"):
            self.children(n, depth + 1, piped=False)
            return
        if n.type == "arithmetic_expansion":
            self.children(n, depth + 1, piped=False)
            return
        for c in n.named_children:
            self.substitutions(c, depth + 1)

    def fields(self, n: Node, *, command: bool = False) -> list[str] | None:
        """A word's value after expansion and word splitting; None when only run time can tell."""
        if n.type == "command_name":
            if n.named_child_count != 1:
                return None if n.named_child_count else [_unescape(self.text(n))]
            n = n.named_children[0]
        if command and n.type == "word" and _GLOB.search(self.text(n)):
            return None  # `/???/shutdown`, `shut*`: a glob picks the program
        value = self.word(n)
        if value is None:
            return None
        if n.type in ("simple_expansion", "expansion", "command_substitution"):
            return value.split()  # unquoted: split on whitespace
        return [value]

    def word(self, n: Node) -> str | None:
        """A word's value with quotes and escapes removed; None when it depends on run time."""
        self.spend()
        t = n.type
        if t == "word":
            text = self.text(n)
            return _unescape(text) if "\\" in text else text
        if t in ("number", "string_content"):
            return self.text(n)
        if t == "raw_string":
            return self.text(n)[1:-1]
        if t == "ansi_c_string":
            return _ansi_c(self.text(n)[2:-1])
        if t in ("string", "translated_string"):
            return self._string(n)
        if t == "concatenation":
            parts = [self.word(c) for c in n.named_children]
            return None if any(p is None for p in parts) else "".join(p for p in parts if p is not None)
        if t == "simple_expansion":
            return self._variable(n.named_children[0] if n.named_children else None)
        if t == "expansion":
            kids = n.children
            # only ${name}: anything with an operator (${x:-y}, ${x/a/b}, ${!x}) needs run time
            if len(kids) == 3 and kids[1].type == "variable_name":
                return self._variable(kids[1])
            return None
        if t == "command_substitution":
            return self._echo_substitution(n)
        return None

    def _string(self, n: Node) -> str | None:
        """A double-quoted string: escapes \\$ \\` \\" \\\\ removed, expansions substituted."""
        text = self.text(n)
        parts: list[str] = []
        pos = n.start_byte + (2 if text.startswith("$") else 1)
        end = n.end_byte - 1
        raw, base = self.source[n.start_byte : n.end_byte], n.start_byte
        for c in n.named_children:
            if c.start_byte > pos:
                parts.append(_dq_unescape(raw[pos - base : c.start_byte - base].decode("utf-8", "replace")))
            value = self.word(c) if c.type != "string_content" else _dq_unescape(self.text(c))
            if value is None:
                return None
            parts.append(value)
            pos = c.end_byte
        if end > pos:
            parts.append(_dq_unescape(raw[pos - base : end - base].decode("utf-8", "replace")))
        return "".join(parts)

    def _variable(self, name: Node | None) -> str | None:
        """$name: its value when this shell set it earlier, else unknown."""
        if name is None or name.type != "variable_name":
            return None
        return self.out.variables.get(self.text(name))

    def _echo_substitution(self, n: Node) -> str | None:
        """$(echo WORDS) / $(printf WORD): the text is known; any other substitution is not."""
        kids = [c for c in n.named_children if c.type != "comment"]
        if len(kids) != 1 or kids[0].type != "command":
            return None
        inner = kids[0]
        name = inner.child_by_field_name("name")
        if name is None or self.word(name.named_children[0] if name.named_children else name) not in _ECHO:
            return None
        words: list[str] = []
        for c in inner.named_children:
            if c.id == name.id:
                continue
            if c.type not in ("word", "string", "raw_string", "concatenation", "number", "simple_expansion",
                              "expansion", "ansi_c_string"):  # fmt: skip
                return None
            got = self.fields(c)
            if got is None:
                return None
            words.extend(got)
        is_printf = self.text(name).endswith("printf")
        while words and not is_printf and words[0] in ("-n", "-e", "-E", "-ne", "-en"):
            words.pop(0)
        if is_printf and (len(words) != 1 or "%" in words[0] or "\\" in words[0]):
            return None
        if not is_printf and any("\\" in w for w in words):
            return None
        return " ".join(words)

    def _is_stdin_shell(self, n: Node) -> bool:
        """Whether a command node is a shell that reads its script from stdin."""
        name = n.child_by_field_name("name")
        if name is None:
            return False
        got = self.fields(name, command=True)
        if not got:
            return False
        base = got[0].rsplit("/", 1)[-1]
        args = [self.word(c) or self.text(c) for c in n.named_children if c.id != name.id]
        return base in SHELLS and reads_stdin(base, args)

    def has_history(self, root: Node) -> bool:
        """Whether a `!` that history expansion would act on is outside single quotes."""
        stack = [root]
        while stack:
            n = stack.pop()
            if n.type in ("raw_string", "ansi_c_string", "heredoc_body", "comment"):
                continue
            if n.type in ("word", "string_content") and _HISTORY.search(self.text(n)):
                return True
            stack.extend(n.children)
        return False

    def text(self, n: Node) -> str:
        """A node's source text."""
        return self.source[n.start_byte : n.end_byte].decode("utf-8", "replace")


def _bounded(value: str | None) -> str | None:
    """A variable's value, or None (unknown) when it is too long to carry around."""
    return None if value is None or len(value) > MAX_VALUE else value


def scanner_safe(text: str) -> bytes:
    """`text` as UTF-8 with every character the bash scanner would crash on swapped for as many `+`."""

    def swap(m: re.Match[str]) -> str:
        return m[0][:-1] + "+" * len(m[1].encode("utf-8", "surrogatepass"))

    return _SCANNER_CRASH.sub(swap, text).encode("utf-8", "surrogatepass")


def _unescape(text: str) -> str:
    """Backslash removal in an unquoted word (`\\shutdown` -> `shutdown`)."""
    return re.sub(r"\\(.)", r"\1", text, flags=re.S)


def _dq_unescape(text: str) -> str:
    """Backslash removal inside double quotes (only before $ ` " \\ and newline)."""
    return re.sub(r'\\([$`"\\\n])', lambda m: "" if m.group(1) == "\n" else m.group(1), text)


def _ansi_c(body: str) -> str:
    """$'...' quoting: C escapes decoded as bash does."""

    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e[0] in "xuU" and len(e) > 1:  # `\x` with no hex digit after it stays as written
            return chr(min(int(e[1:], 16), 0x10FFFF))
        if e[0] in "01234567":
            return chr(int(e, 8) & 0xFF)
        if e[0] == "c" and len(e) == 2:
            return chr(ord(e[1]) & 0x1F)
        return _ANSI_SIMPLE.get(e, "\\" + e)

    return _ANSI_C.sub(one, body)
