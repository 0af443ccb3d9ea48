"""asyncssh's SSH packet layer with less Python per packet (the same bytes on the wire as asyncssh's own).

What `install` changes in ``asyncssh.connection.SSHConnection`` (profiles: docs/benchmarks.md, SSH front end):

* Receiving: asyncssh re-slices its input buffer after every header and every packet, copying all the
  bytes still queued behind it (a 256 KiB read of 32 KiB packets is copied ~4.5 times over). Here the
  parser keeps an offset into the buffer and drops what it consumed once per read (`_recv_data`); an
  AES-GCM packet whose header is still in that buffer is opened straight from a memoryview of it.
* Sending: asyncssh sends an ``SSH_MSG_IGNORE`` before every packet once encryption is on. That is RFC 4251
  section 9.3.1's countermeasure for CBC mode, where the next packet's IV is the last ciphertext block the
  peer has seen, so a chosen-plaintext attacker can test guesses (Rogaway; Dai). AES-GCM (RFC 5647: a fresh
  nonce from a per-packet invocation counter) and chacha20-poly1305 (the sequence number as nonce, fresh
  keystream per packet) have no chained IV, and OpenSSH never sends these. So the IGNORE is skipped for
  those two, and kept for every other cipher (CTR, CBC: the upstream leg may still offer CTR last).
* Padding comes from a pooled `os.urandom` buffer (each byte used once: still the kernel's CSPRNG, never
  zeros or a counter) instead of one ``getrandom`` per packet; the plaintext is joined once, the AES-GCM
  ciphertext is written as it comes out (header and sealed body as two writes of the corked transport).
* The per-packet debug log calls are made only when asyncssh's packet debug level is on (their only effect).
* Memory: asyncssh keeps both KEXINIT payloads (~3.7 KB a connection, two connections a session) for the
  exchange hash of the key exchange they started. Both sides have computed that hash before the peer's
  NEWKEYS arrives, and every later key exchange sends and receives fresh ones, so they are dropped then
  (`_process_newkeys`), unless a new exchange of ours has already begun.

Rekeying, strict kex, compression, the sequence numbers and every packet check are asyncssh's own lines.
Every replaced asyncssh function is fingerprinted (`FINGERPRINTS`): if one changes, `install` leaves asyncssh
as it is and `problems` says which (``tests/ssh/test_packets.py`` fails on such an upgrade).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

from asyncssh import connection, crypto, encryption
from asyncssh.constants import (
    MSG_CHANNEL_FIRST,
    MSG_CHANNEL_LAST,
    MSG_DEBUG,
    MSG_IGNORE,
    MSG_KEX_FIRST,
    MSG_KEX_LAST,
    MSG_KEXINIT,
    MSG_NEWKEYS,
    MSG_SERVICE_ACCEPT,
    MSG_SERVICE_REQUEST,
    MSG_UNIMPLEMENTED,
    MSG_USERAUTH_BANNER,
    MSG_USERAUTH_FIRST,
    MSG_USERAUTH_LAST,
)
from asyncssh.logging import SSHLogger
from asyncssh.misc import CompressionError, DisconnectError, MACError, ProtocolError
from asyncssh.packet import PacketDecodeError, SSHPacket
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.ssh.asyncssh_compat import CorkedTransport

_GCM_ALGS = (b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com")
_TAG = 16
_AEAD = (encryption.GCMEncryption, encryption.ChachaEncryption)
"""Ciphers with a fresh nonce per packet: no MSG_IGNORE before each packet (module docstring)."""
_EMPTY_STRING = bytes(4)  # String(b"")
_NEWKEYS_BLOCKING = {MSG_DEBUG, MSG_SERVICE_REQUEST, MSG_SERVICE_ACCEPT}

FINGERPRINTS = {
    "SSHConnection.send_packet": "fb9da7bec6dd395a2f379f8a0f4dbfc5f194ff80e1ed8630d9a6dbf291359406",
    "SSHConnection._recv_data": "fc4e0735191bb0fdd7fa8f91761067015989bfa47246ac1843c9abaeef7d243f",
    "SSHConnection._recv_pkthdr": "7adc4d88fe20593cef39c00322547733a2d81f0aed40924e6105d5f57aa2a820",
    "SSHConnection._recv_packet": "b3daa22e9763eee9f3ec710d1469c1b54c8df5066bae3e65b66bdf1db8063c8b",
    "GCMCipher": "e389d2b5bed8eb418d7c144f300892f7f37937f78883b753a840e010ffc3eef1",
    "SSHConnection.data_received": "b2d14a83b2604db65c8775264dfbe38e5920ba749ec627134ddbe708cb43974a",
    "SSHConnection._process_newkeys": "a0331fe3cfd09d0b414800a9c59ffef089fa0ee67883957f597d3ccda58160b3",
    "SSHConnection._send_kexinit": "275ddc818b59f44b24a3b9d0ccc8cdd1d283a449f75c5d36e5a57cb70d9d90e3",
    "SSHConnection._process_kexinit": "439bdf2fc55e67370a3e0c1c5e1276fc2c7e95a5fcfb5979914bac461f072666",
    "SSHConnection._finish_recv_packet": "e12d96db58b3524e90032440bfd6f2705a53a3b74caaa121e14b7d164ad2e6de",
}
"""SHA-256 of the source of what `install` replaces or relies on (the callers of `_recv_data`), as reviewed
(asyncssh 2.24.1)."""


class RandomPool:
    """Padding bytes from one `os.urandom` call per 64 KiB; each byte is handed out once."""

    __slots__ = ("_buf", "_off")

    SIZE = 1 << 16

    def __init__(self) -> None:
        self._buf = b""
        self._off = 0

    def take(self, n: int) -> bytes:
        """`n` fresh random bytes (n <= 255: SSH padding)."""
        off = self._off
        end = off + n
        if end > len(self._buf):
            self._buf, off, end = os.urandom(self.SIZE), 0, n
        self._off = end
        return self._buf[off:end]


PADDING = RandomPool()


class FastGCMCipher:
    """AES-GCM as RFC 5647 frames it (the length as associated data), one `AESGCM` per direction, no joins."""

    __slots__ = ("_aead", "_fixed", "_invocation")

    def __init__(self, cipher_name: str, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._invocation = int.from_bytes(iv[4:], "big")

    def _nonce(self) -> bytes:
        """This packet's nonce, and the invocation counter moved on (RFC 5647 section 7.1)."""
        inv = self._invocation
        self._invocation = (inv + 1) & 0xFFFFFFFFFFFFFFFF
        return self._fixed + inv.to_bytes(8, "big")

    def seal(self, header: bytes, data: bytes) -> bytes:
        """Ciphertext followed by the tag."""
        return self._aead.encrypt(self._nonce(), data, header)

    def open(self, header: bytes | memoryview, sealed: bytes | memoryview) -> bytes | None:
        """The plaintext of ciphertext + tag, or None when the tag does not verify."""
        try:
            return self._aead.decrypt(self._nonce(), sealed, header)
        except InvalidTag:
            return None

    # asyncssh.crypto.GCMCipher's interface, for asyncssh's own callers of the shim
    def encrypt_and_sign(self, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        """Header + ciphertext, and the tag."""
        sealed = self.seal(header, data)
        return header + sealed[:-_TAG], sealed[-_TAG:]

    def verify_and_decrypt(self, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        """The plaintext, or None when the tag does not verify."""
        return self.open(header, data + mac)


class FastGCMEncryption(encryption.GCMEncryption):
    """asyncssh's packet shim for AES-GCM, with `FastGCMCipher` inside."""

    _cipher: FastGCMCipher  # type: ignore[assignment]

    @classmethod
    def new(cls, cipher_name: str, key: bytes, iv: bytes, mac_alg: bytes = b"", mac_key: bytes = b"",
            etm: bool = False) -> FastGCMEncryption:  # fmt: skip
        """A shim for one direction of a connection (no separate MAC)."""
        return cls(FastGCMCipher(cipher_name, key, iv))  # type: ignore[arg-type]  # GCMCipher's methods


def _packet_log_on() -> bool:
    """Whether asyncssh would log packets at all (its ``SSHLogger.packet`` checks the same)."""
    return SSHLogger._debug_level >= 3


# -- replacements for asyncssh.connection.SSHConnection methods (`self` is the connection) ------------------


def _recv_data(self: Any) -> None:
    """asyncssh's, then drop the input consumed by this pass in one slice."""
    self._reset_keepalive_timer()
    try:
        while self._inpbuf and self._recv_handler():
            pass
    except DisconnectError as exc:
        self._send_disconnect(exc.code, exc.reason, exc.lang)
        self._force_close(exc)
    except Exception:
        self.internal_error()
    finally:
        if self._gw_off:
            self._inpbuf = self._inpbuf[self._gw_off :]
            self._gw_off = 0
        self._gw_hdr = -1


def _recv_pkthdr(self: Any) -> bool:
    """asyncssh's, reading at the offset."""
    off = self._gw_off
    end = off + self._recv_blocksize
    if len(self._inpbuf) < end:
        return False
    self._packet = self._inpbuf[off:end]
    self._gw_hdr = off
    self._gw_off = end
    if self._recv_encryption:
        self._packet, pktlen = self._recv_encryption.decrypt_header(self._recv_seq, self._packet, 4)
    else:
        pktlen = self._packet[:4]
    self._pktlen = int.from_bytes(pktlen, "big")
    if self._pktlen > self._max_recv_pktlen:
        raise ProtocolError("Max packet size exceeded")
    self._recv_handler = self._recv_packet
    return True


def _recv_packet(self: Any) -> bool:
    """asyncssh's, reading at the offset; AES-GCM opened in place when the header is in this buffer."""
    rem = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize
    off = self._gw_off
    buf = self._inpbuf
    if len(buf) < off + rem:
        return False
    seq = self._recv_seq
    enc = self._recv_encryption
    if enc:
        hdr = self._gw_hdr
        if hdr >= 0 and type(enc) is FastGCMEncryption:
            view = memoryview(buf)
            packet_data = enc._cipher.open(view[hdr : hdr + 4], view[hdr + 4 : off + rem])
        else:
            macsize = self._recv_macsize
            rest = buf[off : off + rem - macsize]
            mac = buf[off + rem - macsize : off + rem]
            packet_data = enc.decrypt_packet(seq, self._packet, rest, 4, mac)
        if not packet_data:
            raise MACError("MAC verification failed")
    else:
        packet_data = self._packet[4:] + buf[off : off + rem]
    self._gw_off = off + rem
    self._gw_hdr = -1
    self._packet = b""

    # From here on, asyncssh's lines (the packet log call only when packet logging is on).
    orig_payload = packet_data[1 : -packet_data[0]]
    if self._decompressor and (self._auth_complete or not self._decompress_after_auth):
        payload = self._decompressor.decompress(orig_payload)
        if payload is None:
            raise CompressionError("Decompression failed")
    else:
        payload = orig_payload

    packet = SSHPacket(payload)
    pkttype = packet.get_byte()
    handler: Any = self
    skip_reason = ""
    exc_reason = ""

    if MSG_KEX_FIRST <= pkttype <= MSG_KEX_LAST:
        if self._kex:
            if self._ignore_first_kex:  # pragma: no cover
                skip_reason = "ignored first kex"
                self._ignore_first_kex = False
            else:
                handler = self._kex
        else:
            skip_reason = "kex not in progress"
            exc_reason = "Key exchange not in progress"
    elif self._strict_kex and not self._recv_encryption and MSG_IGNORE <= pkttype <= MSG_DEBUG:
        skip_reason = "strict kex violation"
        exc_reason = f"Strict key exchange violation: unexpected packet type {pkttype} received"
    elif MSG_USERAUTH_FIRST <= pkttype <= MSG_USERAUTH_LAST:
        if self._auth:
            handler = self._auth
        else:
            skip_reason = "auth not in progress"
            exc_reason = "Authentication not in progress"
    elif pkttype > MSG_KEX_LAST and not self._recv_encryption:
        skip_reason = "invalid request before kex complete"
        exc_reason = "Invalid request before key exchange was complete"
    elif pkttype > MSG_USERAUTH_LAST and not self._auth_complete:
        skip_reason = "invalid request before auth complete"
        exc_reason = "Invalid request before authentication was complete"
    elif MSG_CHANNEL_FIRST <= pkttype <= MSG_CHANNEL_LAST:
        try:
            recv_chan = packet.get_uint32()
        except PacketDecodeError:
            skip_reason = "incomplete channel request"
            exc_reason = "Incomplete channel request received"
        else:
            try:
                handler = self._channels[recv_chan]
            except KeyError:
                skip_reason = "invalid channel number"
                exc_reason = f"Invalid channel number {recv_chan} received"

    if _packet_log_on():
        handler.log_received_packet(pkttype, seq, packet, skip_reason)

    if not skip_reason:
        try:
            result = handler.process_packet(pkttype, seq, packet)
        except PacketDecodeError as exc:
            raise ProtocolError(str(exc)) from None

        if inspect.isawaitable(result):
            # Buffer received data until current packet is processed
            self._recv_handler = lambda: False
            task = self.create_task(result)
            task.add_done_callback(functools.partial(self._finish_recv_packet, pkttype, seq, is_async=True))
            return False
        elif not result:
            if self._strict_kex and not self._recv_encryption:
                exc_reason = f"Strict key exchange violation: unexpected packet type {pkttype} received"
            else:
                self.logger.debug1("Unknown packet type %d received", pkttype)
                self.send_packet(MSG_UNIMPLEMENTED, seq.to_bytes(4, "big"))

    if exc_reason:
        raise ProtocolError(exc_reason)

    self._finish_recv_packet(pkttype, seq)
    return True


def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
    """asyncssh's, without the MSG_IGNORE for AEAD ciphers, pooled padding, and one join of the plaintext."""
    if (
        self._auth_complete
        and self._kex_complete
        and (
            self._rekey_bytes_sent >= self._rekey_bytes
            or (self._rekey_seconds and time.monotonic() >= self._rekey_time)
        )
    ):
        self._send_kexinit()
        self._kexinit_sent = True

    if (
        ((pkttype in _NEWKEYS_BLOCKING or pkttype > MSG_KEX_LAST) and not self._kex_complete)
        or (pkttype == MSG_USERAUTH_BANNER and not (self._auth_in_progress or self._auth_complete))
        or (pkttype > MSG_USERAUTH_LAST and not self._auth_complete)
    ):
        self._deferred_packets.append((pkttype, args))
        return

    enc = self._send_encryption
    # CBC's chained IV is what the IGNORE defends (module docstring): kept for all but the AEAD ciphers.
    if enc and pkttype > MSG_KEX_LAST and not isinstance(enc, _AEAD):
        self.send_packet(MSG_IGNORE, _EMPTY_STRING)

    kind = pkttype.to_bytes(1, "big")
    if self._compressor and (self._auth_complete or not self._compress_after_auth):
        orig_payload = kind + b"".join(args)
        payload = self._compressor.compress(orig_payload)
        if payload is None:  # pragma: no cover
            raise CompressionError("Compression failed")
        size = len(payload)
        parts: list[bytes] = [payload]
    else:
        orig_payload = b""
        size = 1 + sum(map(len, args))
        parts = [kind, *args]

    padlen = -(self._send_enchdrlen + size) % self._send_blocksize
    if padlen < 4:
        padlen += self._send_blocksize

    packet = b"".join((padlen.to_bytes(1, "big"), *parts, PADDING.take(padlen)))
    pktlen = len(packet)
    hdr = pktlen.to_bytes(4, "big")
    seq = self._send_seq

    if type(enc) is FastGCMEncryption:
        sealed = enc._cipher.seal(hdr, packet)
        if type(self._transport) is CorkedTransport:  # both go out in the same writev
            self._send(hdr)
            self._send(sealed)
        else:
            self._send(hdr + sealed)
    elif enc:
        packet, mac = enc.encrypt_packet(seq, hdr, packet)
        self._send(packet + mac)
    else:
        self._send(hdr + packet)

    if self._send_seq == 0xFFFFFFFF and not self._send_encryption:
        self._send_seq = 0
        raise ProtocolError("Sequence rollover before kex complete")

    if pkttype == MSG_NEWKEYS and self._strict_kex:
        self._send_seq = 0
    else:
        self._send_seq = (seq + 1) & 0xFFFFFFFF

    if self._kex_complete:
        self._rekey_bytes_sent += pktlen

    if _packet_log_on():
        if not orig_payload:
            orig_payload = kind + b"".join(args)
        (handler or self).log_sent_packet(pkttype, seq, orig_payload)


def _process_newkeys(self: Any, pkttype: int, pktid: int, packet: SSHPacket) -> None:
    """asyncssh's, then the KEXINIT payloads go (module docstring) unless a new KEXINIT of ours is out."""
    _ORIGINAL_NEWKEYS(self, pkttype, pktid, packet)
    if not self._kexinit_sent:
        self._client_kexinit = self._server_kexinit = b""


_HANDLERS: dict[int, Callable[..., Any]] = connection.SSHConnection._packet_handlers
_ORIGINAL_NEWKEYS = _HANDLERS[MSG_NEWKEYS]

_REPLACED: dict[str, tuple[Any, str, Callable[..., Any]]] = {
    "SSHConnection.send_packet": (connection.SSHConnection, "send_packet", send_packet),
    "SSHConnection._recv_data": (connection.SSHConnection, "_recv_data", _recv_data),
    "SSHConnection._recv_pkthdr": (connection.SSHConnection, "_recv_pkthdr", _recv_pkthdr),
    "SSHConnection._recv_packet": (connection.SSHConnection, "_recv_packet", _recv_packet),
}
_ORIGINAL = {name: getattr(owner, attr) for name, (owner, attr, _) in _REPLACED.items()}
_RELIED: dict[str, Any] = {
    "GCMCipher": crypto.GCMCipher,
    "SSHConnection._process_newkeys": _ORIGINAL_NEWKEYS,
    "SSHConnection._send_kexinit": connection.SSHConnection._send_kexinit,
    "SSHConnection._process_kexinit": _HANDLERS[MSG_KEXINIT],
    "SSHConnection.data_received": connection.SSHConnection.data_received,
    "SSHConnection._finish_recv_packet": connection.SSHConnection._finish_recv_packet,
}


def fingerprint(obj: Any) -> str:
    """SHA-256 of an object's source text."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def problems() -> list[str]:
    """What no longer matches the asyncssh code `install` replaces (empty: all as reviewed)."""
    found: list[str] = []
    originals = {**_ORIGINAL, **_RELIED}
    for name, obj in originals.items():
        if fingerprint(obj) != FINGERPRINTS[name]:
            found.append(f"asyncssh {name} changed since it was reviewed: packets.install left asyncssh's own")
    params = getattr(encryption, "_enc_params", None)
    if not isinstance(params, dict) or any(params.get(alg, (None,))[0] not in _GCM_SHIMS for alg in _GCM_ALGS):
        found.append("asyncssh's cipher table has no AES-GCM entries as expected")
    return found


_GCM_SHIMS = (encryption.GCMEncryption, FastGCMEncryption)


def install() -> bool:
    """Swap the replacements into asyncssh; False (and asyncssh left as it is) if it changed under us."""
    if problems():
        return False
    conn_cls: Any = connection.SSHConnection
    conn_cls._gw_off = 0  # class defaults: a connection gets its own only once it parses a packet
    conn_cls._gw_hdr = -1
    for owner, attr, new in _REPLACED.values():
        setattr(owner, attr, new)
    _HANDLERS[MSG_NEWKEYS] = _process_newkeys
    params: dict[bytes, tuple[Any, str]] = encryption._enc_params
    for alg in _GCM_ALGS:
        params[alg] = (FastGCMEncryption, params[alg][1])
    return True


def installed() -> bool:
    """Whether `install` has run."""
    return connection.SSHConnection.send_packet is send_packet
