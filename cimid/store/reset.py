"""The test-control extension's reset, as a named store verb: everything the provider holds goes."""

from __future__ import annotations

from .db import Transaction


async def wipe(tx: Transaction) -> None:
    """Delete every resource of every kind (the seed marker included, so the catalogue is seeded again)
    and every kept Idempotency-Key answer; consumers and tokens stay."""
    await tx.execute("DELETE FROM resources")
    await tx.execute("DELETE FROM idempotency_keys")
