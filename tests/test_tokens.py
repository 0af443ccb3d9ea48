"""Approval tokens: every rejection reason has its own code; key rotation; JWKS; fuzzing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.tokens import (
    MAX_TOKEN_BYTES,
    REQUIRED_CLAIMS,
    Claims,
    KeyRing,
    TokenError,
    key_id,
    unverified_claims,
    verify_token,
)

NOW = 1_700_000_000
ISS = "gateway"
AUD = "gateway"
LEEWAY = 30


# --- helpers -----------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def good_claims(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "jti": "g_0123456789",
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 600,
        "target": "orders-db",
        "scope": "read",
        "reason": "INC-1",
        "approvers": ["bob"],
    }
    c.update(over)
    return c


def craft(
    header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey | None = None, signature: bytes = b""
) -> str:
    """A JWT built by hand: header.payload.signature (signed with `key` when given)."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    if key is not None:
        signature = key.sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def private_key(ring: KeyRing, kid: str) -> Ed25519PrivateKey:
    """The ring's private key, read back from its PEM file as an operator would."""
    assert ring.folder is not None
    key = serialization.load_pem_private_key((ring.folder / "signing" / f"{kid}.pem").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def sign(ring: KeyRing, payload: dict[str, Any], **header: Any) -> str:
    """A properly EdDSA-signed token with an arbitrary payload (to reach the claim checks)."""
    kid = ring.active_kid
    return craft({"alg": "EdDSA", "typ": "JWT", "kid": kid, **header}, payload, private_key(ring, kid))


def verify(token: str, ring: KeyRing, now: float = NOW, leeway: int = LEEWAY) -> Claims:
    return verify_token(token, ring, issuer=ISS, audience=AUD, leeway=leeway, now=now)


def code_of(token: str, ring: KeyRing, **kw: Any) -> str:
    with pytest.raises(TokenError) as info:
        verify(token, ring, **kw)
    return info.value.code


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.load_or_create(tmp_path / "keys")


@pytest.fixture
def token(ring: KeyRing) -> str:
    return sign(ring, good_claims())


# --- the happy path ----------------------------------------------------------------------------------


def test_issued_token_verifies_to_the_same_claims(ring: KeyRing) -> None:
    claims = Claims(
        sub="alice",
        jti="g_1",
        target="orders-db",
        scope="read",
        iat=NOW,
        nbf=NOW,
        exp=NOW + 60,
        reason="INC-1",
        approvers=("bob", "carol"),
        iss=ISS,
        aud=AUD,
        max_sessions=2,
    )
    tok = ring.issue(claims)
    assert jwt.get_unverified_header(tok) == {"alg": "EdDSA", "kid": ring.active_kid, "typ": "JWT"}
    assert verify(tok, ring) == claims


def test_hand_crafted_valid_token_verifies(ring: KeyRing, token: str) -> None:
    # The crafting helper itself must produce acceptable tokens, or every rejection test below proves nothing.
    c = verify(token, ring)
    assert (c.sub, c.target, c.scope, c.approvers, c.max_sessions) == ("alice", "orders-db", "read", ("bob",), None)


def test_surrounding_whitespace_is_ignored(ring: KeyRing, token: str) -> None:
    assert verify(f"  {token}\r\n", ring).sub == "alice"


# --- structural rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n", "\t\r\n"])
def test_empty_token(ring: KeyRing, text: str) -> None:
    with pytest.raises(TokenError) as info:
        verify(text, ring)
    assert info.value.code == "empty"
    assert "no approval token" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "not a jwt at all",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "...",
        "e30.e30.e30.e30",
        "eyJhbGciOiJFZERTQSJ9",
        "!!!.@@@.###",
    ],
)
def test_malformed_token(ring: KeyRing, text: str) -> None:
    assert code_of(text, ring) == "malformed"


def test_extra_segment_on_a_real_token_is_malformed(ring: KeyRing, token: str) -> None:
    assert token.count(".") == 2
    assert code_of(token + ".AAAA", ring) == "malformed"


