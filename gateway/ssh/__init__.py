"""SSH front end: token-authenticated asyncssh server relaying to targets with injected credentials."""

from gateway.ssh.listener import SshListener

__all__ = ["SshListener"]
