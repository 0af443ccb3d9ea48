"""Control-plane API keys: made by `gateway users add`, checked by the API; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "gw_"


def new_api_key() -> str:
    """A fresh random API key (shown once; only its SHA-256 goes into the config)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The sha256 hex stored as `api_key_sha256`."""
    return hashlib.sha256(key.encode()).hexdigest()