def test_too_long_token_is_refused_before_parsing(ring: KeyRing) -> None:
    # A real, validly signed token that happens to be bigger than the cap: refused on length alone.
    big = sign(ring, good_claims(reason="x" * MAX_TOKEN_BYTES))
    assert len(big) > MAX_TOKEN_BYTES
    with pytest.raises(TokenError) as info:
        verify(big, ring)
    assert info.value.code == "malformed"
    assert "too long" in info.value.reason


def test_token_at_the_length_cap_is_still_parsed(ring: KeyRing) -> None:
    n = (MAX_TOKEN_BYTES - len(sign(ring, good_claims(reason="")))) * 3 // 4 - 8
    while len(sign(ring, good_claims(reason="r" * (n + 1)))) <= MAX_TOKEN_BYTES:
        n += 1
    tok = sign(ring, good_claims(reason="r" * n))
    assert MAX_TOKEN_BYTES - 4 <= len(tok) <= MAX_TOKEN_BYTES
    assert verify(tok, ring).reason == "r" * n


# --- algorithm attacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(ring: KeyRing, alg: str) -> None:
    tok = craft({"alg": alg, "typ": "JWT", "kid": ring.active_kid}, good_claims())
    assert tok.endswith(".")  # empty signature
    with pytest.raises(TokenError) as info:
        verify(tok, ring)
    assert info.value.code == "algorithm"
    assert "EdDSA only" in info.value.reason


def test_missing_alg_is_refused(ring: KeyRing) -> None:
    tok = craft({"typ": "JWT", "kid": ring.active_kid}, good_claims(), private_key(ring, ring.active_kid))
    assert code_of(tok, ring) == "algorithm"


def _public_secrets(ring: KeyRing) -> list[bytes]:
    pub = ring.public_key(ring.active_kid)
    assert pub is not None
    return [
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        ring.jwks()["keys"][0]["x"].encode(),
        json.dumps(ring.jwks()["keys"][0]).encode(),
    ]


@pytest.mark.parametrize("which", range(5), ids=["pem", "raw", "openssh", "jwk-x", "jwk-json"])
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_refused(ring: KeyRing, which: int, alg: str) -> None:
    """The classic key-confusion attack: HMAC keyed with the (public) verification key."""
    secret = _public_secrets(ring)[which]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = f"{b64json({'alg': alg, 'typ': 'JWT', 'kid': ring.active_kid})}.{b64json(good_claims())}"
    mac = hmac.new(secret, signing_input.encode(), digest).digest()
    tok = f"{signing_input}.{b64(mac)}"
    # sanity: a well-formed HMAC JWT whose MAC checks out under the public key used as the secret
    assert jwt.get_unverified_header(tok)["alg"] == alg
    assert hmac.compare_digest(hmac.new(secret, signing_input.encode(), digest).digest(), mac)
    with pytest.raises(TokenError) as info:
        verify(tok, ring)
    assert info.value.code == "algorithm"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "Ed25519", "eddsa", ""])
def test_other_algorithms_are_refused(ring: KeyRing, alg: str) -> None:
    tok = craft({"alg": alg, "typ": "JWT", "kid": ring.active_kid}, good_claims(), private_key(ring, ring.active_kid))
    assert code_of(tok, ring) == "algorithm"


# --- keys ----------------------------------------------------------------------------------------------


def test_unknown_kid(ring: KeyRing, tmp_path: Path) -> None:
    other = KeyRing.load_or_create(tmp_path / "other-keys")
    tok = sign(other, good_claims())
    with pytest.raises(TokenError) as info:
        verify(tok, ring)
    assert info.value.code == "unknown-key"
    assert verify(tok, other).sub == "alice"  # it is a perfectly good token for the other ring


