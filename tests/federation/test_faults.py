"""The failure cases of the design study's test plan (§6.3, F1-F4, F6, F7) on the namespaced federation:
every fault is a real one (SIGKILL and SIGSTOP by PID, a link down on the hub's bridge, blackhole routes
in a host's namespace), and every test ends with the federation whole again (the `fed` fixture checks)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from cluster.namespaces import Topology, in_netns
from cluster.processes import Front
from federation.conftest import TTL, until

pytestmark = pytest.mark.federation


async def _lease(fed, node, endpoints=None) -> int | None:
    entry = await fed.entry(f"nodes/{node.name}", endpoints)
    return entry.lease if entry else None


async def _owned(fed, node) -> list[str]:
    """Front URLs of a node's machines."""
    return [fed.front_url(node, m["id"]) for m in await fed.machines_on(node)]


async def _index_true_to_the_nodes(fed) -> bool:
    """Every machine of every node indexed as its node's, and nothing else indexed (no orphans)."""
    index = await fed.index()
    if index is None:
        return False
    held = {}
    for node in fed.nodes:
        for url in await _owned(fed, node):
            held[url.rsplit("/", 1)[-1]] = node.name
    return index == held


async def _no_machine_twice(fed) -> None:
    """No id and no name on two nodes."""
    ids, names = [], []
    for node in fed.nodes:
        for machine in await fed.machines_on(node):
            ids.append(machine["id"].rsplit("/", 1)[-1])
            names.append(machine["name"])
    assert len(ids) == len(set(ids)) and len(names) == len(set(names))


async def _unique_creates(fed, prefix: str, count: int) -> list[str]:
    locations = []
    for i in range(count):
        status, doc, headers = await fed.create(f"{prefix}-{i}")
        assert status == 202, doc.get("statusMessage", doc)
        locations.append(headers["Location"])
    return locations


async def test_f1_a_node_killed_answers_503_for_its_resources_lists_go_partial_and_it_comes_back(fed):
    victim = fed.nodes[1]
    await _unique_creates(fed, "f1", 3)
    held = await _owned(fed, victim)
    theirs = held[0]
    await fed.get(theirs)  # indexed
    _s, everything, _h = await fed.get(f"{fed.front.url}/cimi/machines")
    lease = await _lease(fed, victim)
    victim.signal(signal.SIGKILL)
    victim.popen.wait()
    killed_at = time.monotonic()
    strict = Front(fed.base, "strict", fed.etcd.endpoints, strict=True, netns=fed.net.hub,
                   host=Topology.HUB_ADDRESS, port=8083)
    await asyncio.to_thread(strict.start)
    try:
        # a live lease, a dead process: the node does not answer
        status, error, headers = await fed.get(theirs)
        assert status == 503 and headers["Retry-After"] == "5" and victim.name in error["statusMessage"]
        # the lease runs out: the front knows the node is down without asking it
        await until(lambda: _offline(fed, theirs, victim), seconds=TTL * 4)
        print(f"node offline for the front {time.monotonic() - killed_at:.2f} s after its SIGKILL (TTL {TTL} s)")
        status, partial, headers = await fed.get(f"{fed.front.url}/cimi/machines")
        assert status == 200 and headers["Warning"] == f'199 cimid "node(s) {victim.name} unavailable; results partial"'
        assert partial["count"] == everything["count"] - len(held)
        status, error, _h = await fed.get(f"{strict.url}/cimi/machines")
        assert status == 503 and "front.strict" in error["statusMessage"]
        # new creates avoid the node: all land on the others
        made = await _unique_creates(fed, "while-n2-is-down", 3)
        elsewhere = {url for node in fed.nodes if node is not victim for url in await _owned(fed, node)}
        assert set(made) <= elsewhere
    finally:
        await asyncio.to_thread(strict.stop)
        victim.popen.stdout.close()
        await asyncio.to_thread(victim.start)
    # back: registered under a new lease, its machines served again, the index true to every node
    await until(lambda: _registered_anew(fed, victim, lease))
    await until(fed.ready)
    status, doc, _h = await fed.get(theirs)
    assert status == 200 and doc["id"] == theirs
    assert not [m for m in await fed.machines_on(victim) if m["name"].startswith("while-n2-is-down")]
    await until(lambda: _index_true_to_the_nodes(fed))
    await _no_machine_twice(fed)


