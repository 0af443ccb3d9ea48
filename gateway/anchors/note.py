"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, as pure functions.

A note is UTF-8 text lines, a blank line, then signature lines `— <key name> <base64(key hash || signature)>`.
The key hash is the first 4 bytes of SHA-256(key name || "\\n" || 0x01 || raw public key); the signature is
Ed25519 over the text (everything before the blank line, its final newline included).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIG_PREFIX = "\u2014 "  # an em dash and a space
ED25519 = b"\x01"
MAX_NOTE = 1 << 16


class NoteError(ValueError):
    """Not a well-formed signed note, or no valid signature by the expected key."""


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line: who (name and 4-byte key hash) and the raw signature."""

    name: str
    key_hash: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed note: its signed text and every signature line (known or not)."""

    text: str
    signatures: tuple[Signature, ...]


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32-byte public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_hash(name: str, key: Ed25519PublicKey) -> bytes:
    """The 4-byte id of a (name, key) pair, as the spec defines it."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + raw_public(key)).digest()[:4]


def verifier_key(name: str, key: Ed25519PublicKey) -> str:
    """The vkey string tools share: `<name>+<key hash hex>+<base64(0x01 || public key)>`."""
    return f"{name}+{key_hash(name, key).hex()}+{base64.b64encode(ED25519 + raw_public(key)).decode()}"


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


def sign(text: str, name: str, key: Ed25519PrivateKey) -> str:
    """The note: `text` (lines ending in newline) followed by a blank line and one signature line."""
    return sign_with(text, name, key.public_key(), key.sign)


def sign_with(text: str, name: str, public: Ed25519PublicKey, signer: Callable[[bytes], bytes]) -> str:
    """Like sign, with the private key behind `signer` (the gateway's key ring never hands its keys out)."""
    _check_name(name)
    if not text.endswith("\n") or "\n\n" in text or "\r" in text:
        raise NoteError("note text must be non-empty lines, each ending in a newline")
    line = base64.b64encode(key_hash(name, public) + signer(text.encode())).decode()
    return f"{text}\n{SIG_PREFIX}{name} {line}\n"


def add_signature(note: str, name: str, key: Ed25519PrivateKey) -> str:
    """A cosigned note: the same text and signatures, plus one more (a witness's)."""
    parsed = parse(note)
    extra = sign(parsed.text, name, key).split("\n\n", 1)[1]
    return note + extra


def parse(note: str) -> Note:
    """Split a note into its text and signature lines; NoteError when malformed."""
    if len(note) > MAX_NOTE:
        raise NoteError("note is too large")
    text, sep, sigs = note.partition("\n\n")
    if not sep or not text:
        raise NoteError("not a signed note: no blank line before the signatures")
    text += "\n"
    out = []
    lines = sigs.split("\n")
    if lines[-1] != "":
        raise NoteError("signature lines must end with a newline")
    for line in lines[:-1]:
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"not a signature line: {line[:40]!r}")
        name, _, b64 = line[len(SIG_PREFIX) :].rpartition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raise NoteError("a signature is not base64") from None
        if len(raw) < 5:
            raise NoteError("a signature is too short")
        out.append(Signature(name, raw[:4], raw[4:]))
    if not out:
        raise NoteError("the note has no signature")
    return Note(text, tuple(out))


def verify(note: str, name: str, keys: list[Ed25519PublicKey]) -> Note:
    """Parse and require a valid signature by `name` with one of `keys` (other signatures are ignored)."""
    parsed = parse(note)
    known = {key_hash(name, k): k for k in keys}
    for sig in parsed.signatures:
        key = known.get(sig.key_hash) if sig.name == name else None
        if key is None:
            continue
        try:
            key.verify(sig.signature, parsed.text.encode())
        except InvalidSignature:
            raise NoteError(f"the signature by {name} is invalid (altered or forged)") from None
        return parsed
    raise NoteError(f"no signature by {name} with a known key")