@pytest.mark.parametrize("kid", [None, "", "../../etc/passwd"])
def test_missing_or_empty_kid(ring: KeyRing, kid: Any) -> None:
    header: dict[str, Any] = {"alg": "EdDSA", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    tok = craft(header, good_claims(), private_key(ring, ring.active_kid))
    assert code_of(tok, ring) == "unknown-key"


@pytest.mark.parametrize("kid", [123, ["k"], {"k": 1}, True])
def test_non_string_kid(ring: KeyRing, kid: Any) -> None:
    # pyjwt itself refuses a non-string kid as malformed; either way it never reaches a key lookup.
    tok = craft({"alg": "EdDSA", "typ": "JWT", "kid": kid}, good_claims(), private_key(ring, ring.active_kid))
    assert code_of(tok, ring) in ("unknown-key", "malformed")


def test_signature_from_another_key_with_a_known_kid(ring: KeyRing) -> None:
    forger = Ed25519PrivateKey.generate()
    tok = craft({"alg": "EdDSA", "typ": "JWT", "kid": ring.active_kid}, good_claims(), forger)
    with pytest.raises(TokenError) as info:
        verify(tok, ring)
    assert info.value.code == "signature"


def test_edited_payload_breaks_the_signature(ring: KeyRing, token: str) -> None:
    header, _, sig = token.split(".")
    forged = f"{header}.{b64json(good_claims(scope='admin'))}.{sig}"
    assert code_of(forged, ring) == "signature"


def test_truncated_signature(ring: KeyRing, token: str) -> None:
    assert code_of(token[:-10], ring) in ("signature", "malformed")
    assert code_of(token.rsplit(".", 1)[0] + ".", ring) in ("signature", "malformed")


# --- claims --------------------------------------------------------------------------------------------


def test_wrong_audience(ring: KeyRing) -> None:
    assert code_of(sign(ring, good_claims(aud="someone-else")), ring) == "audience"
    assert code_of(sign(ring, good_claims(aud=["someone-else", "another"])), ring) == "audience"


def test_audience_list_containing_ours_is_accepted(ring: KeyRing) -> None:
    assert verify(sign(ring, good_claims(aud=["other", AUD])), ring).sub == "alice"


@pytest.mark.parametrize("iss", ["evil", "gatewayx", "gatewa", "GATEWAY", ""])
def test_wrong_issuer(ring: KeyRing, iss: str) -> None:
    assert code_of(sign(ring, good_claims(iss=iss)), ring) == "issuer"


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_missing_required_claim(ring: KeyRing, claim: str) -> None:
    payload = good_claims()
    del payload[claim]
    with pytest.raises(TokenError) as info:
        verify(sign(ring, payload), ring)
    assert info.value.code == "missing-claim"
    assert repr(claim) in info.value.reason


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_null_required_claim_counts_as_missing(ring: KeyRing, claim: str) -> None:
    assert code_of(sign(ring, good_claims(**{claim: None})), ring) == "missing-claim"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", 42),
        ("sub", ""),
        ("sub", ["alice"]),
        ("jti", 7),
        ("jti", ""),
        ("target", 1),
        ("target", ""),
        ("scope", ["read"]),
        ("scope", ""),
        ("reason", 5),
        ("approvers", "bob"),
        ("approvers", [1, 2]),
        ("approvers", {"bob": True}),
        ("iat", "yesterday"),
        ("nbf", 1.5),
        ("nbf", True),
        ("exp", "tomorrow"),
        ("exp", float(NOW + 600)),
        ("exp", True),
        ("max_sessions", 0),
        ("max_sessions", -1),
        ("max_sessions", "2"),
        ("max_sessions", 1.0),
        ("max_sessions", True),
    ],
)
def test_wrong_claim_types(ring: KeyRing, claim: str, value: Any) -> None:
    with pytest.raises(TokenError) as info:
        verify(sign(ring, good_claims(**{claim: value})), ring)
    assert info.value.code == "malformed"


