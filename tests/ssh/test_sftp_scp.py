"""sftp and scp through the gateway: read-only scopes refuse writes, removes and renames; transfers audited."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest

from gateway.sandbox.sshd import HELLO_TEXT
from tests.ssh.conftest import SSH_OPTS, TARGET, Gateway


def run_tool(gateway: Gateway, token: str, argv: list[str], *,
             input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """scp or sftp (stock OpenSSH) with sshpass answering the token prompt."""
    return subprocess.run(["sshpass", "-P", "Approval token", "-p", token, *argv], input=input, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def scp(gateway: Gateway, token: str, *args: str, legacy: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["-O"] if legacy else []
    return run_tool(gateway, token, ["scp", *flags, *SSH_OPTS, "-P", str(gateway.port), *args])


def remote(gateway: Gateway, path: Path | str) -> str:
    return f"{TARGET}@{gateway.host}:{path}"


async def test_sftp_read_only_refuses_changes_and_keeps_the_file(gateway: Gateway) -> None:
    hello = gateway.sshd.hello_path
    before = hello.read_bytes()
    async with await gateway.connect(await gateway.token("readonly")) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open(str(hello), "rb") as f:
            content = await f.read()
        assert isinstance(content, bytes) and content == HELLO_TEXT.encode()
        assert str(hello.name) in await sftp.listdir(str(hello.parent))
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.open(str(hello), "wb")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.open(str(hello), "ab")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.remove(str(hello))
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.rename(str(hello), str(hello) + ".moved")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.posix_rename(str(hello), str(hello) + ".moved")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.mkdir(str(gateway.sshd.scratch_dir / "newdir"))
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.chmod(str(hello), 0o777)
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.symlink(str(hello), str(gateway.sshd.scratch_dir / "link"))
    assert hello.read_bytes() == before
    assert not (gateway.sshd.scratch_dir / "newdir").exists()
    await gateway.settle()
    s = await gateway.last_session()
    refused = {e.data["op"] for e in await gateway.events(s.id, types=("sftp.refused",))}
    expected = {"open-write", "remove", "rename", "mkdir", "setstat", "symlink", "extended:posix-rename@openssh.com"}
    assert expected <= refused
    (read,) = [e for e in await gateway.events(s.id, types=("sftp.file",)) if e.data["op"] == "open-read"]
    assert read.data["path"] == str(hello) and read.data["read"] == len(HELLO_TEXT)


async def test_sftp_read_write_scope_uploads_and_audits_size(gateway: Gateway) -> None:
    target = gateway.sshd.scratch_dir / "uploaded.bin"
    data = os.urandom(200_000)
    async with await gateway.connect(await gateway.token("ops")) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open(str(target), "wb") as f:
            await f.write(data)
    assert target.read_bytes() == data
    await gateway.settle()
    s = await gateway.last_session()
    (ev,) = [e for e in await gateway.events(s.id, types=("sftp.file",)) if e.data["op"] == "open-write"]
    assert ev.data["path"] == str(target) and ev.data["written"] == len(data)


async def test_sftp_off_scope(gateway: Gateway) -> None:
    async with await gateway.connect(await gateway.token("noscp")) as conn:
        with pytest.raises((asyncssh.Error, asyncssh.SFTPError, OSError)):
            async with conn.start_sftp_client():
                pass


async def test_stock_sftp_batch_read_only(gateway: Gateway, tmp_path: Path) -> None:
    local = tmp_path / "hello.txt"
    upload = tmp_path / "up.txt"
    upload.write_text("new\n")
    # Commands on stdin, not -b: batch mode turns password prompts off.
    hello = gateway.sshd.hello_path
    commands = (f"get {hello} {local}\nput {upload} {gateway.sshd.scratch_dir}/up.txt\n"
                f"rm {hello}\nrename {hello} {hello}.x\n")  # fmt: skip
    r = await asyncio.to_thread(run_tool, gateway, await gateway.token("readonly"),
                                ["sftp", *SSH_OPTS, "-P", str(gateway.port), f"{TARGET}@{gateway.host}"],
                                input=commands)  # fmt: skip
    assert local.exists(), (r.stdout, r.stderr)
    assert local.read_text() == HELLO_TEXT
    assert "Permission denied" in r.stderr
    assert not (gateway.sshd.scratch_dir / "up.txt").exists()
    assert gateway.sshd.hello_path.read_text() == HELLO_TEXT


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-over-sftp", "scp-legacy"])
async def test_scp_download_allowed_upload_refused_in_read_only(gateway: Gateway, tmp_path: Path,
                                                                legacy: bool) -> None:  # fmt: skip
    local = tmp_path / "dl.txt"
    r = await asyncio.to_thread(scp, gateway, await gateway.token("readonly"), remote(gateway, gateway.sshd.hello_path),
                                str(local), legacy=legacy)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert local.read_text() == HELLO_TEXT
    dest = gateway.sshd.scratch_dir / f"scp-up-{legacy}.txt"
    r = await asyncio.to_thread(scp, gateway, await gateway.token("readonly"), str(local), remote(gateway, dest),
                                legacy=legacy)  # fmt: skip
    assert r.returncode != 0
    assert not dest.exists()
    if legacy:
        assert "read-only: scp uploads are refused" in r.stderr


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-over-sftp", "scp-legacy"])
async def test_scp_upload_in_read_write_scope(gateway: Gateway, tmp_path: Path, legacy: bool) -> None:
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(1_000_000))
    dest = gateway.sshd.scratch_dir / f"scp-rw-{legacy}.bin"
    r = await asyncio.to_thread(scp, gateway, await gateway.token("ops"), str(local), remote(gateway, dest),
                                legacy=legacy)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()


async def test_scp_refused_when_scope_disallows(gateway: Gateway, tmp_path: Path) -> None:
    r = await asyncio.to_thread(scp, gateway, await gateway.token("noscp"), remote(gateway, gateway.sshd.hello_path),
                                str(tmp_path / "x"), legacy=True)  # fmt: skip
    assert r.returncode != 0 and "this scope does not allow scp" in r.stderr
    r = await asyncio.to_thread(scp, gateway, await gateway.token("noscp"), remote(gateway, gateway.sshd.hello_path),
                                str(tmp_path / "y"))  # fmt: skip
    assert r.returncode != 0 and "does not allow sftp" in r.stderr
