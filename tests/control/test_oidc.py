"""OIDC bearer tokens verified against a JWKS served by the test: RS256 and ES256; bad tokens refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.api.server import ApiServer
from gateway.config import ApiSettings, Config, OidcConfig
from gateway.services import build_services
from tests.control.conftest import Running

ISSUER = "https://idp.example.test/"
AUDIENCE = "gateway-api"


class Idp:
    """A pretend identity provider: keys, a JWKS endpoint, and a token minter."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.keys: dict[str, Any] = {"rsa1": self.rsa, "ec1": self.ec}
        self.fetches = 0
        self.url = ""

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys.items():
            algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
            jwk = algo.to_jwk(key.public_key(), as_dict=True)
            jwk.update({"kid": kid, "use": "sig"})
            out.append(jwk)
        return {"keys": out}

    def token(self, *, kid: str = "rsa1", alg: str | None = None, key: Any = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "00u1",
            "preferred_username": "alice",
            "groups": ["engineers"],
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        signer = key if key is not None else self.keys[kid]
        alg = alg or ("RS256" if isinstance(signer, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(claims, signer, algorithm=alg, headers={"kid": kid})


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    provider = Idp()

    async def jwks(_: web.Request) -> web.Response:
        provider.fetches += 1
        return web.json_response(provider.jwks())

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    provider.url = f"http://127.0.0.1:{port}/jwks"
    yield provider
    await runner.cleanup()


@pytest.fixture
async def oidc_gw(config: Config, idp: Idp, api_keys: dict[str, str]) -> AsyncIterator[Running]:
    svc = await build_services(config)
    settings = ApiSettings(
        oidc=OidcConfig(ISSUER, AUDIENCE, idp.url, jwks_min_refresh_seconds=0.0), admin_groups=frozenset({"sre"})
    )
    api = ApiServer(svc, settings)
    await api.start()
    async with aiohttp.ClientSession() as session:
        yield Running(svc, api.port, api_keys, session)
    await api.close()
    await svc.close()


async def _whoami(gw: Running, token: str) -> tuple[int, Any]:
    return await gw.call(None, "GET", "/v1/whoami", headers={"Authorization": f"Bearer {token}"})


async def test_rs256_and_es256_tokens(oidc_gw: Running, idp: Idp) -> None:
    status, me = await _whoami(oidc_gw, idp.token(kid="rsa1"))
    assert status == 200 and me == {"user": "alice", "groups": ["engineers"], "admin": False, "via": "oidc"}
    status, me = await _whoami(oidc_gw, idp.token(kid="ec1", preferred_username="sam", groups=["sre", "dba"]))
    assert status == 200 and me["user"] == "sam" and me["admin"] is True
    # API keys keep working next to OIDC
    assert (await oidc_gw.ok("bob", "GET", "/v1/whoami"))["via"] == "api-key"


async def test_oidc_user_runs_the_workflow(oidc_gw: Running, idp: Idp) -> None:
    alice = {"Authorization": f"Bearer {idp.token()}"}
    carol = {"Authorization": f"Bearer {idp.token(preferred_username='carol', groups=['dba'])}"}
    status, req = await oidc_gw.call(
        None,
        "POST",
        "/v1/requests",
        {"target": "orders-db", "scope": "read", "ttl": 60, "reason": "INC"},
        headers=alice,
    )
    assert status == 201, req
    status, out = await oidc_gw.call(None, "POST", f"/v1/requests/{req['id']}/approve", {}, headers=carol)
    assert status == 200 and out["state"] == "approved"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda idp: idp.token(iss="https://evil.example/"), "issuer"),
        (lambda idp: idp.token(aud="someone-else"), "audience"),
        (lambda idp: idp.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "expired"),
        (lambda idp: idp.token(exp=None), "'exp'"),
        (lambda idp: idp.token(sub=None), "'sub'"),
        (lambda idp: idp.token(preferred_username=None), "preferred_username"),
        (lambda idp: idp.token(kid="nope", key=idp.rsa), "does not publish"),
        (
            lambda idp: idp.token(kid="rsa1", key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "signature",
        ),
        (lambda idp: idp.token(kid="rsa1", alg="HS256", key=b"k" * 32), "algorithm 'HS256'"),
        (
            lambda idp: jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE}, "", algorithm="none"),
            "algorithm 'none'",
        ),
        (lambda idp: idp.token(kid="ec1", alg="RS256", key=idp.rsa), "does not fit"),
        (lambda idp: "a.b.c", "not a valid JWT"),
    ],
)
async def test_bad_tokens_refused(oidc_gw: Running, idp: Idp, make: Any, words: str) -> None:
    status, out = await _whoami(oidc_gw, make(idp))
    assert status == 401, out
    assert words in out["error"]["message"]


async def test_key_rotation_refetches_jwks(oidc_gw: Running, idp: Idp) -> None:
    assert (await _whoami(oidc_gw, idp.token()))[0] == 200
    fetched = idp.fetches
    idp.keys["rsa2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (await _whoami(oidc_gw, idp.token(kid="rsa2")))[0] == 200
    assert idp.fetches == fetched + 1


async def test_idp_down_is_503(config: Config, api_keys: dict[str, str]) -> None:
    svc = await build_services(config)
    api = ApiServer(svc, ApiSettings(oidc=OidcConfig(ISSUER, AUDIENCE, "http://127.0.0.1:9/jwks")))
    await api.start()
    try:
        idp = Idp()
        async with aiohttp.ClientSession() as session:
            gw = Running(svc, api.port, api_keys, session)
            status, out = await _whoami(gw, idp.token())
        assert status == 503 and out["error"]["code"] == "idp-unavailable"
    finally:
        await api.close()
        await svc.close()


def test_oidc_config_refuses_symmetric_algorithms() -> None:
    with pytest.raises(ValueError, match="HS256"):
        OidcConfig(ISSUER, AUDIENCE, "https://idp/jwks", algorithms=("HS256",))
