"""The live stream of Events: a tail of the store. A follower reads the Events committed after the last
one it sent, in commit order (the store's sequence number, also each message's id), limited to what the
caller may see and to its $filter, both in SQL by the same compiler as every collection; then it waits
until a commit announces more. Resuming after an id (Last-Event-ID) is the same read from that id, so a
client that reconnects gets exactly what it missed, as long as retention has kept it.

A follower with no $filter that has read everything up to the previous commit's Events takes the next
commit's Events as the commit hands them over (seen by its scope), without reading the store: a thread hop
and a query less between a commit and its Event on the wire, and none at all per waiting follower. Any
doubt (a read that overlapped a commit, a backlog, a commit that could not say what it stored) sends it
back to reading, from the last Event it sent: nothing is missed or sent twice either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from ..store import events as event_queries
from ..store.db import Row, Store

KEEPALIVE_SECONDS = 15.0  # an idle stream says so this often, so that proxies and clients keep it open
BATCH = 256


class EventStored:
    """Published after a commit that wrote Events: once committed, each as (sequence number, the row as
    stored), in commit order; `events` stays None if the commit could not tell (the followers read)."""

    def __init__(self):
        self.events: list[tuple[int, tuple]] | None = None

    def committed(self, stored: Iterable[tuple[int, tuple] | None]) -> None:
        events = list(stored)
        if all(item is not None for item in events):
            self.events = sorted(events)


class _Follower:
    def __init__(self, scope: str | None, direct: bool):
        self.scope = scope
        self.direct = direct  # no $filter: it may take what commits hand over
        self.waker = asyncio.Event()
        self.stale = True  # read the store (from the last Event sent)
        self.upto: int | None = None  # it has every Event up to this sequence number (None: not known)
        self.taken: list[tuple[int, tuple]] = []  # handed over by commits, not sent yet


class EventStream:
    def __init__(self, store: Store):
        self.store = store
        self._followers: set[_Follower] = set()
        self._published: int | None = None  # the newest Event published since the start, if known
        self.closed = False
        store.subscribe(self._published_after_commit)

    def _published_after_commit(self, event: object) -> None:
        if not isinstance(event, EventStored):
            return
        before = self._published
        self._published = event.events[-1][0] if event.events else None
        for follower in self._followers:
            if (event.events is not None and follower.direct and not follower.stale and follower.upto is not None
                    and before is not None and follower.upto >= before and len(follower.taken) < BATCH):
                follower.taken += event.events
                follower.upto = self._published
            else:
                follower.stale, follower.upto = True, None
            follower.waker.set()

    def close(self) -> None:
        """The server stops: every follower ends."""
        self.closed = True
        for follower in self._followers:
            follower.waker.set()

    async def follow(self, scope: str | None, where: str, params: list,
                     after: int | None) -> AsyncIterator[tuple[int, Row] | None]:
        """(seq, Event row) for each Event after `after` (None: from now on) that `scope` may see and `where`
        selects, as they are committed; None when nothing came for a while (a keep-alive)."""
        follower = _Follower(scope, direct=not where)
        self._followers.add(follower)  # before reading where to start: nothing committed after that is missed
        try:
            last = await event_queries.latest_seq(self.store) if after is None else after
            while not self.closed:
                follower.waker.clear()  # a commit from here on wakes the wait below
                if follower.stale:
                    follower.stale, follower.upto = False, None
                    published = self._published  # every commit published so far is visible to this read
                    rows = await event_queries.events_after(self.store, last, scope=scope, where=where,
                                                            params=params, limit=BATCH)
                    if len(rows) == BATCH:
                        follower.stale = True  # more to read
                    elif not follower.stale:  # no commit was published meanwhile: it has all up to there
                        follower.upto = published
                    for seq, row in rows:
                        yield seq, row
                        last = seq
                taken, follower.taken = follower.taken, []
                for seq, raw in taken:
                    row = event_queries.seen_by(raw, scope) if seq > last else None  # a read may have sent it
                    if row is not None:
                        yield seq, row
                        last = seq
                if follower.taken or follower.stale:
                    continue  # more came while these were sent
                try:
                    await asyncio.wait_for(follower.waker.wait(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield None
        finally:
            self._followers.discard(follower)
