"""A real sandbox node (`cimid serve` with [cluster]) against a real 3-member etcd on loopback: it
registers under a lease with its capacity and api_level, and serves its own API without etcd, fencing
federated changes until it registers. Fencing under faults (a host cut off, a gray node) is tested on the
namespaced federation (tests/federation/test_faults.py)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from cimid.cluster.etcd import Etcd
from cimid.cluster.node import API_LEVEL, FRONT_HEADER
from cluster.processes import Node

pytestmark = pytest.mark.federation

CIMI = "http://schemas.dmtf.org/cimi/1"
CONFIG = {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "xl", "cpu": 8, "memory": 16777216,
          "disks": [{"capacity": 52428800, "format": "ext4", "initialLocation": "/dev/vda"}]}


@pytest.fixture
async def etcd(etcd_cluster):
    client = Etcd(etcd_cluster.endpoints)
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


async def _accepted(session, node) -> bool:
    return await _post_config(session, node, federated=True) == 201
