"""The Job family's named queries."""

from __future__ import annotations

from .db import Row, Store

_UNFINISHED = ("QUEUED", "RUNNING", "STOPPING")
_FINISHED = ("SUCCESS", "FAILED", "STOPPED")


async def unfinished(store: Store, kind: str) -> list[Row]:
    """Top-level Jobs of one kind (machine, image ...) that had not finished, oldest first."""
    return await store.select(
        "kind = 'Job' AND state IN (?, ?, ?) AND json_extract(internal, '$.kind') = ?"
        " AND json_extract(doc, '$.parentJob') IS NULL ORDER BY seq", (*_UNFINISHED, kind))


async def purge_finished(store: Store, before: str) -> None:
    """Forget finished Jobs whose state last changed before `before` (a stored dateTime)."""
    async with store.write() as tx:
        await tx.execute("DELETE FROM resources WHERE kind = 'Job' AND state IN (?, ?, ?)"
                         " AND json_extract(doc, '$.timeOfStatusChange') < ?", (*_FINISHED, before))


async def count_by_state(store: Store) -> dict[str, int]:
    """How many Jobs are in each state (one indexed query)."""
    return dict(await store.fetch("SELECT state, count(*) FROM resources WHERE kind = 'Job' GROUP BY state"))
