"""A real sandbox node (`cimid serve` with [cluster]) against a real 3-member etcd on loopback: it
registers under a lease with its capacity and api_level, serves its own API whatever etcd does, fences
federated changes before its lease can run out, and registers again once etcd answers."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import pytest

from cimid.cluster.etcd import Etcd, EtcdUnavailable
from cimid.cluster.node import API_LEVEL, FRONT_HEADER
from cluster.processes import Node

pytestmark = pytest.mark.federation

CIMI = "http://schemas.dmtf.org/cimi/1"
CONFIG = {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "xl", "cpu": 8, "memory": 16777216,
          "disks": [{"capacity": 52428800, "format": "ext4", "initialLocation": "/dev/vda"}]}


@pytest.fixture
async def etcd(etcd_cluster):
    client = Etcd(etcd_cluster.endpoints[:2])  # the members the faults below leave alone
    await client.connect()
    yield client
    await client.close()


async def _wait_for(check, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {seconds} s")


async def _post_config(session, node: Node, federated: bool) -> int:
    headers = {FRONT_HEADER: "test-front"} if federated else {}
    async with session.post(f"{node.url}/cimi/machineConfigs", json=CONFIG, headers=headers) as reply:
        await reply.read()
        return reply.status


async def test_a_node_registers_with_its_capacity_and_leaves_when_stopped(etcd_cluster, etcd, tmp_path):
    node = Node(tmp_path, "n1", etcd_cluster.endpoints)
    try:
        await asyncio.to_thread(node.start)
        entry = await _wait_for(lambda: etcd.get("/cimid/v1/nodes/n1"))
        record = json.loads(entry.value)
        assert record["url"] == node.url and record["api_level"] == API_LEVEL and record["state"] == "ready"
        assert entry.lease != 0
        info = json.loads((await etcd.get("/cimid/v1/nodeinfo/n1")).value)
        capacity = info["capacity"]
        assert capacity["cpu"] >= 1 and capacity["memory_kb"] > 0 and capacity["machines"] >= 0
        assert capacity["pools"]["default"]["total_kb"] == 100 * 1024 * 1024  # the sandbox pool's 100 GB
    finally:
        await asyncio.to_thread(node.stop)
    assert await etcd.get("/cimid/v1/nodes/n1") is None  # revoked on the way out, not left to expire
    assert await etcd.get("/cimid/v1/nodeinfo/n1") is not None  # kept for the reconciler


async def test_cut_off_from_etcd_a_node_fences_before_its_lease_expires_and_registers_again(
        etcd_cluster, etcd, tmp_path):
    """The node talks only to m3; with m3 dead its lease is no longer kept alive, and expires on the
    majority (m1, m2) after its TTL. The node must refuse federated changes before that, keep serving
    its own clients all along, and come back when m3 does."""
    watched = etcd_cluster.names[2]
    node = Node(tmp_path, "n3", [etcd_cluster.endpoint(watched)], lease_ttl=4)
    await asyncio.to_thread(node.start)
    try:
        async with aiohttp.ClientSession() as session:
            first = await _wait_for(lambda: etcd.get("/cimid/v1/nodes/n3"))
            assert await _post_config(session, node, federated=True) == 201
            etcd_cluster.kill(watched)
            fenced_at = expired_at = None
            while expired_at is None:
                if fenced_at is None and await _post_config(session, node, federated=True) == 503:
                    fenced_at = time.monotonic()
                if await _gone(etcd, "/cimid/v1/nodes/n3"):
                    expired_at = time.monotonic()
                await asyncio.sleep(0.05)
            assert fenced_at is not None and fenced_at < expired_at
            async with session.get(f"{node.url}/cimi/cloudEntryPoint") as reply:  # its own API works
                assert reply.status == 200
            assert await _post_config(session, node, federated=False) == 201
            async with session.post(f"{node.url}/cimi/machineConfigs", json=CONFIG,
                                    headers={FRONT_HEADER: "f"}) as reply:
                error = await reply.json()
                assert reply.status == 503 and reply.headers["Retry-After"] == "5"
                assert "n3 cannot reach the federation's etcd quorum" in error["statusMessage"]
            await asyncio.to_thread(etcd_cluster.restart, watched)
            again = await _wait_for(lambda: etcd.get("/cimid/v1/nodes/n3"))
            assert again.lease != first.lease
            await _wait_for(lambda: _accepted(session, node))
    finally:
        await asyncio.to_thread(node.stop)


async def _gone(etcd, key: str) -> bool:
    try:
        return await etcd.get(key) is None
    except EtcdUnavailable:  # a leader election on the majority side
        return False


async def _accepted(session, node) -> bool:
    return await _post_config(session, node, federated=True) == 201


async def test_a_node_starts_and_serves_without_etcd_and_registers_once_it_answers(tmp_path):
    """etcd is not running at all when the node starts: its own API works, federated changes are fenced
    (it never held a lease), and it registers as soon as etcd comes up."""
    from cluster.etcd_harness import EtcdCluster
    cluster = EtcdCluster(tmp_path / "etcd", size=1)
    cluster.base.mkdir()
    node = Node(tmp_path, "n1", cluster.endpoints, lease_ttl=4)
    await asyncio.to_thread(node.start)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{node.url}/cimi/cloudEntryPoint") as reply:
                assert reply.status == 200
            assert await _post_config(session, node, federated=True) == 503
            assert await _post_config(session, node, federated=False) == 201
            await asyncio.to_thread(cluster.start)
            etcd = Etcd(cluster.endpoints)
            await etcd.connect()
            try:
                await _wait_for(lambda: etcd.get("/cimid/v1/nodes/n1"))
            finally:
                await etcd.close()
            await _wait_for(lambda: _accepted(session, node))
    finally:
        await asyncio.to_thread(node.stop)
        cluster.stop()


async def test_a_gray_node_stopped_past_its_lease_registers_again_once(etcd_cluster, etcd, tmp_path):
    """SIGSTOP the node for longer than its TTL: etcd drops its registration; on SIGCONT the node finds
    its lease gone (its keepalive is answered TTL 0) and registers once, under a new lease."""
    node = Node(tmp_path, "n2", etcd_cluster.endpoints, lease_ttl=3)
    await asyncio.to_thread(node.start)
    try:
        first = await _wait_for(lambda: etcd.get("/cimid/v1/nodes/n2"))
        node.signal(signal.SIGSTOP)
        await _wait_for(lambda: _gone(etcd, "/cimid/v1/nodes/n2"))
        node.signal(signal.SIGCONT)
        again = await _wait_for(lambda: etcd.get("/cimid/v1/nodes/n2"))
        assert again.lease != first.lease
        entries, _revision = await etcd.get_prefix("/cimid/v1/nodes/")
        assert [e.key for e in entries] == ["/cimid/v1/nodes/n2"]
        async with aiohttp.ClientSession() as session:
            await _wait_for(lambda: _accepted(session, node))
    finally:
        await asyncio.to_thread(node.stop)