async def _offline(fed, url, node) -> bool:
    _s, error, _h = await fed.get(url)
    return f"node {node.name}, which is unavailable" in error["statusMessage"]


async def _registered_anew(fed, node, lease) -> bool:
    now = await _lease(fed, node)
    return now is not None and now != lease


async def test_f2_an_etcd_leader_killed_costs_no_node_its_lease_and_creates_resume(fed):
    before = {e.key: e.lease for e in await fed.entries("nodes/")}
    leader = await asyncio.to_thread(fed.etcd.leader)
    killed_at = time.monotonic()
    fed.etcd.kill(leader)
    try:
        await until(lambda: _created(fed, "after-leader-kill"), seconds=30)
        print(f"first create after the leader kill: {time.monotonic() - killed_at:.2f} s")
        after = await until(lambda: fed.entries("nodes/"))
        assert {e.key: e.lease for e in after} == before
    finally:
        await asyncio.to_thread(fed.etcd.restart, leader)


async def _created(fed, name: str) -> bool:
    status, _doc, _h = await fed.create(name)
    return status == 202


async def test_f3_a_member_cut_off_from_its_peers_costs_its_nodes_no_lease(fed):
    """The client trap of the design study (§3.3): node n3 lists its own host's member m3 first, and m3
    loses its peers (blackhole routes to their peer addresses) while n3 still reaches it. A channel
    that stuck to m3 would lose n3's lease; round_robin with hasleader sends the keepalives on to the
    majority, so for twice the TTL n3 keeps its lease and never refuses a front's change."""
    node = fed.nodes[2]
    lease = await _lease(fed, node)
    await until(lambda: fed.takes_a_fronts_change(node))
    majority = [fed.etcd.endpoint("m1"), fed.etcd.endpoint("m2")]
    fed.net.isolate_peers(3)
    try:
        deadline = time.monotonic() + 2 * TTL + 1
        refused, leases = [], set()
        cut_off = False
        while time.monotonic() < deadline:
            if not cut_off:  # the partition is real: alone, m3 takes no write
                probe = await fed.etcdctl("put", "/probe", "x", endpoints=[fed.etcd.endpoint("m3")])
                cut_off = probe.returncode != 0
            if not await fed.takes_a_fronts_change(node):
                refused.append(time.monotonic())
            leases.add(await _lease(fed, node, majority))
            await asyncio.sleep(0.2)
        assert cut_off
        assert refused == [] and leases == {lease}
    finally:
        fed.net.heal_peers(3)


async def test_f4_a_host_cut_off_fences_before_its_lease_expires_and_the_majority_goes_on(fed):
    """Host 3's link to the bridge goes down for twice the TTL. Its node must refuse a front's changes
    before etcd (the majority, m1 and m2) lets its lease go; meanwhile creates go on on n1 and n2; back,
    the node registers again, and no machine is placed twice or indexed twice."""
    node = fed.nodes[2]
    lease = await _lease(fed, node)
    await until(lambda: fed.takes_a_fronts_change(node))  # not fenced now (an election may just have ended)
    fed.net.link_down(3)
    cut_at = time.monotonic()
    # a probe inside host 3 (the hub cannot reach it now) asks a front's change every 50 ms and says
    # when the first one was refused, on the clock every process of this machine shares
    probe = await asyncio.create_subprocess_exec(
        *in_netns(fed.net.host(3), [sys.executable, "-c", PROBE, f"{node.url}/cimi/machineConfigs/nothing",
                                    str(3 * TTL)]), stdout=subprocess.PIPE)
    try:
        expired_at = None
        majority = [fed.etcd.endpoint("m1"), fed.etcd.endpoint("m2")]
        while expired_at is None:
            found = await fed.entries("nodes/", majority)
            if found is not None and f"/cimid/v1/nodes/{node.name}" not in [e.key for e in found]:
                expired_at = time.monotonic()
            await asyncio.sleep(0.05)
        made = await _unique_creates(fed, "during-partition", 2)
        await asyncio.sleep(max(0.0, cut_at + 2 * TTL - time.monotonic()))
    finally:
        fed.net.link_up(3)
    out, _err = await probe.communicate()
    fenced_at = float(out.decode().split()[0])
    assert cut_at < fenced_at < expired_at, (cut_at, fenced_at, expired_at)
    elsewhere = {url for n in fed.nodes[:2] for url in await _owned(fed, n)}
    assert set(made) <= elsewhere
    await until(lambda: _registered_anew(fed, node, lease))
    await until(fed.ready)
    await until(lambda: _index_true_to_the_nodes(fed))
    await _no_machine_twice(fed)


