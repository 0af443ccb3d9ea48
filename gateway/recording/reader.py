"""The one reader of recording files: typed events out of SQL JSON lines, asciicast and binary streams.

Used by replay, ``gateway show``, ``gateway search`` and the console. Reading never fails on damage: a line
that does not parse is skipped with a warning naming it (a cut-off recording is evidence too, and
``gateway audit verify`` reports the damage); only a file that is not a recording of the expected kind
raises RecordingError. Records what `schema` says; a newer ``recording_version`` is read with a warning.
"""

from __future__ import annotations

import codecs
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from gateway.recording import blocks, schema
from gateway.recording.schema import SqlEvent, SqlHeader, Statement, TermEvent, TermHeader
from gateway.recording.writer import RecordingError

FRAME = struct.Struct(">cII")
_READ_CHUNK = 1 << 20
_MAX_HEADER = 1 << 20


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


def _newer(version: int, warnings: list[str]) -> None:
    """Warn once about a file written by a newer gateway."""
    if version > schema.RECORDING_VERSION:
        warnings.append(f"recording_version {version} is newer than this reader's {schema.RECORDING_VERSION}: "
                        "what it does not know is skipped")  # fmt: skip


# -- SQL recordings ------------------------------------------------------------------------------------------------


def sql_lines(path: Path, warnings: list[str]) -> Iterator[SqlHeader | Statement | SqlEvent]:
    """The header (when the first line is one), then every event of a SQL recording, in order."""
    version = schema.LEGACY_VERSION
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            torn = not line.endswith(b"\n")
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                what = "is torn (recording cut off)" if torn else "does not parse as a JSON object"
                warnings.append(f"line {lineno} {what}: skipped")
                continue
            if torn:
                warnings.append(f"line {lineno} lacks its newline (recording cut off)")
            if lineno == 1 and obj.get("type") == schema.HEADER:
                header = schema.sql_header(obj)
                version = header.version
                _newer(version, warnings)
                yield header
                continue
            yield schema.sql_event(obj, version)


def statements(path: Path, warnings: list[str] | None = None) -> Iterator[Statement]:
    """Only the statements of a SQL recording."""
    for ev in sql_lines(path, [] if warnings is None else warnings):
        if isinstance(ev, Statement):
            yield ev


# -- binary streams ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One frame of a binary stream recording."""

    stream: str
    t: float
    data: bytes


def _binary_header(path: Path) -> tuple[dict[str, Any], int] | None:
    """A binary stream's header and its length in bytes, or None when the file is not one."""
    with open(path, "rb") as f:
        line = f.readline(_MAX_HEADER)
    try:
        header = json.loads(line) if line.endswith(b"\n") else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != schema.BINARY_FORMAT:
        return None
    return header, len(line)


def read_binary_stream(src: Path) -> tuple[dict[str, Any], Iterator[Frame]]:
    """Open a binary stream recording: its header and an iterator of frames (compressed blocks opened).

    The iterator raises RecordingError after the last whole frame if the file ends in a torn one, or at a
    compressed block that does not decompress (or whose codec this reader does not know).
    """
    found = _binary_header(src)
    if found is None:
        raise RecordingError("not a binary stream recording")
    header, start = found
    codec = header.get("compression")

    def frames() -> Iterator[Frame]:
        with open(src, "rb") as f:
            offset = f.seek(start)
            while True:
                head = f.read(FRAME.size)
                if not head:
                    return
                if len(head) < FRAME.size:
                    raise RecordingError(f"torn frame header at offset {offset}")
                stream, t_ms, length = FRAME.unpack(head)
                data = f.read(length)
                if len(data) < length:
                    raise RecordingError(f"torn frame at offset {offset}")
                if stream == blocks.STREAM:
                    yield from _block_frames(data, codec, offset)
                else:
                    yield Frame(stream.decode("latin-1"), t_ms / 1000, data)
                offset += FRAME.size + length

    return header, frames()


def _block_frames(data: bytes, codec: object, offset: int) -> Iterator[Frame]:
    """The frames of one compressed block (at `offset` in the file)."""
    if codec != blocks.CODEC:
        raise RecordingError(f"compressed block at offset {offset} with unknown compression {codec!r}")
    try:
        raw = blocks.unpack(data)
    except ValueError as exc:
        raise RecordingError(f"damaged compressed block at offset {offset}: {exc}") from None
    view = memoryview(raw)
    pos = 0
    while pos < len(raw):
        if pos + FRAME.size > len(raw):
            raise RecordingError(f"torn frame header inside the block at offset {offset}")
        stream, t_ms, length = FRAME.unpack_from(raw, pos)
        pos += FRAME.size
        if stream == blocks.STREAM or pos + length > len(raw):
            raise RecordingError(f"malformed frame inside the block at offset {offset}")
        yield Frame(stream.decode("latin-1"), t_ms / 1000, bytes(view[pos : pos + length]))
        pos += length


def is_binary(path: Path) -> bool:
    """True for a binary stream recording (JSON header line with its format name)."""
    try:
        return _binary_header(path) is not None
    except OSError:
        return False


