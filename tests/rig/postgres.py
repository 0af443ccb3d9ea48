"""Throwaway PostgreSQL cluster with SCRAM auth, an ``orders`` database and app roles (``gateway.sandbox``)."""

from __future__ import annotations

from gateway.sandbox.postgres import PG_OS_USER, ROLES, SAMPLE_COUNTS, PgCluster, PsqlError, find_pg_bin_dir

__all__ = ["PG_OS_USER", "ROLES", "SAMPLE_COUNTS", "PgCluster", "PsqlError", "find_pg_bin_dir"]
