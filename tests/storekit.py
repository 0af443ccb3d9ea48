"""Both store backends for parametrised tests: an SQLite file, or a fresh database on the rig's real cluster."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.store import Store, store_for
from gateway.tokens import KeyRing
from tests.rig.postgres import PgCluster

KINDS = ("sqlite", "postgresql")
_numbers = itertools.count(1)


class Backend:
    """One empty store location of one kind; `make` opens store objects on it (several = several replicas)."""

    def __init__(self, kind: str, tmp_path: Path, cluster: PgCluster | None = None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.cluster = cluster
        if kind == "sqlite":
            self.path: Path | None = tmp_path / "db" / "gateway.db"
            self.url = f"sqlite:///{self.path}"
            self.db_error: type[Exception] = sqlite3.DatabaseError
        else:
            assert cluster is not None
            self.path = None
            db = f"gwstore_{next(_numbers)}"
            cluster.psql(f"CREATE DATABASE {db}", db="postgres")
            self.url = cluster.superuser_dsn(db)
            self.db_error = asyncpg.PostgresError

    def make(self, ring: KeyRing | None = None, *, checkpoint_every: int = 100, node: str = "") -> Store:
        """A new (unopened) store object on this location."""
        return store_for(
            self.url,
            ring,
            sqlite_path=self.path,
            checkpoint_file=self.tmp_path / f"checkpoints-{node or 'x'}.jsonl",
            checkpoint_every=checkpoint_every,
            node=node,
        )

    def side_file(self, store: Store) -> Path:
        """Where this store mirrors its checkpoints."""
        path = getattr(store, "checkpoint_file", None)
        assert isinstance(path, Path)
        return path

    async def raw(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one statement straight on the database, as someone with database access would."""
        if self.path is not None:
            con = sqlite3.connect(self.path, timeout=5)
            try:
                rows = [tuple(r) for r in con.execute(sql).fetchall()]
                con.commit()
                return rows
            finally:
                con.close()
        pg = await asyncpg.connect(self.url)
        try:
            if ";" in sql:  # a script: several statements, no rows
                await pg.execute(sql)
                return []
            return [tuple(r) for r in await pg.fetch(sql)]
        finally:
            await pg.close()


def backend_for(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backend of a test parametrised over KINDS (the cluster starts only for PostgreSQL)."""
    kind = str(request.param)
    cluster = request.getfixturevalue("pg_cluster") if kind == "postgresql" else None
    return Backend(kind, tmp_path, cluster)
