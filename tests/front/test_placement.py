"""Placement: the built-in policy and the hook order (in process), then real fronts on a real etcd:
concurrent creates through two fronts never overbook a node, cimid:target is obeyed, and a create
retried with the same Idempotency-Key makes one machine."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pytest

from cimid.cluster.etcd import Etcd
from cimid.front.placement import BuiltinPlacement, collection_level, create_level, free
from cimid.hookspecs import PlacementCandidate, PlacementRequest, hookimpl
from cimid.plugins import plugin_manager
from cluster.etcd_harness import EtcdCluster
from cluster.processes import Front, Node

CIMI = "http://schemas.dmtf.org/cimi/1"


def test_the_builtin_policy_filters_then_weighs():
    policy = BuiltinPlacement()
    nodes = [PlacementCandidate("a", 1, 4, 4096, 3), PlacementCandidate("b", 1, 1, 8192, 1),
             PlacementCandidate("c", 2, 8, 1024, 1), PlacementCandidate("d", 1, 8, 8192, 0)]
    assert policy.cimid_place(PlacementRequest("machines", 2, 1024), nodes) == "d"  # fits, fewest machines
    assert policy.cimid_place(PlacementRequest("machines", 2, 8192), nodes) == "d"
    assert policy.cimid_place(PlacementRequest("machines", 1, 4096), nodes[:3]) == "b"  # b: 1 machine, most memory
    assert policy.cimid_place(PlacementRequest("machines", 2, 1024), nodes[:3]) == "c"  # b lacks the cpu
    assert policy.cimid_place(PlacementRequest("machines", 1, 1024, api_level=2), nodes) == "c"
    assert policy.cimid_place(PlacementRequest("machines", 1, 2048, api_level=2), nodes) is None
    assert policy.cimid_place(PlacementRequest("machines", 1, 1024, target="a"), nodes) == "a"
    assert policy.cimid_place(PlacementRequest("machines", 9, 0), nodes) is None


def test_what_needs_which_api_level():
    assert collection_level("machines") == collection_level("volumes") == collection_level("machineTemplates") == 1
    assert collection_level("networks") == collection_level("forwardingGroups") == collection_level("addresses") == 2
    assert create_level("machines", {"machineConfig": {"cpu": 1}}) == 1
    assert create_level("machines", {"volumes": [{"volume": {"href": "v"}}]}) == 1
    assert create_level("machines", {"networkInterfaces": [{"network": {"href": "n"}}]}) == 2
    assert create_level("machines", {"networkInterfaces": []}) == 1  # none asked for
    assert create_level("networks", {}) == 2


def test_a_plugin_places_before_the_builtin_policy():
    class Pinned:
        @hookimpl
        def cimid_place(self, request, candidates):
            return "b" if request.collection == "machines" else None

    pm = plugin_manager((BuiltinPlacement(), Pinned()))
    nodes = [PlacementCandidate("a", 1, 4, 4096, 0), PlacementCandidate("b", 1, 4, 4096, 5)]
    assert pm.hook.cimid_place(request=PlacementRequest("machines", 1, 1), candidates=nodes) == "b"
    assert pm.hook.cimid_place(request=PlacementRequest("volumes"), candidates=nodes) == "a"


def test_free_capacity_counts_live_reservations_only():
    record = {"cpu": 8, "memory_kb": 100, "used_cpu": 2, "used_memory_kb": 10,
              "inflight": {"x": {"cpu": 1, "memory_kb": 5, "expires": 20.0},
                           "y": {"cpu": 3, "memory_kb": 50, "expires": 5.0}}}
    assert free(record, now=10.0) == (5, 85)
    assert free(record, now=30.0) == (6, 90)


@pytest.fixture(scope="module")
async def small_federation(tmp_path_factory):
    """Three nodes with room for two 1-vCPU machines each (whatever the machine's CPU count), two fronts."""
    base = tmp_path_factory.mktemp("placement")
    etcd = EtcdCluster(base / "etcd")
    etcd.base.mkdir()
    ratio = 2.5 / (os.cpu_count() or 1)
    nodes = [Node(base, f"n{i}", etcd.endpoints, lease_ttl=6, cpu_allocation_ratio=ratio) for i in (1, 2, 3)]
    fronts = [Front(base, f"f{i}", etcd.endpoints) for i in (1, 2)]
    fronts[1] = Front(base, "f2", etcd.endpoints, public_base_url=fronts[0].url)  # replicas behind one name
    try:
        await asyncio.to_thread(etcd.start)
        for process in (*nodes, *fronts):
            await asyncio.to_thread(process.start)
        async with aiohttp.ClientSession() as session:
            yield session, nodes, fronts, etcd
    finally:
        for process in (*fronts, *nodes):
            await asyncio.to_thread(process.stop)
        etcd.stop()


async def _create(session, front, name, headers=None, public=None, **extra):
    """A MachineCreate sent to `front`, with hrefs as every front of the federation names them (f1's URL)."""
    body = {"resourceURI": f"{CIMI}/MachineCreate", "name": name,
            "machineTemplate": {"href": f"{public}/cimi/machineTemplates/small-tiny-linux"}, **extra}
    async with session.post(f"{front.url}/cimi/machines", json=body, headers=headers or {}) as reply:
        return reply.status, reply.headers.get("Location"), await reply.text()


async def _machines_on(session, node) -> list[dict]:
    async with session.get(f"{node.url}/cimi/machines") as reply:
        return (await reply.json()).get("machines", [])


async def _until_ready(session, front, nodes):
    for _ in range(200):
        async with session.get(f"{front.url}/cimi/machines") as reply:
            if reply.status == 200 and "Warning" not in reply.headers:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the front never saw every node")


@pytest.mark.federation
async def test_targets_idempotent_retries_and_concurrent_creates_never_overbook(small_federation):
    session, nodes, (f1, f2), etcd_cluster = small_federation
    await _until_ready(session, f1, nodes)
    await _until_ready(session, f2, nodes)

    status, location, text = await _create(session, f1, public=f1.url, name="pinned", **{"cimid:target": "n3"})
    assert status == 202, text
    assert [m["name"] for m in await _machines_on(session, nodes[2])] == ["pinned"]
    assert "n3" not in location and nodes[2].url not in location
    status, _location, text = await _create(session, f1, public=f1.url, name="nowhere", **{"cimid:target": "n9"})
    assert status == 503 and "n9, which is not available" in json.loads(text)["statusMessage"]

    key = {"Idempotency-Key": "retry-me"}
    first = await _create(session, f1, public=f1.url, name="once", headers=key)
    again = await _create(session, f2, public=f1.url, name="once", headers=key)  # same node, same answer
    assert first[0] == again[0] == 202 and first[1] == again[1]
    everywhere = [m for node in nodes for m in await _machines_on(session, node)]
    assert [m["name"] for m in everywhere].count("once") == 1

    # 2 of 6 places are taken: of 20 concurrent creates through both fronts, exactly 4 get one
    answers = await asyncio.gather(*(_create(session, (f1, f2)[i % 2], f"burst-{i}", public=f1.url)
                                     for i in range(20)))
    statuses = sorted(a[0] for a in answers)
    assert statuses == [202] * 4 + [503] * 16, answers
    refused = next(json.loads(a[2]) for a in answers if a[0] == 503)
    assert refused["statusMessage"].startswith("no node has room for 1 vCPU")
    per_node = [len(await _machines_on(session, node)) for node in nodes]
    assert per_node == [2, 2, 2]
    # every reservation was traded for the machine it made, in the node's own figures: none counted twice
    etcd = Etcd(etcd_cluster.endpoints)
    await etcd.connect()
    try:
        for node in nodes:
            async def settled(node=node):
                record = json.loads((await etcd.get(f"/cimid/v1/capacity/{node.name}")).value)
                return record["inflight"] == {} and record["used_cpu"] == record["machines"] == 2
            for _ in range(100):
                if await settled():
                    break
                await asyncio.sleep(0.1)
            assert await settled()
    finally:
        await etcd.close()
