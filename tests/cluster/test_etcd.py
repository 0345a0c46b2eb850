"""The etcd wrapper against a real 3-member cluster on loopback: keys, compare-and-swap, leases kept
through a leader kill and a hung member, watches that resume and resynchronise. A member cut off from its
peers (the client trap of the design study, §3.3) is tested on the namespaced federation
(tests/federation/test_faults.py, F3)."""

from __future__ import annotations

import asyncio
import json

import pytest

from cimid.cluster.etcd import Etcd, EtcdUnavailable, LeaseKeeper, target

pytestmark = pytest.mark.federation


async def connected(endpoints, timeout=2.0) -> Etcd:
    etcd = Etcd(endpoints, timeout=timeout)
    await etcd.connect()
    return etcd


async def eventually(check, seconds: float = 15.0, step: float = 0.1):
    for _ in range(int(seconds / step)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError(f"not true after {seconds} s: {check}")


def test_target_lists_every_member():
    assert target(["http://127.0.0.1:1", "http://127.0.0.1:2/"]) == ("ipv4:127.0.0.1:1,127.0.0.1", 2)
    with pytest.raises(ValueError):
        target(["http://nohost"])


async def test_keys_create_and_compare_and_swap(etcd_cluster):
    etcd = await connected(etcd_cluster.endpoints)
    try:
        assert await etcd.create("/t/index/a", b"node1")
        assert not await etcd.create("/t/index/a", b"node2")  # the first claim wins, the owner is kept
        entry = await etcd.get("/t/index/a")
        assert entry.value == b"node1"
        assert not await etcd.replace("/t/index/a", b"node3", entry.mod_revision - 1)
        assert await etcd.replace("/t/index/a", b"node3", entry.mod_revision)
        assert (await etcd.get("/t/index/a")).value == b"node3"
        await etcd.put("/t/index/b", b"node1")
        entries, revision = await etcd.get_prefix("/t/index/")
        assert [e.key for e in entries] == ["/t/index/a", "/t/index/b"] and revision >= entries[-1].mod_revision
        assert await etcd.delete("/t/index/b")
        assert await etcd.get("/t/index/b") is None
    finally:
        await etcd.close()


async def test_twenty_concurrent_reservations_never_overbook(etcd_cluster):
    """Each reservation reads the capacity record and writes it back only if nobody wrote in between."""
    clients = [await connected(etcd_cluster.endpoints) for _ in range(4)]
    try:
        await clients[0].put("/t/capacity/n1", json.dumps({"free_cpu": 8}).encode())

        async def reserve(etcd: Etcd) -> bool:
            while True:
                entry = await etcd.get("/t/capacity/n1")
                free = json.loads(entry.value)["free_cpu"]
                if free < 1:
                    return False
                if await etcd.replace("/t/capacity/n1", json.dumps({"free_cpu": free - 1}).encode(),
                                      entry.mod_revision):
                    return True

        won = await asyncio.gather(*(reserve(clients[i % 4]) for i in range(20)))
        assert won.count(True) == 8
        assert json.loads((await clients[0].get("/t/capacity/n1")).value) == {"free_cpu": 0}
    finally:
        for etcd in clients:
            await etcd.close()


async def _keeper(etcd: Etcd, ttl: int, key: str):
    grants = []

    async def register(lease: int) -> None:
        grants.append(lease)
        await etcd.put(key, b"up", lease=lease)

    keeper = LeaseKeeper(etcd, ttl, register)
    task = asyncio.create_task(keeper.run())
    await asyncio.wait_for(keeper.granted.wait(), 10)
    return keeper, task, grants


async def _stop(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_lease_lost_is_granted_again_and_the_keys_written_again(etcd_cluster):
    etcd, other = await connected(etcd_cluster.endpoints), await connected(etcd_cluster.endpoints)
    keeper, task, grants = await _keeper(etcd, 3, "/t/nodes/n1")
    try:
        assert keeper.safe and (await other.get("/t/nodes/n1")).lease == grants[0]
        await other.revoke(grants[0])  # etcd now answers the keepalive with TTL 0, which aetcd does not raise
        assert await other.get("/t/nodes/n1") is None
        await eventually(lambda: _value(len(grants) == 2))
        entry = await eventually(lambda: other.get("/t/nodes/n1"))
        assert entry.lease == grants[1] != grants[0]
    finally:
        await _stop(task)
        await etcd.close()
    assert await other.get("/t/nodes/n1") is None  # the keeper revoked its lease on the way out
    await other.close()


async def _value(v):
    return v


async def _retried(call):
    """A write that an election on a loaded machine may refuse for a moment."""
    for _ in range(30):
        try:
            return await call()
        except EtcdUnavailable:
            await asyncio.sleep(0.5)
    return await call()


async def _get_or_none(etcd: Etcd, key: str):
    try:
        return await etcd.get(key)
    except EtcdUnavailable:
        return None


async def test_the_lease_survives_a_leader_kill_and_a_hung_member(etcd_cluster):
    """Round-robin over every member with a deadline on each keepalive: neither a dead leader nor a
    member that stops answering (SIGSTOP: its TCP connections stay open) costs the lease."""
    etcd = await connected(etcd_cluster.endpoints, timeout=1.0)
    keeper, task, grants = await _keeper(etcd, 6, "/t/nodes/n1")
    unsafe = []

    async def watch_fence():
        while True:
            if not keeper.safe:
                unsafe.append(True)
            await asyncio.sleep(0.05)

    fence = asyncio.create_task(watch_fence())
    try:
        leader = await asyncio.to_thread(etcd_cluster.leader)
        etcd_cluster.kill(leader)
        await asyncio.sleep(7)  # more than the TTL
        await asyncio.to_thread(etcd_cluster.restart, leader)  # never block the loop the keeper runs on
        now_leading = await asyncio.to_thread(etcd_cluster.leader)
        follower = next(n for n in etcd_cluster.names if n != now_leading)
        etcd_cluster.pause(follower)
        await asyncio.sleep(7)
        etcd_cluster.resume(follower)
        assert grants == [keeper.lease]  # never lost, never granted again
        assert (await etcd.get("/t/nodes/n1")).lease == grants[0]
        assert unsafe == []
    finally:
        fence.cancel()
        await _stop(task)
        await etcd.close()


async def test_without_quorum_calls_fail_at_once_and_the_lease_holder_fences(etcd_cluster):
    """`hasleader` makes the member left alone answer "no leader" rather than hold each call until its
    deadline; the keeper stops vouching for its lease, and comes back once the quorum does."""
    etcd = await connected(etcd_cluster.endpoints, timeout=1.0)
    keeper, task, grants = await _keeper(etcd, 3, "/t/nodes/n1")
    try:
        left, *gone = etcd_cluster.names
        for name in gone:
            etcd_cluster.kill(name)
        await eventually(lambda: _value(not keeper.safe), seconds=10)
        alone = await connected([etcd_cluster.endpoint(left)], timeout=5.0)
        with pytest.raises(EtcdUnavailable, match="no leader"):
            await alone.get("/t/nodes/n1")
        await alone.close()
        for name in gone:
            await asyncio.to_thread(etcd_cluster.restart, name)
        await eventually(lambda: _value(keeper.safe), seconds=15)
        assert (await etcd.get("/t/nodes/n1")).lease == keeper.lease
    finally:
        await _stop(task)
        await etcd.close()


async def test_a_mirror_resumes_after_a_break_and_reads_everything_again_after_a_compaction(etcd_cluster):
    writer = await connected(etcd_cluster.endpoints)
    leader = await asyncio.to_thread(etcd_cluster.leader)
    watched = next(n for n in reversed(etcd_cluster.names) if n != leader)
    reader = await connected([etcd_cluster.endpoint(watched)])  # its only member is the one killed below
    seen: list[dict] = []
    mirror = asyncio.create_task(reader.mirror("/t/index/", lambda current, _keys: seen.append(dict(current)),
                                               retry_seconds=0.2))

    async def mirrored(expected: dict) -> bool:
        return bool(seen) and {k: e.value for k, e in seen[-1].items()} == expected

    try:
        await _retried(lambda: writer.put("/t/index/a", b"n1"))
        await _retried(lambda: writer.put("/t/index/b", b"n2"))
        await eventually(lambda: mirrored({"/t/index/a": b"n1", "/t/index/b": b"n2"}))
        etcd_cluster.kill(watched)  # the watch breaks; changes go on without it
        await _retried(lambda: writer.put("/t/index/c", b"n3"))
        await _retried(lambda: writer.delete("/t/index/a"))
        await asyncio.to_thread(etcd_cluster.restart, watched)
        await eventually(lambda: mirrored({"/t/index/b": b"n2", "/t/index/c": b"n3"}))
        etcd_cluster.kill(watched)
        await _retried(lambda: writer.delete("/t/index/b"))
        await _retried(lambda: writer.put("/t/index/d", b"n1"))
        revision = await _retried(lambda: writer.put("/t/other", b"x"))
        await _retried(lambda: writer.compact(revision))  # the revisions the mirror would resume from are gone
        await asyncio.to_thread(etcd_cluster.restart, watched)
        await eventually(lambda: mirrored({"/t/index/c": b"n3", "/t/index/d": b"n1"}))
    finally:
        await _stop(mirror)
        await reader.close()
        await writer.close()
