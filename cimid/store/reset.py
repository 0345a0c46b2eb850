"""The test-control extension's reset, as named store verbs: everything the provider holds goes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .db import Transaction


@asynccontextmanager
async def throwaway_deletes(tx: Transaction) -> AsyncIterator[None]:
    """Deletes within this block free their pages without zeroing them first. Debian's SQLite is built with
    secure_delete on, which overwrote every page of a sandbox's 1,000 machines (10 MiB through the WAL, most
    of a reset's time); what a sandbox reset throws away needs no such care. The store's own setting is
    back for whatever comes next."""
    (previous,), = await tx.fetch("PRAGMA secure_delete")
    await tx.execute("PRAGMA secure_delete = OFF")
    try:
        yield
    finally:
        await tx.execute(f"PRAGMA secure_delete = {int(previous)}")


async def wipe(tx: Transaction) -> None:
    """Delete every resource of every kind (the seed marker included, so the catalogue is seeded again)
    and every kept Idempotency-Key answer; consumers and tokens stay."""
    await tx.execute("DELETE FROM resources")
    await tx.execute("DELETE FROM idempotency_keys")
