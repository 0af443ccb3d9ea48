"""Who performs a control action."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated API caller."""

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False
    via: str = "api-key"  # api-key | oidc | local (CLI acting on the embedded store)