def test_max_sessions_is_carried(ring: KeyRing) -> None:
    assert verify(sign(ring, good_claims(max_sessions=3)), ring).max_sessions == 3


# --- time window -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ahead", [LEEWAY + 1, LEEWAY + 60, 86400])
def test_not_yet_valid_beyond_leeway(ring: KeyRing, ahead: int) -> None:
    with pytest.raises(TokenError) as info:
        verify(sign(ring, good_claims(nbf=NOW + ahead, iat=NOW + ahead)), ring)
    assert info.value.code == "not-yet-valid"


@pytest.mark.parametrize("ahead", [1, LEEWAY - 1, LEEWAY])
def test_not_yet_valid_within_leeway_is_accepted(ring: KeyRing, ahead: int) -> None:
    assert verify(sign(ring, good_claims(nbf=NOW + ahead)), ring).nbf == NOW + ahead


@pytest.mark.parametrize("ago", [LEEWAY, LEEWAY + 1, 3600])
def test_expired_beyond_leeway(ring: KeyRing, ago: int) -> None:
    with pytest.raises(TokenError) as info:
        verify(sign(ring, good_claims(exp=NOW - ago, iat=NOW - ago - 60, nbf=NOW - ago - 60)), ring)
    assert info.value.code == "expired"
    assert "expired at" in info.value.reason


@pytest.mark.parametrize("ago", [0, 1, LEEWAY - 1])
def test_expired_within_leeway_is_accepted(ring: KeyRing, ago: int) -> None:
    assert verify(sign(ring, good_claims(exp=NOW - ago, iat=NOW - 600, nbf=NOW - 600)), ring).exp == NOW - ago


def test_zero_leeway_is_strict(ring: KeyRing) -> None:
    assert code_of(sign(ring, good_claims(exp=NOW)), ring, leeway=0) == "expired"
    assert code_of(sign(ring, good_claims(nbf=NOW + 1)), ring, leeway=0) == "not-yet-valid"
    assert verify(sign(ring, good_claims(exp=NOW + 1, nbf=NOW)), ring, leeway=0).sub == "alice"


def test_time_is_checked_against_the_clock_passed_in(ring: KeyRing) -> None:
    tok = sign(ring, good_claims(nbf=NOW, exp=NOW + 60))
    assert verify(tok, ring, now=NOW + 30).sub == "alice"
    assert code_of(tok, ring, now=NOW + 60 + LEEWAY) == "expired"
    assert code_of(tok, ring, now=NOW - LEEWAY - 1) == "not-yet-valid"


# --- key ring, rotation, JWKS --------------------------------------------------------------------------


def test_first_start_makes_a_private_key_file_0600(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path / "keys")
    pem = tmp_path / "keys" / "signing" / f"{ring.active_kid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "signing" / "active").read_text().strip() == ring.active_kid
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) & 0o077 == 0
    # loading again keeps the same key
    assert KeyRing.load_or_create(tmp_path / "keys").active_kid == ring.active_kid


def test_kid_is_derived_from_the_public_key(ring: KeyRing) -> None:
    pub = ring.public_key(ring.active_kid)
    assert pub is not None
    assert key_id(pub) == ring.active_kid
    assert len(ring.active_kid) == 16


def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(ring: KeyRing) -> None:
    old_kid = ring.active_kid
    old_tok = ring.issue(Claims("alice", "g_old", "orders-db", "read", NOW, NOW, NOW + 60, "r", (), ISS, AUD))
    new_kid = ring.rotate()
    assert new_kid != old_kid
    assert ring.active_kid == new_kid
    new_tok = ring.issue(Claims("bob", "g_new", "orders-db", "read", NOW, NOW, NOW + 60, "r", (), ISS, AUD))
    assert jwt.get_unverified_header(old_tok)["kid"] == old_kid
    assert jwt.get_unverified_header(new_tok)["kid"] == new_kid
    assert verify(old_tok, ring).sub == "alice"
    assert verify(new_tok, ring).sub == "bob"
    # and after a restart (a fresh load from disk)
    assert ring.folder is not None
    reloaded = KeyRing.load(ring.folder)
    assert reloaded.active_kid == new_kid
    assert verify(old_tok, reloaded).jti == "g_old"
    assert verify(new_tok, reloaded).jti == "g_new"
    assert stat.S_IMODE((ring.folder / "signing" / f"{new_kid}.pem").stat().st_mode) == 0o600


