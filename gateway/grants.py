"""Compatibility path: grants moved to `gateway.control.grants` (tests/pg, tests/ssh and bench still import it here)."""

from gateway.control.errors import GrantRefused
from gateway.control.grants import Issued, claims_of, issue_grant

__all__ = ["GrantRefused", "Issued", "claims_of", "issue_grant"]
