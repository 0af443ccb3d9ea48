"""Control-plane settings not yet in gateway.toml: OIDC identity provider, admin groups, request timeout."""

from __future__ import annotations

from dataclasses import dataclass, field

# Asymmetric only: an HS* algorithm would let anyone holding the (public) JWKS mint tokens.
OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Where the company identity provider's keys are and which claims name the user and the groups."""

    issuer: str
    audience: str
    jwks_url: str
    user_claim: str = "preferred_username"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: int = 30
    jwks_cache_seconds: float = 300.0
    jwks_min_refresh_seconds: float = 30.0  # an unknown kid refetches the JWKS at most this often

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if a not in OIDC_ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(f"oidc.algorithms: {bad or 'empty'} not allowed; use some of {', '.join(OIDC_ALGORITHMS)}")
        if not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError("oidc.jwks_url: must be an http(s) URL")
        if not self.issuer or not self.audience:
            raise ValueError("oidc.issuer and oidc.audience are required")
        if not 0 <= self.leeway <= 60:
            raise ValueError("oidc.leeway: must be 0 to 60 seconds")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """How the API authenticates and authorises callers."""

    oidc: OidcConfig | None = None
    api_keys: bool = True  # [users.NAME] api_key_sha256; keep on for the embedded, IdP-less setup
    admin_groups: frozenset[str] = field(default_factory=lambda: frozenset({"admins"}))
    request_timeout: float = 4 * 3600.0
    metrics_public: bool = True  # Prometheus scrapers rarely carry credentials; counts only, no names of people
    expire_interval: float = 5.0
