"""The Event stream's followers (cimid.service.event_stream) on a real store: a follower without a $filter
takes each commit's Events as the commit hands them over, with no read of the store; under concurrent
commits, slow readers, filters, scopes and commits that cannot say what they stored, every follower still
gets exactly the Events a read of the store gives it, once each, in commit order."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from cimid.model.events import Event
from cimid.service.event_stream import EventStored, EventStream
from cimid.store import events as event_queries
from cimid.store.db import Row, Store

STAMP = "2020-01-01T00:00:00.000Z"
ids = itertools.count()


@pytest.fixture
def reads(monkeypatch):
    """How many times followers read the store."""
    made = []
    events_after = event_queries.events_after

    async def counted(*args, **kwargs):
        made.append(1)
        return await events_after(*args, **kwargs)
    monkeypatch.setattr(event_queries, "events_after", counted)
    return made


async def commit_events(store: Store, owners: list[str], name: str = "e", forget: bool = False) -> None:
    """One commit writing an Event per owner, announced as EventLogs.record announces them. forget: a
    bulk statement afterwards, so the commit cannot say what it stored."""
    async with store.write() as tx:
        rows = [Row(Event.name, f"e{next(ids)}", "log", {"name": name, "created": STAMP}, owner=owner)
                for owner in owners]
        for row in rows:
            await tx.insert(row)
        if forget:
            await tx.execute("UPDATE resources SET description = 'bulk' WHERE kind = 'Nothing'")
        stored = EventStored()
        tx.after_commit.append(lambda: stored.committed(tx.stored(row) for row in rows))
        tx.emit(stored)


async def collect(stream: EventStream, scope=None, filters=(), slow: float = 0.0) -> tuple[list, asyncio.Task]:
    where, params = event_queries.compile_filters(list(filters), Event.columns)
    got: list[tuple[int, str]] = []
    follow = stream.follow(scope, where, params, None)

    async def run():
        async for item in follow:
            if item is not None:
                got.append((item[0], item[1].id))
                if slow:
                    await asyncio.sleep(slow)
    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)  # it has read where it starts
    return got, task


async def everything(store: Store, scope=None, filters=()) -> list[tuple[int, str]]:
    where, params = event_queries.compile_filters(list(filters), Event.columns)
    rows = await event_queries.events_after(store, 0, scope=scope, where=where, params=params, limit=100000)
    return [(seq, row.id) for seq, row in rows]


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the followers never caught up"
        await asyncio.sleep(0.01)


async def test_a_follower_without_a_filter_takes_each_commits_events_without_reading_the_store(store, reads):
    stream = EventStream(store)
    await commit_events(store, [""])  # one publication, so that the stream knows where commits are
    plain, plain_task = await collect(stream)
    filtered, filtered_task = await collect(stream, filters=["name='e'"])
    reads.clear()
    for n in range(20):
        await commit_events(store, ["", "alice"])
        await until(lambda: len(plain) == 2 * (n + 1))
    await until(lambda: len(filtered) == 40)
    assert plain == filtered == (await everything(store))[1:]
    assert len(reads) >= 20  # the filtered follower read after each commit; the other never did
    stream.close()
    await asyncio.gather(plain_task, filtered_task)
    stream_only = EventStream(store)
    await commit_events(store, [""])
    got, task = await collect(stream_only)
    reads.clear()
    for _ in range(5):
        await commit_events(store, [""])
    await until(lambda: len(got) == 5)
    assert reads == []
    stream_only.close()
    await task


async def test_every_follower_gets_exactly_what_the_store_holds_for_it_once_and_in_order(store):
    stream = EventStream(store)
    followers = {
        "all": await collect(stream),
        "slow": await collect(stream, slow=0.002),
        "alice": await collect(stream, scope="alice"),
        "named": await collect(stream, filters=["name='x'"]),
    }

    async def writer(n: int) -> None:
        for i in range(40):
            owners = [["", "alice"], ["bob"], ["alice", "alice", ""]][(n + i) % 3]
            await commit_events(store, owners, name="x" if i % 4 == 0 else "e", forget=(i % 13 == 5))
            if i % 7 == 0:
                await asyncio.sleep(0.005)
    await asyncio.gather(*(writer(n) for n in range(4)))
    expected = {"all": await everything(store), "slow": await everything(store),
                "alice": await everything(store, scope="alice"), "named": await everything(store, filters=["name='x'"])}
    for name, (got, _task) in followers.items():
        await until(lambda got=got, name=name: len(got) >= len(expected[name]))
        assert got == expected[name], name
    stream.close()
    await asyncio.gather(*(task for _got, task in followers.values()))
