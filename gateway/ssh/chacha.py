"""chacha20-poly1305@openssh.com with fewer passes per packet than asyncssh's own shim (same bytes on the wire).

OpenSSH's construction: the 4-byte length is encrypted with the second half of the key (ChaCha20, block 0);
the payload with the first half from block 1; the Poly1305 key is block 0's first 32 bytes of that same
stream, and the tag covers encrypted length + encrypted payload. asyncssh builds three ChaCha20 contexts
per packet (length, Poly1305 key, payload) and joins length and payload once more for the tag. Here the
Poly1305 key and the payload come from one context (64 zero bytes, then the payload, continue at block 1),
and the tag is fed in two updates: ~22 % less time per packet (bench in docs/benchmarks.md, SSH).
`install` swaps it in through asyncssh's cipher table (checked by ``asyncssh_compat.check_internals``).
"""

from __future__ import annotations

from asyncssh import encryption
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

ALG = b"chacha20-poly1305@openssh.com"
_BLOCK0 = bytes(64)  # one ChaCha20 block: its first 32 bytes of keystream are the Poly1305 key
_COUNTER0 = bytes(8)  # cryptography's 16-byte ChaCha20 nonce: 8-byte little-endian counter + SSH's 8-byte nonce


class FastChachaCipher:
    """The same interface as ``asyncssh.crypto.ChachaCipher`` (nonce: the packet sequence number, 8 bytes)."""

    __slots__ = ("_adkey", "_key")

    def __init__(self, key: bytes) -> None:
        half = len(key) // 2
        self._key = key[:half]
        self._adkey = key[half:]

    def _payload_stream(self, nonce: bytes) -> tuple[bytes, CipherContext]:
        """The packet's Poly1305 key, and the payload's keystream positioned at block 1."""
        ctx = Cipher(ChaCha20(self._key, _COUNTER0 + nonce), mode=None).encryptor()
        return ctx.update(_BLOCK0)[:32], ctx

    def _tag(self, key: bytes, header: bytes, data: bytes) -> Poly1305:
        mac = Poly1305(key)
        mac.update(header)
        mac.update(data)
        return mac

    def encrypt_and_sign(self, header: bytes, data: bytes, nonce: bytes) -> tuple[bytes, bytes]:
        """Encrypted length + payload, and the tag."""
        header = self.decrypt_header(header, nonce)  # the same XOR with the length key's keystream
        key, ctx = self._payload_stream(nonce)
        data = ctx.update(data)
        return header + data, self._tag(key, header, data).finalize()

    def decrypt_header(self, header: bytes, nonce: bytes) -> bytes:
        """The packet length (ChaCha20 with the second half of the key, block 0)."""
        return Cipher(ChaCha20(self._adkey, _COUNTER0 + nonce), mode=None).encryptor().update(header)

    def verify_and_decrypt(self, header: bytes, data: bytes, nonce: bytes, tag: bytes) -> bytes | None:
        """The payload, or None when the tag does not verify (nothing is decrypted then)."""
        key, ctx = self._payload_stream(nonce)
        try:
            self._tag(key, header, data).verify(tag)
        except InvalidSignature:
            return None
        return ctx.update(data)


class FastChachaEncryption(encryption.ChachaEncryption):
    """asyncssh's packet shim for chacha20-poly1305, with `FastChachaCipher` inside."""

    @classmethod
    def new(cls, cipher_name: str, key: bytes, iv: bytes, mac_alg: bytes = b"", mac_key: bytes = b"",
            etm: bool = False) -> FastChachaEncryption:  # fmt: skip
        """A shim for one direction of a connection (only the key matters: no IV, no separate MAC)."""
        return cls(FastChachaCipher(key))  # type: ignore[arg-type]  # the same methods as ChachaCipher


def install() -> bool:
    """Make asyncssh use `FastChachaCipher` for chacha20-poly1305; False if its cipher table is not as expected."""
    params = getattr(encryption, "_enc_params", None)
    if not isinstance(params, dict) or ALG not in params:
        return False
    current, cipher_name = params[ALG]
    if current is FastChachaEncryption:
        return True
    if current is not encryption.ChachaEncryption:
        return False
    params[ALG] = (FastChachaEncryption, cipher_name)
    return True
