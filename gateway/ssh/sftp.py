"""Sans-IO SFTP v3 policy filter: frames both directions, refuses writes in read-only mode, accounts file I/O.

Client requests are parsed whole (they are small, apart from WRITE); refused requests are answered
here with SSH_FXP_STATUS PERMISSION_DENIED and never reach the server. Server replies are only
framed, not copied: the filter looks at HANDLE replies (to learn which handle is which path) and at
DATA reply sizes (bytes read per handle), then the caller forwards the bytes it received unchanged.

Packet framing (draft-ietf-secsh-filexfer-02): uint32 length, byte type, then for every type but
INIT/VERSION a uint32 request id. Strings are uint32 length + bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = range(11, 21)
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201

FX_OK, FX_FAILURE, FX_BAD_MESSAGE, FX_PERMISSION_DENIED = 0, 4, 5, 3
PF_READ, PF_WRITE, PF_APPEND, PF_CREAT, PF_TRUNC, PF_EXCL = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
PF_MODIFY = PF_WRITE | PF_APPEND | PF_CREAT | PF_TRUNC | PF_EXCL

MAX_PACKET = 256 * 1024 + 1024
"""OpenSSH's sftp-server refuses messages over 256 KiB; anything bigger is not SFTP."""

_WRITE_TYPES = {
    REMOVE: "remove", RENAME: "rename", MKDIR: "mkdir", RMDIR: "rmdir", SETSTAT: "setstat",
    FSETSTAT: "fsetstat", SYMLINK: "symlink", WRITE: "write",
}  # fmt: skip
# Extensions that only read. Everything else (posix-rename, hardlink, lsetstat, copy-data, fsync...)
# may modify the server and is refused in read-only mode.
_READ_EXTENSIONS = frozenset({
    "statvfs@openssh.com", "fstatvfs@openssh.com", "limits@openssh.com", "expand-path@openssh.com",
    "home-directory", "users-groups-by-id@openssh.com",
})  # fmt: skip
_U32 = struct.Struct(">I")


class SftpProtocolError(Exception):
    """The channel does not carry valid SFTP: the caller closes it."""


@dataclass(frozen=True, slots=True)
class FileOp:
    """One file operation, for the audit log: op, path(s), allowed or refused, bytes moved."""

    op: str
    path: str
    allowed: bool
    target: str = ""
    flags: int = 0
    read: int = 0
    written: int = 0


@dataclass
class _Handle:
    path: str
    op: str
    flags: int = 0
    read: int = 0
    written: int = 0


@dataclass
class _Pending:
    kind: str  # "open" (waiting for a HANDLE) or "read" (waiting for DATA)
    path: str = ""
    op: str = ""
    flags: int = 0
    handle: bytes = b""


@dataclass
class SftpResult:
    """What to do with a chunk of client data."""

    forward: bytes = b""  # to the server
    reply: bytes = b""  # answers made here, to the client
    ops: list[FileOp] = field(default_factory=list)


