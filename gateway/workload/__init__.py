"""Workload identities: CI/CD pipelines exchange their OIDC token for a narrow grant, by policy rule."""
