"""A cached JSON Web Key Set from an issuer's URL (or a file): the signing keys an IdP or a CI system publishes."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20


class KeyProblem(enum.Enum):
    """Why no key was found; each caller words it for its own users."""

    MALFORMED_KID = "malformed-kid"
    UNAVAILABLE = "unavailable"  # the set could not be fetched and none is cached
    NO_KEYS = "no-keys"  # the document is not a key set
    AMBIGUOUS = "ambiguous"  # the token names no kid and the set has several keys
    UNKNOWN_KID = "unknown-kid"


class JwksError(Exception):
    """No key for this token."""

    def __init__(self, problem: KeyProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


class JwksCache:
    """The signing keys of one issuer: fetched on first use, refetched when stale or for an unknown kid."""

    def __init__(self, *, url: str = "", file: Path | None = None, what: str, cache_seconds: float = 300.0,
                 min_refresh_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.url, self.file, self.what = url, file, what
        self.cache_seconds, self.min_refresh_seconds, self.clock = cache_seconds, min_refresh_seconds, clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"JwksCache({self.what}, keys={len(self._keys)})"

    def __len__(self) -> int:
        return len(self._keys)

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def key(self, kid: Any) -> dict[str, Any]:
        """The JWK a token's `kid` header names (the only key when it names none); JwksError otherwise."""
        if kid is not None and not isinstance(kid, str):
            raise JwksError(KeyProblem.MALFORMED_KID)
        async with self._lock:
            now = self.clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            # An unknown kid may mean the issuer rotated its keys: refetch, but not on every forged kid.
            unknown = kid is not None and kid not in self._keys
            if age is None or age > self.cache_seconds or (unknown and age > self.min_refresh_seconds):
                self._keys = await self._load()
                self._fetched_at = now
        if kid is None:
            if len(self._keys) != 1:
                raise JwksError(KeyProblem.AMBIGUOUS)
            return next(iter(self._keys.values()))
        jwk = self._keys.get(kid)
        if jwk is None:
            raise JwksError(KeyProblem.UNKNOWN_KID)
        return jwk

    async def _load(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(await self._read())
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.error("cannot load the JWKS of %s: %s", self.what, type(exc).__name__)
            if self._keys:
                return self._keys  # keep verifying with the keys we have rather than lock everyone out
            raise JwksError(KeyProblem.UNAVAILABLE) from None
        keys = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(keys, list):
            raise JwksError(KeyProblem.NO_KEYS)
        return {
            str(k.get("kid", f"#{i}")): k
            for i, k in enumerate(keys)
            if isinstance(k, dict) and k.get("use", "sig") == "sig"
        }

    async def _read(self) -> bytes:
        if self.file is not None:
            data = await asyncio.to_thread(self.file.read_bytes)
        else:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            async with self._session.get(self.url) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                data = await resp.content.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise ValueError("JWKS too large")
        return data
