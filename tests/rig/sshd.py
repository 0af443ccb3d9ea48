"""Throwaway OpenSSH server on 127.0.0.1 with its own host key and a client key (``gateway.sandbox``)."""

from __future__ import annotations

from gateway.sandbox.sshd import HELLO_TEXT, SSH_OS_USER, SSHD_BIN, SshServer

__all__ = ["HELLO_TEXT", "SSHD_BIN", "SSH_OS_USER", "SshServer"]
