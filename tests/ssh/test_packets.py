"""gateway/ssh/packets.py: asyncssh's packet layer with less Python per packet, byte-compatible, rekeys on both legs."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import subprocess
from collections import Counter
from typing import Any

import asyncssh
import pytest
from asyncssh import connection, crypto
from asyncssh.constants import MSG_IGNORE

from gateway.ssh import packets, upstream
from gateway.ssh.packets import FastGCMCipher, RandomPool
from tests.ssh.conftest import SSH_OPTS, TARGET, Gateway


def test_asyncssh_code_is_as_reviewed() -> None:
    problems = packets.problems()
    assert problems == [], (
        f"asyncssh {importlib.metadata.version('asyncssh')} changed code {packets.__name__} replaces: {problems}. "
        "Review the new asyncssh functions against the replacements, then update packets.FINGERPRINTS."
    )


def test_problems_name_a_changed_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(packets.FINGERPRINTS, "SSHConnection._recv_packet", "0" * 64)
    assert any("_recv_packet changed" in p for p in packets.problems())


@pytest.mark.parametrize("key_size", [16, 32])
def test_fast_gcm_is_byte_identical_to_asyncssh(key_size: int) -> None:
    key, iv = os.urandom(key_size), os.urandom(12)
    name = f"aes{key_size * 8}-gcm"
    theirs_tx, theirs_rx = crypto.GCMCipher(name, key, iv), crypto.GCMCipher(name, key, iv)
    ours_tx, ours_rx = FastGCMCipher(name, key, iv), FastGCMCipher(name, key, iv)
    for n in (16, 32, 1024 + 16, 32768 + 16):
        header, data = n.to_bytes(4, "big"), os.urandom(n)
        sealed = theirs_tx.encrypt_and_sign(header, data)
        assert ours_tx.encrypt_and_sign(header, data) == sealed
        body, tag = sealed[0][4:], sealed[1]
        view = memoryview(header + body + tag)
        assert ours_rx.open(view[:4], view[4:]) == data == theirs_rx.verify_and_decrypt(header, body, tag)
    tampered = bytearray(body + tag)
    tampered[0] ^= 1
    assert ours_rx.open(header, bytes(tampered)) is None


def test_gcm_nonce_counter_wraps_at_64_bits() -> None:
    iv = bytes(4) + (2**64 - 1).to_bytes(8, "big")
    ours, theirs = FastGCMCipher("aes128-gcm", bytes(16), iv), crypto.GCMCipher("aes128-gcm", bytes(16), iv)
    for _ in range(2):
        assert ours.encrypt_and_sign(b"\0\0\0\x10", bytes(16)) == theirs.encrypt_and_sign(b"\0\0\0\x10", bytes(16))


def test_padding_pool_hands_out_fresh_random_bytes() -> None:
    pool = RandomPool()
    taken = [pool.take(n) for n in [4, 255, 16, 7] * 400]  # crosses several 64 KiB refills
    assert [len(t) for t in taken] == [4, 255, 16, 7] * 400
    joined = b"".join(taken)
    assert joined.count(bytes(64)) == 0 and len(set(taken[1::4])) == 400  # no zeros, no repeats


def _count_ignores_sent(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the MSG_IGNOREs the asyncssh connections of this process send (client or server side)."""
    sent: Counter[str] = Counter()
    real = connection.SSHConnection.send_packet

    def counting(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE:
            sent["client" if self.is_client() else "server"] += 1
        real(self, pkttype, *args, handler=handler)

    monkeypatch.setattr(connection.SSHConnection, "send_packet", counting)
    return sent


async def test_no_ignore_packets_with_aead_ciphers(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    assert packets.installed()
    sent = _count_ignores_sent(monkeypatch)
    for cipher in ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"):
        async with await gateway.connect(await gateway.token(), encryption_algs=[cipher]) as conn:
            r = await conn.run("head -c 3000000 /dev/zero | md5sum", input=b"x" * 200_000, encoding=None)
            assert r.stdout == hashlib.md5(bytes(3_000_000)).hexdigest().encode() + b"  -\n"
        await gateway.settle()
    # all four ends run in this process: the test's client, the gateway's server and upstream client
    assert sent == Counter(), sent


async def test_ignore_packets_still_precede_each_packet_with_ctr(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not AEAD (here CTR, straight to the rig's sshd): asyncssh's MSG_IGNORE before every packet, as before."""
    assert packets.installed()
    sent = _count_ignores_sent(monkeypatch)
    sshd = gateway.sshd
    pinned = asyncssh.import_public_key(sshd.host_key_line)
    async with asyncssh.connect(
        sshd.host, sshd.port, username=sshd.user, known_hosts=([pinned], [], []),
        client_keys=[str(sshd.client_key_path)], config=None, encryption_algs=["aes128-ctr"],
    ) as conn:  # fmt: skip
        sent.clear()  # from here on, every packet is one after the key exchange
        seq = conn._send_seq
        r = await conn.run("echo ok", encoding=None)
        assert r.stdout == b"ok\n"
        assert sent["client"] >= 3 and conn._send_seq - seq == 2 * sent["client"], (sent, conn._send_seq - seq)


def _ssh_binary(
    gateway: Gateway, token: str, command: str, data: bytes, *opts: str
) -> subprocess.CompletedProcess[bytes]:
    argv = ["sshpass", "-P", "Approval token", "-p", token, "ssh", *SSH_OPTS, *opts,
            "-o", "PreferredAuthentications=keyboard-interactive", "-p", str(gateway.port),
            f"{TARGET}@{gateway.host}", command]  # fmt: skip
    return subprocess.run(argv, input=data, capture_output=True, timeout=120)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_rekeys_mid_transfer_on_both_legs(gateway: Gateway, monkeypatch: pytest.MonkeyPatch,
                                                cipher: str) -> None:  # fmt: skip
    """OpenSSH rekeys the client leg every 1 MB, the gateway its upstream leg every 2 MB: every byte arrives."""
    kexinits: Counter[str] = Counter()
    real_send_kexinit = connection.SSHConnection._send_kexinit

    def counting_send_kexinit(self: Any) -> None:
        kexinits["upstream" if self.is_client() else "client-leg"] += 1
        real_send_kexinit(self)

    monkeypatch.setattr(connection.SSHConnection, "_send_kexinit", counting_send_kexinit)
    real_tuning = upstream.tuning
    monkeypatch.setattr(upstream, "tuning", lambda *, server: {**real_tuning(server=server), "rekey_bytes": 2 << 20})
    down = os.urandom(12 << 20)
    up = os.urandom(6 << 20)
    path = gateway.sshd.scratch_dir / f"rekey-{cipher[:5]}-{os.getpid()}.bin"
    path.write_bytes(down)
    path.chmod(0o644)
    try:
        token = await gateway.token()
        r = await asyncio.to_thread(_ssh_binary, gateway, token, f"md5sum && cat {path}", up, "-c", cipher,
                                    "-o", "RekeyLimit=1M")  # fmt: skip
    finally:
        path.unlink()
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == hashlib.md5(up).hexdigest().encode() + b"  -\n" + down
    await gateway.settle()
    # Each connection's first KEXINIT, then rekeys: asyncssh counts the bytes it sends (6 MB up: >= 2 rekeys
    # upstream); OpenSSH counts both directions on the client leg (18 MB: ~17, the gateway answers each).
    assert kexinits["upstream"] >= 3 and kexinits["client-leg"] >= 10, kexinits


async def test_kexinit_payloads_are_dropped_after_each_key_exchange(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept only for the exchange hash: gone after NEWKEYS, fresh for each rekey (which still completes)."""
    kexinits: list[int] = []
    real_send_kexinit = connection.SSHConnection._send_kexinit

    def counting_send_kexinit(self: Any) -> None:
        if self is current[0]:
            kexinits.append(1)
        real_send_kexinit(self)

    current: list[Any] = [None]
    monkeypatch.setattr(connection.SSHConnection, "_send_kexinit", counting_send_kexinit)
    data = os.urandom(5 << 20)
    async with await gateway.connect(await gateway.token(), rekey_bytes=1 << 20) as conn:
        current[0] = conn
        assert conn._client_kexinit == b"" and conn._server_kexinit == b""
        r = await conn.run("md5sum", input=data, encoding=None)
        assert r.stdout == hashlib.md5(data).hexdigest().encode() + b"  -\n"
        assert conn._client_kexinit == b"" and conn._server_kexinit == b""
    await gateway.settle()
    # 5 MB at 1 MB a key: rekeyed several times. A rekey may start before the peer's NEWKEYS of the last one
    # arrives (asyncssh sends the packets it held back, >= 1 MB of them): the payloads stay until that one's.
    assert len(kexinits) >= 4, kexinits
