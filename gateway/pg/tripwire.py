"""Tripwires on what the upstream reports (ParameterStatus): a change that means a wall was breached.

PostgreSQL reports every GUC_REPORT setting at login and again whenever its value changes (at the next
ReadyForQuery). In PostgreSQL 15 those are: application_name, client_encoding, DateStyle,
default_transaction_read_only (14+), in_hot_standby (14+), integer_datetimes, IntervalStyle, is_superuser,
server_encoding, server_version, session_authorization, standard_conforming_strings, TimeZone. Three of them
say whether the walls still stand, whatever SQL text made them fall (a SECURITY DEFINER function, a function
that runs SQL text, an overload the inspector took for a built-in):

- default_transaction_read_only: read mode logs in with it pinned on (upstream.startup_parameters); a report
  of `off` means the second wall is gone for the rest of the session.
- session_authorization: the session user the gateway logged in as; a change means another identity.
- is_superuser: `on` after login means the session now acts with superuser rights.

The login flow (upstream.startup_parameters) pins default_transaction_read_only=on (read mode),
client_encoding and standard_conforming_strings in the startup packet; session_authorization and
is_superuser follow the login, so their values at login (Upstream.parameters) are the baseline. The
server reports a value only when it changes, at the end of the Query (or Sync) that changed it: the
statement that breached the wall has run, nothing after it is forwarded. Breaching the real wall takes
something the parser cannot see into, such as a SECURITY DEFINER function that calls set_config or a
function that runs SQL text; the tests build exactly that (tests/pg/test_walls.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.pg.messages import ParameterStatus


class Tripwires:
    """Decides, per reported setting, whether it breaches the session's scope (None: it does not)."""

    __slots__ = ("_admin", "_login", "_read_only")

    def __init__(self, at_login: Iterable[ParameterStatus], *, read_only: bool, admin: bool) -> None:
        self._read_only = read_only
        self._admin = admin
        # The identity as the server reported it at login (the injected login, spelled as the server has it).
        self._login = next((p.value for p in at_login if p.name == "session_authorization"), None)

    def check(self, name: str, value: str) -> str | None:
        """The breach a reported `name = value` means, or None."""
        if name == "default_transaction_read_only":
            if self._read_only and value.lower() != "on":
                return "default_transaction_read_only turned off in a read-only session (the read-only wall fell)"
        elif self._admin:
            return None
        elif name == "session_authorization":
            if self._login is not None and value != self._login:
                return f"session_authorization changed from the injected login to {value[:64]!r}"
        elif name == "is_superuser":
            if value.lower() == "on":
                return "is_superuser turned on in a session below admin scope"
        return None