def test_removing_an_old_key_file_retires_its_tokens(ring: KeyRing) -> None:
    old_kid = ring.active_kid
    old_tok = sign(ring, good_claims())
    ring.rotate()
    assert ring.folder is not None
    (ring.folder / "signing" / f"{old_kid}.pem").unlink()
    assert code_of(old_tok, KeyRing.load(ring.folder)) == "unknown-key"


def test_jwks_round_trip_verifies_tokens(ring: KeyRing) -> None:
    old_tok = sign(ring, good_claims(sub="old"))
    ring.rotate()
    new_tok = sign(ring, good_claims(sub="new"))
    doc = json.loads(json.dumps(ring.jwks()))  # what travels over HTTP
    assert {k["kid"] for k in doc["keys"]} == {jwt.get_unverified_header(t)["kid"] for t in (old_tok, new_tok)}
    for k in doc["keys"]:
        assert (k["kty"], k["crv"], k["alg"], k["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
        assert "d" not in k  # never the private part
    verifier = KeyRing.from_jwks(doc)
    assert verify(old_tok, verifier).sub == "old"
    assert verify(new_tok, verifier).sub == "new"
    # the verify-only ring cannot sign or rotate, and still rejects forgeries
    with pytest.raises(ValueError):
        verifier.rotate()
    with pytest.raises(ValueError):
        verifier.issue(Claims("x", "j", "t", "s", NOW, NOW, NOW + 1, "r", (), ISS, AUD))
    forged = craft({"alg": "EdDSA", "kid": ring.active_kid}, good_claims(), Ed25519PrivateKey.generate())
    assert code_of(forged, verifier) == "signature"


def test_jwks_ignores_non_ed25519_keys(ring: KeyRing) -> None:
    doc = ring.jwks()
    doc["keys"].append({"kty": "RSA", "kid": "rsa1", "n": "AQAB", "e": "AQAB"})
    doc["keys"].append({"kty": "oct", "kid": "hmac1", "k": "c2VjcmV0"})
    verifier = KeyRing.from_jwks(doc)
    assert verifier.public_key("rsa1") is None
    assert verifier.public_key("hmac1") is None
    tok = craft({"alg": "HS256", "kid": "hmac1"}, good_claims(), signature=b"x" * 32)
    assert code_of(tok, verifier) == "algorithm"


def test_active_file_naming_a_missing_key_is_an_error(ring: KeyRing) -> None:
    assert ring.folder is not None
    (ring.folder / "signing" / "active").write_text("deadbeefdeadbeef\n")
    with pytest.raises(ValueError, match="deadbeefdeadbeef"):
        KeyRing.load(ring.folder)


def test_repr_shows_no_key_material(ring: KeyRing) -> None:
    text = repr(ring)
    assert ring.active_kid in text
    assert "PRIVATE" not in text and ring.jwks()["keys"][0]["x"] not in text


def test_sign_and_verify_bytes(ring: KeyRing, tmp_path: Path) -> None:
    kid, sig = ring.sign_bytes(b"checkpoint:1:abc")
    assert kid == ring.active_kid
    assert ring.verify_bytes(kid, sig, b"checkpoint:1:abc")
    assert not ring.verify_bytes(kid, sig, b"checkpoint:1:abd")
    assert not ring.verify_bytes("unknown", sig, b"checkpoint:1:abc")
    assert not ring.verify_bytes(kid, "!!!not base64!!!", b"checkpoint:1:abc")
    assert not ring.verify_bytes(kid, "", b"checkpoint:1:abc")
    other = KeyRing.load_or_create(tmp_path / "k2")
    _, other_sig = other.sign_bytes(b"checkpoint:1:abc")
    assert not ring.verify_bytes(kid, other_sig, b"checkpoint:1:abc")


def test_unverified_claims_never_raises(ring: KeyRing, token: str) -> None:
    assert unverified_claims(token)["sub"] == "alice"
    assert unverified_claims("garbage") == {}
    assert unverified_claims("") == {}
    assert unverified_claims("a.b.c") == {}
    assert unverified_claims("\udc80\udcff") == {}  # undecodable client bytes (surrogateescape)
    assert unverified_claims(token[:20] + "\udc80" + token[20:]) == {}


@given(data=st.binary(max_size=200))
def test_unverified_claims_never_raises_on_random_bytes(data: bytes) -> None:
    assert isinstance(unverified_claims(data.decode("utf-8", "surrogateescape")), dict)


# --- fuzzing -------------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_token_errors(text: str, ring: KeyRing) -> None:
    try:
        verify(text, ring)
    except TokenError as exc:
        assert exc.code in {
            "empty",
            "malformed",
            "algorithm",
            "unknown-key",
            "signature",
            "missing-claim",
            "audience",
            "issuer",
            "not-yet-valid",
            "expired",
        }
    else:
        raise AssertionError(f"random input verified: {text!r}")


@_FUZZ
@given(text=st.text(max_size=400))
def test_random_text_never_verifies_and_only_raises_token_error(ring: KeyRing, text: str) -> None:
    _only_token_errors(text, ring)


@_FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_never_verify_and_only_raise_token_error(ring: KeyRing, data: bytes) -> None:
    # Front ends hand over whatever the client sent; undecodable bytes survive as surrogates
    # (surrogateescape) or as latin-1 characters. Neither may crash the verifier.
    _only_token_errors(data.decode("latin-1"), ring)
    _only_token_errors(data.decode("utf-8", "surrogateescape"), ring)


_segment = st.one_of(
    st.binary(max_size=120).map(b64),
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3)),
        max_size=5,
    ).map(b64json),
    st.just(b64json({"alg": "EdDSA", "kid": "x"})),
)


