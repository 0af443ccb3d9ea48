"""The faster chacha20-poly1305 shim: byte-identical to asyncssh's own, refuses forged tags, installs in place."""

from __future__ import annotations

import os

from asyncssh import encryption
from asyncssh.crypto.chacha import ChachaCipher

from gateway.ssh import chacha
from gateway.ssh.chacha import FastChachaCipher


def test_same_bytes_as_asyncssh_both_ways() -> None:
    for size in (0, 1, 15, 16, 63, 64, 65, 1000, 32768 + 13):
        key, nonce, header, data = os.urandom(64), os.urandom(8), os.urandom(4), os.urandom(size)
        ours, theirs = FastChachaCipher(key), ChachaCipher(key)
        sealed = ours.encrypt_and_sign(header, data, nonce)
        assert sealed == theirs.encrypt_and_sign(header, data, nonce), size
        packet, tag = sealed
        assert ours.decrypt_header(packet[:4], nonce) == theirs.decrypt_header(packet[:4], nonce) == header
        assert ours.verify_and_decrypt(packet[:4], packet[4:], nonce, tag) == data
        assert theirs.verify_and_decrypt(packet[:4], packet[4:], nonce, tag) == data


def test_forged_or_misplaced_packets_are_refused() -> None:
    key, nonce = os.urandom(64), (7).to_bytes(8, "big")
    c = FastChachaCipher(key)
    packet, tag = c.encrypt_and_sign(b"\x00\x00\x00\x10", b"sixteen bytes..!", nonce)
    assert c.verify_and_decrypt(packet[:4], packet[4:], nonce, bytes(16)) is None
    flipped = bytes([packet[5] ^ 1])
    assert c.verify_and_decrypt(packet[:4], packet[4:5] + flipped + packet[6:], nonce, tag) is None
    assert c.verify_and_decrypt(b"\x00\x00\x00\x11", packet[4:], nonce, tag) is None  # the length is covered
    assert c.verify_and_decrypt(packet[:4], packet[4:], (8).to_bytes(8, "big"), tag) is None  # replayed elsewhere


def test_install_swaps_asyncssh_shim_once() -> None:
    """Fails on an asyncssh upgrade that moves its cipher table: the listener would log and fall back."""
    assert chacha.install() is True
    assert chacha.install() is True
    shim, name = encryption._enc_params[chacha.ALG]
    assert shim is chacha.FastChachaEncryption and name == "chacha20-poly1305"
    got = encryption.get_encryption(chacha.ALG, os.urandom(64), b"")
    assert isinstance(got, chacha.FastChachaEncryption)
