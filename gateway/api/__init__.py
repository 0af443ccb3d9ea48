"""The HTTP control plane: requests, approvals, grants, sessions, audit, JWKS, health and metrics under /v1."""
