"""Refusals of control actions: a code the API maps to an HTTP status, a message safe to show the caller."""

from __future__ import annotations


class WorkflowError(Exception):
    """A refused action; `code` maps to an HTTP status, str() is safe to show the caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # invalid | forbidden | not-found | conflict
        self.message = message


def invalid(message: str) -> WorkflowError:
    """Bad input (422)."""
    return WorkflowError("invalid", message)


def forbidden(message: str) -> WorkflowError:
    """Authenticated but not allowed (403)."""
    return WorkflowError("forbidden", message)


def not_found(message: str) -> WorkflowError:
    """Unknown id, or one the caller may not see (404: existence is not leaked)."""
    return WorkflowError("not-found", message)


def conflict(message: str) -> WorkflowError:
    """Illegal state transition (409)."""
    return WorkflowError("conflict", message)


class GrantRefused(WorkflowError, ValueError):
    """Access cannot be granted as asked (target, scope, TTL, user, reason); the message says what would work.

    The same error for a request and for a grant (break-glass or on approval): one rule, one message.
    """

    def __init__(self, message: str) -> None:
        super().__init__("invalid", message)
