"""The recording files of one SSH connection: one file per recorded channel, the first at the session's path.

Layout (documented contract for reviewers):

* ``<session>.cast`` (``session.recording_path``) records the first channel that carries data:
  asciicast v2 when it has a terminal, a binary stream (``gateway-binary-stream`` header, see
  ``gateway.recording``) for exec, scp and sftp without one -- the reviewer tools detect which.
* Every further channel of the same connection gets ``<session>.<n>.cast`` (n = 2, 3, ...), same rule;
  the main file carries a marker ``channel <n>: <what> -> <file name>`` pointing at it.
* Markers (made by ``gateway.recording.schema``, the one place that defines them): ``command: <line>``
  (shell lines and exec commands, as judged), ``blocked: ...``, ``sftp: ...``, ``kill: <reason>`` and,
  last in every file, ``session end: <reason>``.
* The SHA-256 of the main file goes into ``session.end``; each side file's into a ``recording.part`` event.
If a connection never opens a channel, the main file is still written (header and end marker only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.recording import AsciicastRecorder, BinaryStreamRecorder, RecordingError, schema
from gateway.sessions import LiveSession

ChannelRecorder = AsciicastRecorder | BinaryStreamRecorder


class SessionRecordings:
    """Opens a recorder per channel and closes them all; a write failure ends the session (fail closed)."""

    def __init__(self, session: LiveSession, on_failure: Callable[[str], None]) -> None:
        self.session = session
        self._on_failure = on_failure
        self._main: ChannelRecorder | None = None
        self._parts: list[tuple[int, ChannelRecorder]] = []
        self._count = 0
        self._closed = False

    def open(self, *, what: str, pty: bool, term: str, width: int, height: int) -> ChannelRecorder:
        """A recorder for a new channel; raises RecordingError when the file cannot be created."""
        if self._closed:
            raise RecordingError("session is closing")
        self._count += 1
        n = self._count
        s = self.session
        path = s.recording_path if n == 1 else s.recording_path.with_name(f"{s.recording_path.stem}.{n}.cast")
        title = f"{s.user}@{s.target.name} ({s.login.user}) session {s.id}" + ("" if n == 1 else f" channel {n}")
        env = {"TERM": term or "", "SHELL": ""}  # the login shell is the server's business; not known here
        wl = s.claims.workload
        if wl is not None:  # a pipeline's recording names its run and workflow in the header
            env.update({"GATEWAY_RUN_ID": wl.get("run_id", ""), "GATEWAY_WORKFLOW": wl.get("workflow", "")})
        rec: ChannelRecorder
        if pty:
            rec = AsciicastRecorder.open(path, width=width or 80, height=height or 24, title=title, env=env,
                                         started_at=s.started_at, on_failure=self._on_failure)  # fmt: skip
        else:
            rec = BinaryStreamRecorder.open(path, title=title, env=env, started_at=s.started_at,
                                            on_failure=self._on_failure, width=width or 80,
                                            height=height or 24)  # fmt: skip
        if n == 1:
            self._main = rec
        else:
            self._parts.append((n, rec))
            if self._main is not None:
                self._main.marker(schema.channel_marker(n, what, path.name))
        return rec

    def marker(self, label: str) -> None:
        """A session-level marker (kill, refused channel requests) in the main file."""
        if self._main is not None:
            self._main.marker(label)

    async def close(self, reason: str) -> str | None:
        """End every file with the end marker; returns the main file's SHA-256 (None if it failed)."""
        if self._closed:
            return None
        if self._main is None:
            try:
                self.open(what="none", pty=True, term="", width=80, height=24)
            except RecordingError:
                pass
        self._closed = True
        for _, rec in self._parts:
            rec.marker(schema.end_marker(reason))
        results = await asyncio.gather(*(rec.close() for _, rec in self._parts), return_exceptions=True)
        for (n, rec), sha in zip(self._parts, results, strict=True):
            if isinstance(sha, BaseException):
                self.session.audit_soon("recording.part", severity="warning", channel=n, path=str(rec.path),
                                        error=str(sha))  # fmt: skip
            else:
                self.session.audit_soon("recording.part", channel=n, path=str(rec.path), recording_sha256=sha)
        if self._main is None:
            return None
        self._main.marker(schema.end_marker(reason))
        try:
            return await self._main.close()
        except RecordingError:
            return None