class _Reader:
    """Cursor over one packet body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int) -> None:
        self.data = data
        self.pos = pos

    def u32(self) -> int:
        """Read a uint32."""
        if self.pos + 4 > len(self.data):
            raise SftpProtocolError("truncated packet")
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(v)

    def string(self) -> bytes:
        """Read an SSH string (uint32 length + bytes)."""
        n = self.u32()
        if self.pos + n > len(self.data):
            raise SftpProtocolError("truncated string")
        s = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return s


def _path(raw: bytes) -> str:
    """A path for the audit log (undecodable bytes kept visible as escapes)."""
    return raw.decode("utf-8", "backslashreplace")


def status_packet(req_id: int, code: int, message: str) -> bytes:
    """SSH_FXP_STATUS: id, code, message, language tag."""
    msg = message.encode()
    body = bytes([STATUS]) + _U32.pack(req_id) + _U32.pack(code) + _U32.pack(len(msg)) + msg + _U32.pack(0)
    return _U32.pack(len(body)) + body


class SftpFilter:
    """Policy and accounting for one sftp channel; `read_only` refuses every modifying request."""

    def __init__(self, *, read_only: bool) -> None:
        self.read_only = read_only
        self._cbuf = bytearray()
        self._sbuf = bytearray()
        self._s_skip = 0  # bytes of a server packet body still to pass over
        self._s_want = 5  # bytes of the current reply's start the filter needs
        self._handles: dict[bytes, _Handle] = {}
        self._pending: dict[int, _Pending] = {}

    # -- client -> server ---------------------------------------------------------------------

    def client_data(self, data: bytes) -> SftpResult:
        """Frame client requests; returns what to forward, what to answer, and operations seen."""
        buf = self._cbuf
        buf += data
        res = SftpResult()
        forward: list[bytes] = []
        replies: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _U32.unpack_from(buf, pos)
            if length < 1 or length > MAX_PACKET:
                raise SftpProtocolError(f"bad packet length {length}")
            end = pos + 4 + length
            if end > len(buf):
                break
            packet = bytes(buf[pos:end])
            refusal = self._request(packet, res.ops)
            if refusal is None:
                forward.append(packet)
            else:
                replies.append(refusal)
            pos = end
        del buf[:pos]
        res.forward = b"".join(forward)
        res.reply = b"".join(replies)
        return res

    def _request(self, packet: bytes, ops: list[FileOp]) -> bytes | None:
        """Look at one request; returns a STATUS reply when it is refused here."""
        ptype = packet[4]
        if ptype == INIT:
            return None
        r = _Reader(packet, 5)
        req_id = r.u32()
        if ptype == OPEN:
            path = _path(r.string())
            flags = r.u32()
            modifying = bool(flags & PF_MODIFY)
            op = "open-write" if modifying else "open-read"
            if modifying and self.read_only:
                ops.append(FileOp(op, path, False, flags=flags))
                return status_packet(req_id, FX_PERMISSION_DENIED, "read-only scope: file not opened for writing")
            self._pending[req_id] = _Pending("open", path, op, flags)
        elif ptype == OPENDIR:
            self._pending[req_id] = _Pending("open", _path(r.string()), "opendir")
        elif ptype == READ:
            handle = r.string()
            self._pending[req_id] = _Pending("read", handle=handle)
        elif ptype == CLOSE:
            handle = r.string()
            h = self._handles.pop(handle, None)
            if h is not None:
                ops.append(FileOp(h.op, h.path, True, flags=h.flags, read=h.read, written=h.written))
        elif ptype in _WRITE_TYPES:
            return self._modifying(ptype, req_id, r, ops)
        elif ptype == EXTENDED:
            name = r.string().decode("ascii", "replace")
            if self.read_only and name not in _READ_EXTENSIONS:
                ops.append(FileOp(f"extended:{name}", "", False))
                return status_packet(req_id, FX_PERMISSION_DENIED, f"read-only scope: {name} refused")
        return None

    def _modifying(self, ptype: int, req_id: int, r: _Reader, ops: list[FileOp]) -> bytes | None:
        """REMOVE, RENAME, MKDIR, RMDIR, SETSTAT, FSETSTAT, SYMLINK, WRITE."""
        op = _WRITE_TYPES[ptype]
        target = ""
        if ptype in (WRITE, FSETSTAT):
            handle = r.string()
            h = self._handles.get(handle)
            path = h.path if h else "<unknown handle>"
            if ptype == WRITE and not self.read_only:
                r.pos += 8  # offset
                size = r.u32()
                if h is not None:
                    h.written += size
                return None
        else:
            path = _path(r.string())
            if ptype in (RENAME, SYMLINK):
                target = _path(r.string())
        if self.read_only:
            ops.append(FileOp(op, path, False, target=target))
            return status_packet(req_id, FX_PERMISSION_DENIED, f"read-only scope: {op} refused")
        ops.append(FileOp(op, path, True, target=target))
        return None

    # -- server -> client ---------------------------------------------------------------------

    def server_data(self, data: bytes) -> list[FileOp]:
        """Frame server replies (the caller forwards `data` itself); returns operations completed."""
        ops: list[FileOp] = []
        view = memoryview(data)
        pos, n = 0, len(view)
        buf = self._sbuf
        while pos < n:
            if self._s_skip:
                step = min(self._s_skip, n - pos)
                self._s_skip -= step
                pos += step
                continue
            want = self._s_want if len(buf) >= 5 else 5
            take = view[pos : pos + want - len(buf)]
            buf += take
            pos += len(take)
            if len(buf) == 5:
                self._s_want = want = self._header_size(buf)
            if len(buf) >= want:
                self._server_header(bytes(buf), ops)
                del buf[:]
        return ops

    @staticmethod
    def _header_size(head: bytearray) -> int:
        """How many leading bytes of a reply the filter needs to see (the rest is passed over)."""
        length = int(_U32.unpack_from(head, 0)[0])
        if length < 1 or length > MAX_PACKET + 64 * 1024:
            raise SftpProtocolError(f"bad reply length {length}")
        ptype = head[4]
        if ptype == HANDLE:
            if length > 4096:
                raise SftpProtocolError("oversized HANDLE reply")
            want = 4 + length
        elif ptype == DATA:
            want = 13
        elif ptype in (STATUS, NAME, ATTRS, EXTENDED_REPLY):
            want = 9
        else:
            want = 5
        return min(want, 4 + length)

    def _server_header(self, head: bytes, ops: list[FileOp]) -> None:
        """Account one reply from its first bytes; the remaining body is skipped."""
        (length,) = _U32.unpack_from(head, 0)
        ptype = head[4]
        self._s_skip = 4 + length - len(head)
        if len(head) < 9:
            return
        req_id = _U32.unpack_from(head, 5)[0]
        p = self._pending.pop(req_id, None)
        if p is None:
            return
        if ptype == HANDLE and p.kind == "open":
            handle = _Reader(head, 9).string()
            self._handles[handle] = _Handle(p.path, p.op, p.flags)
        elif ptype == DATA and p.kind == "read" and len(head) >= 13:
            h = self._handles.get(p.handle)
            if h is not None:
                h.read += _U32.unpack_from(head, 9)[0]
        elif ptype == STATUS and p.kind == "open" and p.op == "open-write":
            ops.append(FileOp(p.op, p.path, True, flags=p.flags))  # refused by the server, still an attempt