PROBE = """
import sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
end, fenced = time.monotonic() + seconds, None
while time.monotonic() < end and fenced is None:
    request = urllib.request.Request(url, method="DELETE", headers={"CIMID-Front": "probe"})
    try:
        urllib.request.urlopen(request, timeout=2).read()
    except urllib.error.HTTPError as error:  # 404 (nothing there) until the fence answers 503
        fenced = time.monotonic() if error.code == 503 else None
    time.sleep(0.05)
print(fenced)
"""


async def test_f6_without_etcd_quorum_creates_fail_fast_and_reads_go_on(fed):
    """Two of three members gone: the fronts route reads from their cached index and list, refuse
    creates at once with a CIMI 503, and every node's own API answers."""
    status, listed, _h = await fed.get(f"{fed.front.url}/cimi/machines")
    known = listed["machines"][0]["id"]
    await fed.get(known)  # indexed by now
    left, *gone = fed.etcd.names
    for name in gone:
        fed.etcd.kill(name)
    try:
        for front in fed.fronts:
            status, doc, _h = await fed.get(known.replace(fed.public, front.url))
            assert status == 200 and doc["id"] == known
            status, again, _h = await fed.get(f"{front.url}/cimi/machines")
            assert status == 200 and again["count"] == listed["count"]
            started = time.monotonic()
            status, error, _h = await fed.create("no-quorum", front=front)
            assert status == 503 and "etcd cluster does not answer" in error["statusMessage"]
            print(f"create refused after {time.monotonic() - started:.2f} s")
        for node in fed.nodes:
            status, _doc, _h = await fed.get(f"{node.url}/cimi/cloudEntryPoint")
            assert status == 200
    finally:
        for name in gone:
            await asyncio.to_thread(fed.etcd.restart, name)
    assert not [m for node in fed.nodes for m in await fed.machines_on(node) if m["name"] == "no-quorum"]


async def test_f7_a_gray_node_stopped_past_its_lease_registers_again_once(fed):
    """SIGSTOP the node for longer than its TTL: etcd drops its registration and the fronts answer 503
    for its machines; on SIGCONT the node finds its lease gone, registers once under a new lease, and
    the index still names it for exactly its machines."""
    node = fed.nodes[0]
    await _unique_creates(fed, "f7", 3)
    await until(lambda: _index_true_to_the_nodes(fed))
    mine = await _owned(fed, node)
    lease = await _lease(fed, node)
    node.signal(signal.SIGSTOP)
    try:
        await until(lambda: _gone(fed, node), seconds=TTL * 4)
        status, error, _h = await fed.get(mine[0])
        assert status == 503 and node.name in error["statusMessage"]
    finally:
        node.signal(signal.SIGCONT)
    await until(lambda: _registered_anew(fed, node, lease))
    registrations = [e.key for e in await fed.entries("nodes/")]
    assert sorted(registrations) == [f"/cimid/v1/nodes/{n.name}" for n in fed.nodes]
    await until(fed.ready)
    await until(lambda: _index_true_to_the_nodes(fed))
    index = await fed.index()
    assert sorted(id for id, owner in index.items() if owner == node.name) == sorted(u.rsplit("/", 1)[-1] for u in mine)


async def _gone(fed, node) -> bool:
    found = await fed.entries("nodes/")
    return found is not None and f"/cimid/v1/nodes/{node.name}" not in [e.key for e in found]
