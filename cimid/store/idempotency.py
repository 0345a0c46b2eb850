"""Idempotency keys: a consumer's POST reserved under its key before it runs, the Job it made recorded in
the same transaction as its change, and its answer kept after it, for a retry to get again."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .db import Store, Transaction


@dataclass(frozen=True)
class Entry:
    consumer: str
    key: str
    fingerprint: str
    created: str
    recorded: dict | None  # {job, status, location}: the top-level Job the request made, if it made one
    status: int | None  # None: not answered (still running, or cimid stopped before it answered)
    headers: dict
    body: bytes

    @property
    def answered(self) -> bool:
        return self.status is not None


_ENTRY = "SELECT consumer, key, fingerprint, created, recorded, status, headers, body FROM idempotency_keys"


def _entry(r) -> Entry:
    return Entry(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], json.loads(r[6] or "{}"),
                 bytes(r[7] or b""))


async def get(store: Store, consumer: str, key: str) -> Entry | None:
    rows = await store.fetch(f"{_ENTRY} WHERE consumer = ? AND key = ?", (consumer, key))
    return _entry(rows[0]) if rows else None


async def reserve(store: Store, consumer: str, key: str, fingerprint: str, now: str,
                  expired_before: str) -> Entry | None:
    """Reserve `key` for a request of `consumer` in a transaction of its own: None when it is now reserved
    for this request, else what is stored under it. An expired entry is forgotten first."""
    async with store.write() as tx:
        await tx.execute("DELETE FROM idempotency_keys WHERE consumer = ? AND key = ? AND created < ?",
                         (consumer, key, expired_before), resources=False)
        rows = await tx.fetch(f"{_ENTRY} WHERE consumer = ? AND key = ?", (consumer, key))
        if rows:
            return _entry(rows[0])
        await tx.execute("INSERT INTO idempotency_keys (consumer, key, fingerprint, created)"
                         " VALUES (?, ?, ?, ?)", (consumer, key, fingerprint, now), resources=False)
    return None


async def renew(store: Store, consumer: str, key: str, now: str) -> None:
    """Keep a reservation (taken over from a request cimid never finished) for the full time from now."""
    async with store.write() as tx:
        await tx.execute("UPDATE idempotency_keys SET created = ? WHERE consumer = ? AND key = ?",
                         (now, consumer, key), resources=False)


async def record(tx: Transaction, consumer: str, key: str, recorded: dict) -> None:
    """Inside the request's own write: the Job it made (the first one only)."""
    await tx.execute("UPDATE idempotency_keys SET recorded = ? WHERE consumer = ? AND key = ?"
                     " AND recorded IS NULL", (json.dumps(recorded), consumer, key), resources=False)


async def answer(store: Store, consumer: str, key: str, status: int, headers: dict, body: bytes) -> None:
    async with store.write() as tx:
        await tx.execute("UPDATE idempotency_keys SET status = ?, headers = ?, body = ? WHERE consumer = ?"
                         " AND key = ?", (status, json.dumps(headers), body, consumer, key), resources=False)


async def release(store: Store, consumer: str, key: str) -> None:
    """Forget a reservation whose request failed, unless it made a Job: a retry then runs again."""
    async with store.write() as tx:
        await tx.execute("DELETE FROM idempotency_keys WHERE consumer = ? AND key = ? AND recorded IS NULL"
                         " AND status IS NULL", (consumer, key), resources=False)


async def purge(store: Store, before: str) -> None:
    """Forget every key reserved before `before` (a stored dateTime)."""
    async with store.write() as tx:
        await tx.execute("DELETE FROM idempotency_keys WHERE created < ?", (before,), resources=False)
