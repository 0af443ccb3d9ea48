"""A value that must never be printed: logs, errors, reprs and recordings see only '***'."""

from __future__ import annotations


class Secret:
    """Wraps a secret string; `reveal()` is called only where it goes on the wire."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would be a way to leak it into a cache or a crash dump.
        raise TypeError("Secret values cannot be pickled")
