"""Free TCP ports on loopback for throwaway servers (see ``gateway.sandbox.procs``)."""

from __future__ import annotations

from gateway.sandbox.procs import free_port, free_ports

__all__ = ["free_port", "free_ports"]
