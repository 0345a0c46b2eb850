"""The live stream of Events: a tail of the store. A follower reads the Events committed after the last
one it sent, in commit order (the store's sequence number, also each message's id), limited to what the
caller may see and to its $filter, both in SQL by the same compiler as every collection; then it waits
until a commit announces more. Resuming after an id (Last-Event-ID) is the same read from that id, so a
client that reconnects gets exactly what it missed, as long as retention has kept it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..store import events as event_queries
from ..store.db import Row, Store

KEEPALIVE_SECONDS = 15.0  # an idle stream says so this often, so that proxies and clients keep it open
BATCH = 256


@dataclass(frozen=True)
class EventStored:
    """Published after a commit that wrote Events (followers read what is new from the store)."""


class EventStream:
    def __init__(self, store: Store):
        self.store = store
        self._wakers: set[asyncio.Event] = set()
        self.closed = False
        store.subscribe(self._published)

    def _published(self, event: object) -> None:
        if isinstance(event, EventStored):
            for waker in self._wakers:
                waker.set()

    def close(self) -> None:
        """The server stops: every follower ends."""
        self.closed = True
        for waker in self._wakers:
            waker.set()

    async def follow(self, scope: str | None, where: str, params: list,
                     after: int | None) -> AsyncIterator[tuple[int, Row] | None]:
        """(seq, Event row) for each Event after `after` (None: from now on) that `scope` may see and `where`
        selects, as they are committed; None when nothing came for a while (a keep-alive)."""
        waker = asyncio.Event()
        self._wakers.add(waker)  # before reading where to start: nothing committed after that is missed
        try:
            last = await event_queries.latest_seq(self.store) if after is None else after
            while not self.closed:
                waker.clear()  # a commit from here on wakes the wait below
                rows = await event_queries.events_after(self.store, last, scope=scope, where=where, params=params,
                                                        limit=BATCH)
                for seq, row in rows:
                    yield seq, row
                    last = seq
                if len(rows) == BATCH:
                    continue
                try:
                    await asyncio.wait_for(waker.wait(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield None
        finally:
            self._wakers.discard(waker)