def _frame_events(frames: Iterator[Frame], warnings: list[str]) -> Iterator[TermEvent]:
    """Frames as terminal events: stdout and stderr both become ``o``, stdin ``i``."""
    decoders = {s: _decoder() for s in "oei"}
    t = 0.0
    try:
        for frame in frames:
            t = frame.t
            if frame.stream in decoders:
                text = decoders[frame.stream].decode(frame.data)
                if text:
                    yield TermEvent(t, "i" if frame.stream == "i" else "o", text)
            elif frame.stream in ("m", "r"):
                yield TermEvent(t, frame.stream, frame.data.decode("utf-8", "replace"))
    except RecordingError as exc:
        warnings.append(f"{exc} (recording cut off): the rest is skipped")
    for stream, decoder in decoders.items():
        tail = decoder.decode(b"", final=True)
        if tail:
            yield TermEvent(t, "i" if stream == "i" else "o", tail)


def binary_to_asciicast(src: Path, out: IO[str]) -> bool:
    """Write an asciicast v2 version of a binary stream recording to `out`.

    Returns False if the recording ends in a torn frame (everything before it is converted).
    """
    header, frames = read_binary_stream(src)
    head = schema.term_header(header, binary=True)
    out.write(schema.cast_header(width=head.width, height=head.height, timestamp=head.timestamp or 0,
                                 title=head.title, env=head.env))  # fmt: skip
    warnings: list[str] = []
    for ev in _frame_events(frames, warnings):
        out.write(schema.cast_event(ev.t, ev.code, ev.data))
    return not warnings


# -- terminal recordings -----------------------------------------------------------------------------------------------


class TerminalReader:
    """Events of a terminal recording (asciicast or binary stream), also while it is still being written.

    `read()` returns the events of every complete line appended since the last call (a binary stream is read
    whole at the first call: it is not followed live); `finish()` the last line if it lacks its newline.
    Raises RecordingError when the file is not a terminal recording.
    """

    def __init__(self, path: Path, warnings: list[str]) -> None:
        self.path = path
        self.warnings = warnings
        self.header: TermHeader | None = None
        self._binary = is_binary(path)
        self._f: IO[bytes] | None = None if self._binary else open(path, "rb")  # closed by close()
        self._partial = b""
        self._lineno = 0
        self._done = False

    @property
    def binary(self) -> bool:
        """A binary stream (read whole, not followed)."""
        return self._binary

    def __enter__(self) -> TerminalReader:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def read(self) -> list[TermEvent]:
        """The events of the complete lines appended since the last call."""
        if self._binary:
            if self._done:
                return []
            self._done = True
            header, frames = read_binary_stream(self.path)
            self.header = schema.term_header(header, binary=True)
            _newer(self.header.version, self.warnings)
            return list(_frame_events(frames, self.warnings))
        assert self._f is not None
        events: list[TermEvent] = []
        while chunk := self._f.read(_READ_CHUNK):
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for line in complete:
                self._lineno += 1
                ev = self._line(line, self._lineno)
                if ev is not None:
                    events.append(ev)
            if len(events) > 1000:
                break
        return events

    def finish(self) -> list[TermEvent]:
        """The last line if it lacks its newline: kept if it parses, else reported as torn."""
        if self._binary:
            return []
        if self.header is None:
            raise RecordingError("not an asciicast recording (no complete header line)")
        tail, lineno = self._partial, self._lineno + 1
        self._partial = b""
        if not tail:
            return []
        ev = _event(tail)
        if ev is None:
            self.warnings.append(f"line {lineno} is torn (recording cut off): skipped")
            return []
        self.warnings.append(f"line {lineno} lacks its newline (recording cut off)")
        return [ev]

    def _line(self, line: bytes, lineno: int) -> TermEvent | None:
        """The header (first line) or one event."""
        if self.header is None:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                raise RecordingError("not an asciicast recording (first line is not a JSON header)")
            if obj.get("version") != schema.ASCIICAST_VERSION:
                self.warnings.append(f"asciicast version {obj.get('version')!r}, expected 2")
            self.header = schema.term_header(obj)
            _newer(self.header.version, self.warnings)
            return None
        ev = _event(line)
        if ev is None:
            self.warnings.append(f"line {lineno} does not parse as an asciicast event: skipped")
        return ev


def _event(line: bytes) -> TermEvent | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return schema.term_event(obj)


def terminal_events(path: Path, warnings: list[str]) -> Iterator[TermEvent]:
    """All events of a complete terminal recording (asciicast or binary stream)."""
    with TerminalReader(path, warnings) as reader:
        while batch := reader.read():
            yield from batch
        yield from reader.finish()


def commands(path: Path, warnings: list[str] | None = None) -> Iterator[tuple[float, str]]:
    """(t, line) of every command line the policy judged in a terminal recording (its ``command:`` markers)."""
    for ev in terminal_events(path, [] if warnings is None else warnings):
        m = ev.marker
        if m is not None and m.kind == schema.COMMAND:
            yield ev.t, m.text
