"""A real local OIDC issuer for workload tests: an RSA key made here, its JWKS served over HTTP by aiohttp."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.rig.ports import free_ports


class LocalIssuer:
    """Mints GitHub Actions-shaped tokens and serves /.well-known/jwks; start() before use, stop() after."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(4)
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.jwks_fetches = 0
        self._runner: web.AppRunner | None = None

    @property
    def jwks_url(self) -> str:
        """Where the JWKS is served."""
        return f"{self.url}/.well-known/jwks"

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS document."""
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    async def start(self) -> LocalIssuer:
        """Serve the JWKS."""

        async def jwks(_: web.Request) -> web.Response:
            self.jwks_fetches += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/jwks", jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    def mint(self, audience: str, *, key: Any = None, **overrides: Any) -> str:
        """A token shaped like GitHub Actions' (claims overridable; None removes one)."""
        now = int(time.time())
        run = str(overrides.pop("run_id", "4242"))
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": audience,
            "sub": "repo:acme/orders:environment:production",
            "jti": secrets.token_hex(16),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "repository": "acme/orders",
            "repository_owner": "acme",
            "ref": "refs/heads/main",
            "ref_type": "branch",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "environment": "production",
            "workflow": "deploy",
            "job_workflow_ref": "acme/orders/.github/workflows/deploy.yml@refs/heads/main",
            "run_id": run,
            "run_attempt": "1",
            "actor": "octocat",
            "event_name": "push",
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})
