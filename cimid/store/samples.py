"""Meter time series: the samples table (migration 4), written in one statement per sampling round, read a
page at a time by `$filter`/`$orderby`/`$first`/`$last` compiled to SQL, trimmed by age and by the size of
the database."""

from __future__ import annotations

import math

from . import query
from .db import Store, Transaction
from .query import Column

# What $filter and $orderby may name on a Sample, and where it lives. value is a CIMI string but stored as
# a number: SQLite compares it with a quoted number as a number (the column's affinity), as a client means.
_COLUMNS = {"timestamp": Column("ts", "dateTime"), "value": Column("value", "string")}
TRIM_ROUNDS = 8  # at most this many deletions per trim; the next trim goes on


async def add(tx: Transaction, samples: list[tuple[str, str, float]]) -> None:
    """Store (meter id, timestamp, value) triples; a second sample at the same instant replaces the first.
    Samples are not resources: the row cache is left alone."""
    await tx.executemany("INSERT OR REPLACE INTO samples (meter, ts, value) VALUES (?, ?, ?)", samples)


async def delete_meter(tx: Transaction, meter: str) -> None:
    await tx.execute("DELETE FROM samples WHERE meter = ?", (meter,), resources=False)


async def delete_all(tx: Transaction) -> None:
    await tx.execute("DELETE FROM samples", resources=False)


async def page(store: Store, meter: str, *, filters: list[str] = (), orderby: list[str] = (),
               first: int | None = None, last: int | None = None) -> tuple[int, list[tuple[str, float]]]:
    """One page of a Meter's samples, oldest first unless ordered otherwise, with the count after
    filtering, from one snapshot. A bad expression raises query.QueryError."""
    where, order, params = query.compile_query(filters, orderby, _COLUMNS.get)
    cond = "meter = ?" + (f" AND {where}" if where else "")
    args = (meter, *params)
    start = max(first or 1, 1)
    limit = -1 if last is None else last - start + 1
    async with store.snapshot() as conn:
        rows = []
        if not (limit == 0 or (last is not None and limit < 0)):
            rows = await conn.execute_fetchall(
                f"SELECT ts, value FROM samples WHERE {cond} ORDER BY {order + ', ' if order else ''}ts"
                " LIMIT ? OFFSET ?", (*args, limit, start - 1))
        (count,), = await conn.execute_fetchall(f"SELECT count(*) FROM samples WHERE {cond}", args)
    return count, [(ts, value) for ts, value in rows]


async def get(store: Store, meter: str, ts: str) -> float | None:
    rows = await store.fetch("SELECT value FROM samples WHERE meter = ? AND ts = ?", (meter, ts))
    return rows[0][0] if rows else None


async def used_bytes(store: Store) -> int:
    """What the database file holds (its pages less the free ones, which SQLite reuses before growing)."""
    (pages,), = await store.fetch("PRAGMA page_count")
    (free,), = await store.fetch("PRAGMA freelist_count")
    (size,), = await store.fetch("PRAGMA page_size")
    return (pages - free) * size


async def trim(store: Store, before: str, max_bytes: int) -> int:
    """Drop samples older than `before` (a stored dateTime), then the oldest of the rest while the database
    holds more than `max_bytes`. Returns how many were dropped."""
    dropped = 0
    async with store.write() as tx:
        dropped += await tx.execute("DELETE FROM samples WHERE ts < ?", (before,), resources=False)
    for _ in range(TRIM_ROUNDS):
        used = await used_bytes(store)
        if used <= max_bytes:
            break
        (count,), = await store.fetch("SELECT count(*) FROM samples")
        if count == 0:
            break  # the rest of the database is resources: samples cannot make room
        # The share of samples to drop is the share of bytes over the limit, plus a little so that the
        # pages they free (only emptied pages are freed) bring the database under it.
        excess = math.ceil(count * (used - max_bytes) / used) + max(count // 50, 1)
        async with store.write() as tx:
            dropped += await tx.execute(
                "DELETE FROM samples WHERE ts <= (SELECT ts FROM samples ORDER BY ts LIMIT 1 OFFSET ?)",
                (min(excess, count) - 1,), resources=False)
    return dropped


async def meters_targeting(tx: Transaction, target: str) -> list[str]:
    """The ids of the Meters that measure the resource `target` (an id)."""
    rows = await tx.fetch("SELECT id FROM resources WHERE kind = 'Meter' AND json_extract(internal, '$.target') = ?",
                          (target,))
    return [r[0] for r in rows]
