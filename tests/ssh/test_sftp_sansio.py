"""The SFTP v3 filter on bytes alone: framing, refusals answered locally, accounting, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ssh import sftp as s


def pkt(ptype: int, *fields: bytes | int, req_id: int | None = None) -> bytes:
    body = bytes([ptype])
    if req_id is not None:
        body += struct.pack(">I", req_id)
    for f in fields:
        body += struct.pack(">I", f) if isinstance(f, int) else struct.pack(">I", len(f)) + f
    return struct.pack(">I", len(body)) + body


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def raw(ptype: int, req_id: int, payload: bytes) -> bytes:
    body = bytes([ptype]) + struct.pack(">I", req_id) + payload
    return struct.pack(">I", len(body)) + body


INIT = struct.pack(">IBI", 5, s.INIT, 3)
NO_ATTRS = 0  # ATTRS with flags 0


def open_req(req_id: int, path: bytes, flags: int) -> bytes:
    return pkt(s.OPEN, path, flags, NO_ATTRS, req_id=req_id)


def status_code(reply: bytes) -> tuple[int, int]:
    assert reply[4] == s.STATUS
    req_id, code = struct.unpack_from(">II", reply, 5)
    return req_id, code


def test_init_and_reads_pass_through() -> None:
    f = s.SftpFilter(read_only=True)
    stream = INIT + open_req(1, b"/etc/hostname", s.PF_READ) + pkt(s.STAT, b"/etc", req_id=2)
    res = f.client_data(stream)
    assert res.forward == stream and res.reply == b""


@pytest.mark.parametrize(
    ("request_bytes", "op"),
    [
        (open_req(7, b"/x", s.PF_WRITE | s.PF_CREAT | s.PF_TRUNC), "open-write"),
        (open_req(7, b"/x", s.PF_READ | s.PF_APPEND), "open-write"),
        (pkt(s.REMOVE, b"/x", req_id=7), "remove"),
        (pkt(s.RENAME, b"/x", b"/y", req_id=7), "rename"),
        (pkt(s.MKDIR, b"/d", NO_ATTRS, req_id=7), "mkdir"),
        (pkt(s.RMDIR, b"/d", req_id=7), "rmdir"),
        (pkt(s.SETSTAT, b"/x", NO_ATTRS, req_id=7), "setstat"),
        (pkt(s.SYMLINK, b"/x", b"/y", req_id=7), "symlink"),
        (pkt(s.EXTENDED, b"posix-rename@openssh.com", b"/x", b"/y", req_id=7), "extended:posix-rename@openssh.com"),
        (pkt(s.EXTENDED, b"hardlink@openssh.com", b"/x", b"/y", req_id=7), "extended:hardlink@openssh.com"),
    ],
)
def test_read_only_refuses_modifications_locally(request_bytes: bytes, op: str) -> None:
    f = s.SftpFilter(read_only=True)
    res = f.client_data(request_bytes)
    assert res.forward == b""
    assert status_code(res.reply) == (7, s.FX_PERMISSION_DENIED)
    assert [(o.op, o.allowed) for o in res.ops] == [(op, False)]


def test_read_write_passes_modifications_and_audits_them() -> None:
    f = s.SftpFilter(read_only=False)
    req = pkt(s.RENAME, b"/a", b"/b", req_id=3)
    res = f.client_data(req)
    assert res.forward == req and res.reply == b""
    assert res.ops[0].op == "rename" and res.ops[0].path == "/a" and res.ops[0].target == "/b"


def test_statvfs_is_allowed_in_read_only() -> None:
    f = s.SftpFilter(read_only=True)
    req = pkt(s.EXTENDED, b"statvfs@openssh.com", b"/", req_id=4)
    assert f.client_data(req).forward == req


def read_req(req_id: int, handle: bytes, offset: int, length: int) -> bytes:
    return raw(s.READ, req_id, struct.pack(">I", len(handle)) + handle + u64(offset) + struct.pack(">I", length))


def test_read_bytes_accounted_per_handle_and_reported_at_close() -> None:
    reply = pkt(s.DATA, b"x" * 32768, req_id=2) + pkt(s.DATA, b"y" * 100, req_id=3)
    # Replies split at every possible point still account the same.
    for cut in (1, 5, 12, 13, 14, 32780, len(reply) - 1):
        g = s.SftpFilter(read_only=True)
        g.client_data(open_req(1, b"/data.bin", s.PF_READ))
        g.server_data(pkt(s.HANDLE, b"H1", req_id=1))
        g.client_data(read_req(2, b"H1", 0, 32768) + read_req(3, b"H1", 32768, 32768))
        g.server_data(reply[:cut])
        g.server_data(reply[cut:])
        (op,) = g.client_data(pkt(s.CLOSE, b"H1", req_id=4)).ops
        assert (op.op, op.path, op.read) == ("open-read", "/data.bin", 32868)


def test_write_bytes_accounted_in_read_write() -> None:
    f = s.SftpFilter(read_only=False)
    f.client_data(open_req(1, b"/up.txt", s.PF_WRITE | s.PF_CREAT))
    f.server_data(pkt(s.HANDLE, b"W", req_id=1))
    f.client_data(raw(s.WRITE, 2, struct.pack(">I", 1) + b"W" + u64(0) + struct.pack(">I", 5) + b"hello"))
    (op,) = f.client_data(pkt(s.CLOSE, b"W", req_id=3)).ops
    assert (op.op, op.written) == ("open-write", 5)


def test_write_on_unknown_handle_refused_in_read_only() -> None:
    f = s.SftpFilter(read_only=True)
    res = f.client_data(raw(s.WRITE, 9, struct.pack(">I", 1) + b"Z" + u64(0) + struct.pack(">I", 1) + b"!"))
    assert status_code(res.reply) == (9, s.FX_PERMISSION_DENIED) and res.forward == b""


@pytest.mark.parametrize("bad", [struct.pack(">I", 0), struct.pack(">I", s.MAX_PACKET + 1) + b"\x03"])
def test_bad_lengths_are_protocol_errors(bad: bytes) -> None:
    with pytest.raises(s.SftpProtocolError):
        s.SftpFilter(read_only=True).client_data(bad)


def test_truncated_fields_are_protocol_errors() -> None:
    with pytest.raises(s.SftpProtocolError):
        s.SftpFilter(read_only=True).client_data(raw(s.OPEN, 1, struct.pack(">I", 100) + b"short"))


ids, paths = st.integers(0, 2**32 - 1), st.binary(max_size=40)
ext_names = st.sampled_from([b"statvfs@openssh.com", b"copy-data", b"x"])
requests = st.one_of(
    st.builds(lambda i, p, fl: open_req(i, p, fl), ids, paths, st.integers(0, 63)),
    st.builds(lambda i, p: pkt(s.REMOVE, p, req_id=i), ids, paths),
    st.builds(lambda i, a, b: pkt(s.RENAME, a, b, req_id=i), ids, paths, paths),
    st.builds(lambda i, p: pkt(s.STAT, p, req_id=i), ids, paths),
    st.builds(lambda i, h: pkt(s.CLOSE, h, req_id=i), ids, st.binary(max_size=8)),
    st.builds(lambda i, n: pkt(s.EXTENDED, n, req_id=i), ids, ext_names),
)


@given(st.lists(requests, max_size=12), st.lists(st.integers(0, 2000), max_size=6), st.booleans())
@settings(max_examples=300, deadline=None)
def test_chunking_never_changes_the_outcome(reqs: list[bytes], cuts: list[int], read_only: bool) -> None:
    stream = INIT + b"".join(reqs)
    whole = s.SftpFilter(read_only=read_only).client_data(stream)
    f = s.SftpFilter(read_only=read_only)
    fwd, rep = b"", b""
    ops: list[s.FileOp] = []
    last = 0
    for c in [*sorted(min(c, len(stream)) for c in cuts), len(stream)]:
        res = f.client_data(stream[last:c])
        fwd, rep, ops = fwd + res.forward, rep + res.reply, ops + res.ops
        last = c
    assert (fwd, rep, ops) == (whole.forward, whole.reply, whole.ops)
    if read_only:  # nothing modifying is ever forwarded
        g = s.SftpFilter(read_only=False)
        forwarded_ops = g.client_data(fwd).ops
        assert not [o for o in forwarded_ops if o.op in ("remove", "rename")]


@given(st.binary(max_size=400), st.booleans())
@settings(max_examples=400, deadline=None)
def test_garbage_only_ever_raises_protocol_error(data: bytes, to_server: bool) -> None:
    f = s.SftpFilter(read_only=True)
    try:
        if to_server:
            f.server_data(data)
        else:
            f.client_data(data)
    except s.SftpProtocolError:
        pass
