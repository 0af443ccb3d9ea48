"""One client session channel relayed to one upstream session channel, inspected and recorded on the way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

import asyncssh

from gateway.detect.hooks import watch
from gateway.policy import Decision, SshPolicy, Verdict
from gateway.recording import BinaryStreamRecorder, RecordingError, schema
from gateway.sessions import LiveSession
from gateway.ssh.asyncssh_compat import lazy_close_event
from gateway.ssh.commandline import Line, StdinLines
from gateway.ssh.reaper import MARKER
from gateway.ssh.recordings import ChannelRecorder, SessionRecordings
from gateway.ssh.scope import check_exec, check_line, check_shell, check_subsystem, filter_env, reads_stdin_commands
from gateway.ssh.sftp import FileOp, SftpFilter, SftpProtocolError
from gateway.ssh.shellparse import ShellState
from gateway.ssh.upstream import MAX_PACKET, WINDOW
from gateway.terminal import CommandTracker, Enter

# Sent upstream instead of a refused line's Enter: ^E (end of line) then ^U (kill to start) empties
# readline's buffer, and ^U alone empties a canonical-mode tty line. No signal, unlike ^C.
CLEAR_LINE = b"\x05\x15"
REFUSED_STATUS = 126
"""Exit status of a channel whose request the scope refused (as a shell's "cannot execute")."""
SIGNAL_GRACE = 0.5
"""Seconds an upstream command gets to exit after TERM before KILL, and after KILL before its channel is closed."""


class RelayHost(Protocol):
    """What a channel needs from its connection."""

    session: LiveSession
    recordings: SessionRecordings

    @property
    def upstream(self) -> asyncssh.SSHClientConnection: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def kill_soon(self, reason: str) -> None: ...


def notice(text: str) -> bytes:
    """A gateway line on the user's terminal (own line, CRLF: the terminal may be in raw mode)."""
    return f"\r\n[gateway] {text}\r\n".encode()


class ChannelRelay(asyncssh.SSHServerSession[bytes]):
    """The engineer's side of one session channel: requests are checked, data relayed and recorded."""

    def __init__(self, host: RelayHost, number: int) -> None:
        self.host = host
        self.n = number
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.up: asyncssh.SSHClientChannel[bytes] | None = None
        self.rec: ChannelRecorder | None = None
        self.kind = ""
        self.command: str | None = None
        self.subsystem: str | None = None
        self.pty = False
        self.term = ""
        self.size: tuple[int, int, int, int] = (80, 24, 0, 0)
        self.modes: dict[int, int] = {}
        self.tracker: CommandTracker | None = None
        self.stdin_lines: StdinLines | None = None  # a shell without a terminal: its stdin lines are commands
        self.killing = False  # a kill verdict was given: nothing more goes upstream
        self.shell_state = ShellState()  # the channel's shell: variables and aliases it was given so far
        self.sftp: SftpFilter | None = None
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None
        self.refusal: Decision | None = None
        self.closed = False  # the engineer's channel is gone
        self.eof_sent = False  # no more output may be written to the engineer
        self._rec_err: Callable[[bytes], None] = _drop
        self._holds: dict[str, set[str]] = {"client": set(), "up": set()}  # why each side is not read
        self._early: list[bytes] = []  # client data that came before the upstream channel was open
        self._early_eof = False
        self._up_running = False  # the upstream channel is open: its command may still run
        self._ending: asyncio.Future[None] | None = None

    @property
    def chan(self) -> asyncssh.SSHServerChannel[bytes]:
        """The engineer's channel (asyncssh sets it before any other callback)."""
        assert self._chan is not None
        return self._chan

    @property
    def started(self) -> bool:
        """Whether asyncssh has attached the engineer's channel."""
        return self._chan is not None

    @property
    def policy(self) -> SshPolicy:
        """The scope's SSH policy (the listener admits no session without one)."""
        policy = self.host.session.policy.ssh
        assert policy is not None
        return policy

    # -- channel requests: checked against the scope, audited either way -------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """The engineer's channel."""
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Mapping[int, int]) -> bool:  # fmt: skip
        """Remember the terminal; it is requested upstream with the same type, size and modes."""
        self.pty, self.term, self.size, self.modes = True, term_type, term_size, dict(term_modes)
        return True

    def shell_requested(self) -> bool:
        """An interactive shell."""
        return self._admit("shell", check_shell(self.policy))

    def exec_requested(self, command: str) -> bool:
        """A command (also scp's server side)."""
        d = watch(self.host.session).command(command, check_exec(self.policy, command))  # detection: its baselines
        return self._admit("exec", d, command=command)

    def subsystem_requested(self, subsystem: str) -> bool:
        """Only sftp."""
        return self._admit("subsystem", check_subsystem(self.policy, subsystem), subsystem=subsystem)

    def _admit(self, kind: str, d: Decision, *, command: str | None = None, subsystem: str | None = None) -> bool:
        """Audit a channel request's decision; a refusal is explained once the channel starts."""
        s = self.host.session
        s.audit_soon("ssh.channel", severity="info" if d.allowed else "warning", channel=self.n, kind=kind,
                     command=command, subsystem=subsystem, pty=self.pty, verdict=d.verdict.value, rule=d.rule,
                     reason=d.reason)  # fmt: skip
        for rule in d.alerts:
            s.alert("ssh.command", f"{s.user} ran {command!r} on {s.target.name} (rule {rule})", rule=rule,
                    command=command)  # fmt: skip
        self.kind, self.command, self.subsystem = kind, command, subsystem
        if not d.allowed:
            what = f"{kind} {command or subsystem or ''}: {d.reason}".rstrip()
            self.host.recordings.marker(schema.blocked_marker(what))
            if d.verdict is Verdict.KILL:
                self.host.kill_soon(f"{kind} {command!r} matched kill rule {d.rule}")
            # Accepted, then ended with the reason: a stock client only prints the channel's output
            # once the request has succeeded ("exec request failed" alone would not say why).
            self.refusal = d
        return True

    def session_started(self) -> None:
        """The request was accepted: open the upstream channel (asynchronously), or say why not."""
        if self.refusal is not None:
            self.write_notice(f"refused: {self.refusal.reason}", stderr=True)
            self.chan.exit(REFUSED_STATUS)
            return
        self.host.spawn(self._start())

    async def _start(self) -> None:
        """Open the recorder and the upstream channel, then release held client data."""
        s, chan = self.host.session, self.chan
        allowed, refused = filter_env(chan.get_environment_bytes())
        env: dict[str | bytes, str | bytes] = {k: v for k, v in allowed.items()}
        env[MARKER] = s.id  # lets the end-of-session sweep tell this session's processes apart (reaper.py)
        if refused:
            s.audit_soon("ssh.env.refused", severity="warning", channel=self.n, names=refused)
        what = self.command if self.kind == "exec" else (self.subsystem or self.kind)
        try:
            self.rec = rec = self.host.recordings.open(what=f"{self.kind} {what}", pty=self.pty, term=self.term,
                                                       width=self.size[0], height=self.size[1])  # fmt: skip
        except RecordingError as exc:
            self._fail(f"recording unavailable: {exc}")
            self.host.kill_soon(f"recording failed: {exc}")
            return
        self._rec_err = rec.stderr if isinstance(rec, BinaryStreamRecorder) else rec.output
        if self.command is not None:
            rec.marker(schema.command_marker(self.command))
        size = self.size
        try:
            up, _ = await self.host.upstream.create_session(
                lambda: UpstreamSide(self), command=self.command, subsystem=self.subsystem, env=env,
                request_pty="force" if self.pty else False, term_type=self.term or None, term_size=size,
                term_modes=self.modes, encoding=None, window=WINDOW, max_pktsize=MAX_PACKET,
            )  # fmt: skip
        except (asyncssh.Error, OSError) as exc:
            self._fail(f"{s.target.name} refused the channel: {getattr(exc, 'reason', None) or exc}")
            return
        self.up = up
        self._up_running = True
        if self.closed:  # the engineer left while the channel opened: its command may have started already
            await self.end_upstream()
            return
        if self.subsystem == "sftp":
            self.sftp = SftpFilter(read_only=self.policy.sftp == "read-only")
        if self.pty:
            self.tracker = CommandTracker()
        elif self.kind == "shell" or (self.kind == "exec" and reads_stdin_commands(self.command or "")):
            # No terminal, no echo: what the shell runs is what arrives on stdin, line by line.
            self.stdin_lines = StdinLines(self._on_stdin_line)
        if self.size != size:  # the window changed while the upstream channel was opening
            up.change_terminal_size(*self.size)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data, None)
        if self._early_eof:
            self._write_eof(up)
        self.release("client", "opening")

    def _fail(self, why: str) -> None:
        """The channel cannot run: say why and end it with status 255 (what ssh uses for its own errors)."""
        if not self.closed:
            self.chan.write_stderr(notice(why))
            self.chan.exit(255)

    # -- data: client -> upstream ------------------------------------------------------------------

    def data_received(self, data: bytes, datatype: int | None) -> None:
        """Keystrokes, stdin or sftp requests from the engineer."""
        up = self.up
        if up is None:
            # asyncssh starts delivering data as soon as the request is accepted; the upstream
            # channel is still opening. Hold it (and stop reading) until it is there.
            self._early.append(data)
            self.hold("client", "opening")
            return
        if self.rec is not None:
            self.rec.input(data)
            self._check_backlog("client")
        if self.tracker is not None:
            cancels = self.tracker.cancels
            items = self.tracker.feed_input(data)
            if self.tracker.cancels != cancels:  # ^C: bash drops the unfinished construct too
                self.shell_state.pending, self.shell_state.pending_lines = "", 0
            for item in items:
                if self.killing:  # nothing typed after a killing line reaches the shell
                    break
                if isinstance(item, bytes):
                    up.write(item)
                else:
                    self._on_enter(item, up)
        elif self.stdin_lines is not None:
            allowed = self.stdin_lines.feed(data)
            if allowed:
                up.write(allowed)
        elif self.sftp is not None:
            self._sftp_request(data, up)
        elif not self.killing:
            up.write(data)

    def _on_enter(self, ev: Enter, up: asyncssh.SSHClientChannel[bytes]) -> None:
        """A line is about to run: its Enter key is forwarded only if the scope's rules allow it."""
        if not ev.line.strip() and not ev.typed.strip():
            self._blank_line()
            up.write(ev.key)
            return
        # A line typed with echo off is most likely a password: kept out of the audit log (the
        # recording's input events still have it, for a reviewer with access to recordings).
        shown = ev.line if ev.echoed else f"<not echoed: {len(ev.typed)} characters>"
        d = self._judge(dict.fromkeys([ev.line, ev.typed]), shown, exact=ev.exact, truncated=ev.truncated)
        if d.allowed:
            up.write(ev.key)
            return
        # Only this line is cleared: an unfinished construct before it (a `\` line, an open loop) stays
        # in the shell, and in the shell state too, so the next line is read joined to it, as bash will.
        up.write(CLEAR_LINE)
        message = notice(f"blocked by policy: {d.rule}")
        self.chan.write(message)
        if self.rec is not None:
            self.rec.output(message)
        self._enforce(d, shown)

    def _on_stdin_line(self, line: Line) -> bool | None:
        """A line on a terminal-less shell's stdin: True lets it through, None holds it for the next line."""
        if self.killing:
            return False
        state = self.shell_state
        if not line.text.strip():
            self._blank_line()
            return None if state.pending else True
        d = self._judge([line.text], line.text, exact=True, truncated=line.truncated)
        if d.allowed:
            return None if state.pending else True
        state.pending, state.pending_lines = "", 0  # the held lines are dropped with this one
        if not self.closed and not self.eof_sent:
            message = notice(f"blocked by policy: {d.rule}").lstrip(b"\r\n").replace(b"\r\n", b"\n")
            self.chan.write_stderr(message)
            self._rec_err(message)
        self._enforce(d, line.text)
        return False

    def _blank_line(self) -> None:
        """An empty line still ends a backslash continuation (and adds a line to an open quote)."""
        state = self.shell_state
        if state.pending:
            state.commit(state.analyse(""))

    def _judge(self, candidates: Iterable[str], shown: str, *, exact: bool, truncated: bool) -> Decision:
        """Decide a command line, and count, audit, mark and alert it (shared by terminal and stdin lines)."""
        s = self.host.session
        d = check_line(self.policy, candidates, truncated=truncated, state=self.shell_state)
        d = watch(s).command(shown, d)  # a detection whose action is deny or kill replaces an allow
        s.stats["commands"] = s.stats.get("commands", 0) + 1
        if not d.allowed:
            s.stats["violations"] = s.stats.get("violations", 0) + 1
        s.audit_soon("command", severity="info" if d.allowed else "warning", line=shown, channel=self.n,
                     exact=exact, verdict=d.verdict.value, rule=d.rule, pty=self.pty)  # fmt: skip
        if self.rec is not None:
            self.rec.marker(schema.command_marker(shown))
        for rule in d.alerts:
            s.alert("ssh.command", f"{s.user} ran {shown!r} on {s.target.name} (rule {rule})", rule=rule, line=shown)
        return d

    def _enforce(self, d: Decision, shown: str) -> None:
        """A refused line: mark it; a kill verdict also stops all forwarding and ends the session."""
        if self.rec is not None:
            self.rec.marker(schema.blocked_marker(f"{shown} (rule {d.rule})"))
        if d.verdict is Verdict.KILL:
            self.killing = True
            self.host.kill_soon(f"command {shown!r} matched kill rule {d.rule}")

    def _sftp_request(self, data: bytes, up: asyncssh.SSHClientChannel[bytes]) -> None:
        """Client SFTP requests through the filter; refusals are answered here."""
        assert self.sftp is not None
        try:
            res = self.sftp.client_data(data)
        except SftpProtocolError as exc:
            self._protocol_error(exc)
            return
        if res.forward:
            up.write(res.forward)
        if res.reply:
            self.chan.write(res.reply)
        self._file_ops(res.ops)

    def _file_ops(self, ops: list[FileOp]) -> None:
        """Audit and mark file operations the SFTP filter saw."""
        s = self.host.session
        for op in ops:
            s.audit_soon("sftp." + ("file" if op.allowed else "refused"), severity="info" if op.allowed else "warning",
                         channel=self.n, op=op.op, path=op.path, target=op.target or None, flags=op.flags,
                         read=op.read, written=op.written)  # fmt: skip
            if self.rec is not None:
                verdict = "" if op.allowed else " REFUSED"
                what = f"{op.op} {op.path}{' -> ' + op.target if op.target else ''}{verdict}"
                self.rec.marker(schema.sftp_marker(what))

    def _protocol_error(self, exc: Exception) -> None:
        """Not SFTP after all: audit it and close both channels."""
        self.host.session.audit_soon("sftp.protocol-error", severity="warning", channel=self.n, error=str(exc))
        self.chan.close()
        if self.up is not None:
            self.up.close()

    # -- requests after start ------------------------------------------------------------------------

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        """Window change: upstream and recording."""
        self.size = (width, height, pixwidth, pixheight)
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)
        if self.rec is not None:
            self.rec.resize(width, height)

    def signal_received(self, signal: str) -> None:
        """Signals go through (and are audited)."""
        self.host.session.audit_soon("ssh.signal", channel=self.n, signal=signal)
        if self.up is not None:
            self.up.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        """Break goes through."""
        if self.up is not None:
            self.up.send_break(msec)
        return True

    def eof_received(self) -> bool:
        """The engineer closed stdin; keep the channel open for the rest of the output."""
        if self.up is not None:
            self._write_eof(self.up)
        else:
            self._early_eof = True
        return True

    def _write_eof(self, up: asyncssh.SSHClientChannel[bytes]) -> None:
        """EOF upstream, after a held last line of a shell's stdin has been decided."""
        if self.stdin_lines is not None:
            last = self.stdin_lines.finish()
            if last:
                up.write(last)
        if not self.killing:  # the kill closes the channel; an EOF now would let the shell end first
            up.write_eof()

    def pause_writing(self) -> None:
        """The engineer is not reading: stop reading the upstream (its window closes, sshd waits)."""
        self.hold("up", "client-busy")

    def resume_writing(self) -> None:
        """The engineer reads again."""
        self.release("up", "client-busy")

    # -- backpressure: a side is read only when nobody holds it ----------------------------------

    def hold(self, side: str, why: str) -> None:
        """Stop reading `side` ("client" or "up") for `why` (flow control, recorder backlog)."""
        holds = self._holds[side]
        if not holds:
            ch = self.up if side == "up" else self._chan
            if ch is not None:
                ch.pause_reading()
        holds.add(why)

    def release(self, side: str, why: str) -> None:
        """Read `side` again once no other reason holds it."""
        holds = self._holds[side]
        if why not in holds:
            return
        holds.discard(why)
        if not holds:
            ch = self.up if side == "up" else self._chan
            if ch is not None:
                ch.resume_reading()

    def _check_backlog(self, side: str) -> None:
        """The recorder fell behind: slow this side down until it catches up, rather than fail the session."""
        rec = self.rec
        if rec is not None and rec.needs_drain and "recorder" not in self._holds[side]:
            self.hold(side, "recorder")
            self.host.spawn(self._drain(side, rec))

    async def _drain(self, side: str, rec: ChannelRecorder) -> None:
        """Wait for the recorder to catch up, then read `side` again."""
        try:
            await rec.drain()
        finally:
            self.release(side, "recorder")

    def connection_lost(self, exc: Exception | None) -> None:
        """The engineer's channel is gone: end the upstream command too."""
        self.closed = True
        if self.up is not None:
            self.end_upstream()

    def stop_input(self) -> None:
        """The session is ending: nothing more the engineer sends goes upstream."""
        self.killing = True
        self.hold("client", "ending")

    def end_upstream(self) -> asyncio.Future[None]:
        """End the upstream command and close its channel (once; every caller gets the same future)."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end_upstream())
        return self._ending

    async def _end_upstream(self) -> None:
        """TERM (with HUP, which ends an interactive shell and its jobs), then KILL, then close.

        sshd leaves a command without a terminal running when its channel closes (and with a terminal,
        one that ignores SIGHUP): only a "signal" request ends it, sent to its process group. sshd
        refuses signals to subsystems; sftp-server ends on the close itself. A process that escaped
        its group is left to the detached-process sweep (reaper.py).
        """
        up = self.up
        assert up is not None
        rounds = () if self.subsystem is not None else (("TERM", "HUP"), ("KILL",))
        for signals in rounds:
            if not self._up_running:
                break
            for sig in signals:
                with contextlib.suppress(Exception):  # the connection may be gone already
                    up.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(up.wait_closed(), SIGNAL_GRACE)
        up.close()

    # -- upstream -> client (called by UpstreamSide) -------------------------------------------------

    def upstream_closed(self) -> None:
        """Pass the exit status or signal back, then close."""
        self._up_running = False
        chan = self.chan
        if self.rec is not None and self.kind == "exec":
            self.rec.marker(schema.exit_marker(self.exit_signal[0] if self.exit_signal else self.exit_status))
        if self.closed:
            return
        if self.exit_signal is not None:
            chan.exit_with_signal(*self.exit_signal)
        elif self.exit_status is not None:
            chan.exit(self.exit_status)
        else:
            chan.close()

    def write_notice(self, text: str, *, stderr: bool = False) -> None:
        """A gateway message on this channel (terminal: stdout; otherwise stderr, to keep stdout clean)."""
        if self._chan is None or self.closed or self.eof_sent:
            return
        data = notice(text)
        if stderr and not self.pty:
            self.chan.write_stderr(data)
        elif self.pty:
            self.chan.write(data)
            if self.rec is not None:
                self.rec.output(data)
        elif self.subsystem is None:
            self.chan.write_stderr(data)


class UpstreamSide(asyncssh.SSHClientSession[bytes]):
    """The target's side of one session channel."""

    def __init__(self, relay: ChannelRelay) -> None:
        self.relay = relay

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        """Nobody awaits the channel's close event: no waiters' deque for it."""
        lazy_close_event(chan)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        """Output (and sftp replies): recorded, inspected, then written to the engineer."""
        r = self.relay
        if r.rec is not None:
            if datatype == asyncssh.EXTENDED_DATA_STDERR:
                r._rec_err(data)
            else:
                r.rec.output(data)
            r._check_backlog("up")
        if r.tracker is not None:
            r.tracker.feed_output(data)
        elif r.sftp is not None:
            try:
                ops = r.sftp.server_data(data)
            except SftpProtocolError as exc:
                r._protocol_error(exc)
                return
            if ops:
                r._file_ops(ops)
        r.chan.write(data, datatype)

    def eof_received(self) -> bool:
        """No more output; the exit status may still follow."""
        r = self.relay
        if not r.closed:
            r.eof_sent = True
            r.chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        """Kept until the channel closes."""
        self.relay.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        """Kept until the channel closes."""
        self.relay.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        """The target is not reading: stop reading the engineer."""
        self.relay.hold("client", "up-busy")

    def resume_writing(self) -> None:
        """The target reads again."""
        self.relay.release("client", "up-busy")

    def connection_lost(self, exc: Exception | None) -> None:
        """The upstream channel closed."""
        self.relay.upstream_closed()


def _drop(data: bytes) -> None:
    """A recorder stub before the channel's recorder exists."""