@_FUZZ
@given(h=_segment, p=_segment, s=st.binary(max_size=80).map(b64))
def test_random_three_segment_tokens_only_raise_token_error(ring: KeyRing, h: str, p: str, s: str) -> None:
    _only_token_errors(f"{h}.{p}.{s}", ring)


@_FUZZ
@given(
    h=_segment,
    p=st.dictionaries(
        st.sampled_from((*REQUIRED_CLAIMS, "max_sessions")),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(max_size=5),
            st.lists(st.text(max_size=3), max_size=2),
        ),
        max_size=12,
    ),
)
def test_signed_random_payloads_only_raise_token_error(ring: KeyRing, h: str, p: dict[str, Any]) -> None:
    # A validly signed token whose header is the ring's but whose claims are random garbage.
    tok = sign(ring, p)
    try:
        c = verify(tok, ring)
    except TokenError:
        return
    # if it verified, every required claim was present and well typed
    assert isinstance(c.sub, str) and c.sub and isinstance(c.exp, int) and c.aud == AUD and c.iss == ISS


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_character_change_is_rejected(ring: KeyRing, token: str, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(token) - 1), label="pos")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    ch = data.draw(st.sampled_from([c for c in alphabet if c != token[pos]]), label="ch")
    mutated = token[:pos] + ch + token[pos + 1 :]
    try:
        verify(mutated, ring)
    except TokenError:
        return
    # Only a non-canonical spelling of the same signature bytes may survive (base64 padding bits).
    h, p, s = mutated.split(".")
    oh, op, os_ = token.split(".")
    assert (h, p) == (oh, op)

    def pad(x: str) -> bytes:
        return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))

    assert pad(s) == pad(os_)
