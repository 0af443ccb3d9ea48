"""Sans-IO upstream authentication: SCRAM-SHA-256 (RFC 5802/7677), md5 and cleartext, as a Postgres client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import stringprep
import unicodedata

from gateway.pg.codec import ProtocolError

MECHANISM = "SCRAM-SHA-256"
_GS2_HEADER = b"n,,"  # no channel binding; the upstream TLS (verify-full) authenticates the server instead


class AuthFailed(Exception):
    """The upstream refused us or could not prove it knows the password; str() is safe to log."""


def saslprep(password: str) -> str:
    """RFC 4013 SASLprep; like libpq, fall back to the raw string when it is not a valid stringprep input."""
    if password.isascii():
        return password
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in password if not stringprep.in_table_b1(c))
    norm = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3, stringprep.in_table_c4,
        stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
        stringprep.in_table_c9,
    )  # fmt: skip
    if not norm or any(f(c) for c in norm for f in prohibited):
        return password
    return norm


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


# SaltedPassword by (password digest, salt, iterations). PBKDF2 at PostgreSQL's 4096 iterations takes
# milliseconds of the event loop on every upstream login, and a role's salt changes only with its password;
# pgbouncer keeps the same keys for the same reason. Process memory only, bounded, never logged.
_SALTED: dict[tuple[bytes, bytes, int], bytes] = {}
_SALTED_MAX = 256


def salted_password(password: bytes, salt: bytes, rounds: int) -> bytes:
    """Hi(password, salt, rounds) of RFC 5802, computed once per password, salt and iteration count."""
    key = (hashlib.sha256(password).digest(), salt, rounds)
    salted = _SALTED.get(key)
    if salted is None:
        salted = hashlib.pbkdf2_hmac("sha256", password, salt, rounds)
        if len(_SALTED) >= _SALTED_MAX:
            _SALTED.clear()
        _SALTED[key] = salted
    return salted


class ScramClient:
    """One SCRAM-SHA-256 exchange: client_first() -> client_final(server_first) -> verify(server_final)."""

    def __init__(self, password: str, *, nonce: str | None = None) -> None:
        self._password = saslprep(password).encode("utf-8")
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        self._first_bare = b"n=,r=" + self._nonce.encode("ascii")
        self._server_signature: bytes | None = None

    def __repr__(self) -> str:
        return "ScramClient(password='***')"

    def client_first(self) -> bytes:
        """client-first-message (Postgres ignores the SCRAM user name; the startup packet's user counts)."""
        return _GS2_HEADER + self._first_bare

    def client_final(self, server_first: bytes) -> bytes:
        """client-final-message with the proof, from the server-first-message."""
        attrs = _attributes(server_first)
        nonce, salt_b64, iterations = attrs.get("r"), attrs.get("s"), attrs.get("i")
        if nonce is None or salt_b64 is None or iterations is None:
            raise ProtocolError("malformed SCRAM server-first-message")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise AuthFailed("SCRAM: the server's nonce does not extend ours")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            rounds = int(iterations)
        except ValueError:
            raise ProtocolError("malformed SCRAM salt or iteration count") from None
        if not 1 <= rounds <= 10_000_000:
            raise AuthFailed(f"SCRAM: unreasonable iteration count {rounds}")
        salted = salted_password(self._password, salt, rounds)
        client_key = _hmac(salted, b"Client Key")
        stored_key = _h(client_key)
        without_proof = b"c=" + base64.b64encode(_GS2_HEADER) + b",r=" + nonce.encode("ascii")
        auth_message = self._first_bare + b"," + server_first + b"," + without_proof
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        """Check the server's signature: a server that cannot produce it does not know the verifier."""
        attrs = _attributes(server_final)
        if "e" in attrs:
            raise AuthFailed(f"SCRAM: server error {attrs['e']}")
        v = attrs.get("v")
        if v is None or self._server_signature is None:
            raise ProtocolError("malformed SCRAM server-final-message")
        try:
            got = base64.b64decode(v, validate=True)
        except ValueError:
            raise ProtocolError("malformed SCRAM server signature") from None
        if not hmac.compare_digest(got, self._server_signature):
            raise AuthFailed("SCRAM: the upstream server's signature is wrong (not the real server?)")


def _attributes(message: bytes) -> dict[str, str]:
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("SCRAM message is not ASCII") from None
    out: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ProtocolError("malformed SCRAM attribute")
        out.setdefault(part[0], part[2:])
    return out


def md5_password(user: str, password: str, salt: bytes) -> str:
    """The md5 password response: 'md5' + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode("utf-8")).hexdigest().encode("ascii")  # noqa: S324 (protocol-mandated)
    return "md5" + hashlib.md5(inner + salt).hexdigest()  # noqa: S324
