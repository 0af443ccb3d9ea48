"""`gateway store migrate --to postgresql://...`: move an embedded store into a shared one, history intact."""

from __future__ import annotations

import argparse

from gateway.cli.common import CliError, Commands, say, services_from
from gateway.services import config_store
from gateway.store import StoreError
from gateway.store.postgres import PgStore, redact


def register(sub: Commands) -> None:
    """Add `store migrate`."""
    p = sub.add_parser("store", help="the store itself: move an embedded store to PostgreSQL")
    ssub = p.add_subparsers(dest="store_command", metavar="COMMAND", required=True)
    m = ssub.add_parser("migrate", help="copy grants, requests, sessions and the audit chain into an empty store")
    m.add_argument("--to", required=True, help="postgresql://user@host/database (must be empty)")
    m.set_defaults(func=cmd_migrate)


async def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy every record verbatim, then verify the copied chain; the source is left as it was."""
    if not args.to.startswith(("postgresql://", "postgres://")):
        raise CliError("--to must be a postgresql:// URL", 2)
    async with services_from(args, read_only=True) as svc:
        source = svc.store
        if isinstance(source, PgStore):
            raise CliError("this config's store is already PostgreSQL", 2)
        before = await source.verify()
        if not before.ok:
            raise CliError(f"the source chain does not verify, nothing copied: {before.describe()}", 1)
        target = config_store(svc.config, svc.ring, args.to)
        assert isinstance(target, PgStore)
        try:
            await target.open()
        except StoreError as exc:
            raise CliError(str(exc), 2) from None
        try:
            if not await target.is_empty():
                raise CliError(f"{redact(args.to)} already holds gateway records; migrate only into an empty one", 1)
            grants, requests = await source.list_grants(), await source.list_requests()
            sessions, events = await source.list_sessions(), await source.events()
            await target.import_all(grants, requests, sessions, events, await source.checkpoints())
            after = await target.verify()
        finally:
            await target.close(checkpoint=False)
    if not after.ok or after.checked != before.checked:
        raise CliError(f"the copied chain does not verify: {after.describe()}", 1)
    say(
        f"migrated to {redact(args.to)}: {len(grants)} grants, {len(requests)} requests, {len(sessions)} sessions, "
        f"{after.checked} audit events; {after.describe()}"
    )
    say("next: set [store] url to that URL in every replica's gateway.toml (the SQLite file is left as it was)")
    return 0
