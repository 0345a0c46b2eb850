"""`cimid front` end to end, with real processes on loopback: a 3-member etcd, three sandbox nodes, two
fronts (one strict). Creates, reads, actions and lists go through a front; a node killed with SIGKILL
makes its resources 503 and lists partial (Warning) or 503 (strict); back, it serves again."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import pytest

from cimid.cluster.etcd import Etcd, EtcdUnavailable

from cluster.etcd_harness import EtcdCluster
from cluster.processes import Front, Node
from conftest import NS, assert_valid_xml

pytestmark = pytest.mark.federation

CIMI = "http://schemas.dmtf.org/cimi/1"
TTL = 4


class Federation:
    def __init__(self, base):
        self.etcd = EtcdCluster(base / "etcd")
        self.etcd.base.mkdir()
        self.nodes = [Node(base, f"n{i}", self.etcd.endpoints, lease_ttl=TTL) for i in (1, 2, 3)]
        self.front = Front(base, "front", self.etcd.endpoints)
        self.strict = Front(base, "strict", self.etcd.endpoints, strict=True)

    def start(self):
        self.etcd.start()
        for process in (*self.nodes, self.front, self.strict):
            process.start()

    def stop(self):
        for process in (self.front, self.strict, *self.nodes):
            process.stop()
        self.etcd.stop()


@pytest.fixture(scope="module")
async def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"))
    try:
        await asyncio.to_thread(fed.start)
        async with aiohttp.ClientSession() as session:
            fed.session = session
            await _until(lambda: _live_nodes(fed, 3))
            yield fed
    finally:
        await asyncio.to_thread(fed.stop)


async def _until(check, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {seconds} s")


async def _live_nodes(fed, expected: int) -> bool:
    status, doc, _ = await _get(fed, f"{fed.front.url}/cimi/machines")
    return status == 200 and not _.get("Warning") and await _registered(fed) == expected


async def _registered(fed) -> int:
    count = 0
    for node in fed.nodes:
        async with fed.session.get(f"{node.url}/cimi/cloudEntryPoint") as reply:
            count += reply.status == 200
    return count


async def _get(fed, url, **params):
    async with fed.session.get(url, params=params) as reply:
        body = await reply.read()
        return reply.status, (json.loads(body) if body and "json" in reply.content_type else body), reply.headers


async def _create(fed, name: str) -> tuple[str, str]:
    body = {"resourceURI": f"{CIMI}/MachineCreate", "name": name,
            "machineTemplate": {"href": f"{fed.front.url}/cimi/machineTemplates/small-tiny-linux"}}
    async with fed.session.post(f"{fed.front.url}/cimi/machines", json=body) as reply:
        assert reply.status == 202, await reply.text()
        return reply.headers["Location"], reply.headers["CIMI-Job-URI"]


def _no_node_address(fed, text: str) -> None:
    for node in fed.nodes:
        assert node.url not in text


async def test_the_entry_point_is_the_fronts_own(federation):
    fed = federation
    status, doc, _ = await _get(fed, f"{fed.front.url}/cimi/cloudEntryPoint")
    assert status == 200 and doc["baseURI"] == f"{fed.front.url}/cimi/"
    assert doc["machines"]["href"] == f"{fed.front.url}/cimi/machines"
    _no_node_address(fed, json.dumps(doc))
    status, body, headers = await _get(fed, f"{fed.front.url}/cimi/cloudEntryPoint", **{"$format": "xml"})
    root = assert_valid_xml(body)
    assert root.findtext("c:baseURI", namespaces=NS) == f"{fed.front.url}/cimi/"
    _no_node_address(fed, body.decode())


async def test_creates_spread_reads_and_actions_are_routed_and_lists_merge(federation):
    fed = federation
    made = [await _create(fed, f"web-{i}") for i in range(6)]
    for location, job in made:
        assert location.startswith(f"{fed.front.url}/cimi/machines/") and job.startswith(f"{fed.front.url}/cimi/jobs/")
    # the fewest machines first: two on each node
    direct = {}
    for node in fed.nodes:
        status, doc, _ = await _get(fed, f"{node.url}/cimi/machines")
        direct[node.name] = [m["id"].replace(f"{node.url}/cimi/", f"{fed.front.url}/cimi/")
                             for m in doc.get("machines", [])]
    assert sorted(len(ids) for ids in direct.values()) == [2, 2, 2]
    assert sorted(i for ids in direct.values() for i in ids) == sorted(loc for loc, _ in made)
    for location, job in made:  # a Job, then its machine, through the front
        status, doc, _ = await _get(fed, job)
        assert status == 200 and doc["id"] == job
        await _until(lambda: _state(fed, location, "STARTED"))
    status, doc, _ = await _get(fed, made[0][0])
    _no_node_address(fed, json.dumps(doc))
    # a sub-collection and a resource of another collection the machine names: both found on its node
    status, disks, _h = await _get(fed, doc["disks"]["href"])
    assert status == 200 and disks["id"] == doc["disks"]["href"]
    status, log, _h = await _get(fed, doc["eventLog"]["href"])
    assert status == 200 and log["id"] == doc["eventLog"]["href"] and log["id"].startswith(f"{fed.front.url}/cimi/")
    stop = next(op["href"] for op in doc["operations"] if op["rel"].endswith("/stop"))
    assert stop.startswith(f"{fed.front.url}/cimi/machines/")
    async with fed.session.post(stop, json={"resourceURI": f"{CIMI}/Action", "action": f"{CIMI}/action/stop"}) as r:
        assert r.status == 202, await r.text()
    await _until(lambda: _state(fed, made[0][0], "STOPPED"))

    # the whole list, ordered, equals the walk page by page; count is the sum of the nodes' counts
    query = {"$orderby": "name:desc", "$filter": "name != 'web-5'"}
    status, whole, headers = await _get(fed, f"{fed.front.url}/cimi/machines", **query)
    assert status == 200 and "Warning" not in headers and whole["count"] == 5
    assert [m["name"] for m in whole["machines"]] == [f"web-{i}" for i in (4, 3, 2, 1, 0)]
    walked = []
    for first in range(1, 7, 2):
        _s, page, _h = await _get(fed, f"{fed.front.url}/cimi/machines", **query, **{"$first": first,
                                                                                       "$last": first + 1})
        assert page["count"] == 5
        walked += page.get("machines", [])
    assert walked == whole["machines"]
    _no_node_address(fed, json.dumps(whole))
    _s, selected, _h = await _get(fed, f"{fed.front.url}/cimi/machines", **{"$select": "name", "$orderby": "name",
                                                                            "$last": 2})
    assert [m["name"] for m in selected["machines"]] == ["web-0", "web-1"] and "id" not in selected["machines"][0]
    status, body, _h = await _get(fed, f"{fed.front.url}/cimi/machines", **{"$format": "xml", "$orderby": "name"})
    root = assert_valid_xml(body)
    names = [m.findtext("c:name", namespaces=NS) for m in root.findall("c:Machine", NS)]
    assert names == [f"web-{i}" for i in range(6)]
    _no_node_address(fed, body.decode())
    async with fed.session.get(made[1][0], headers={"Accept": "application/xml"}) as reply:
        body = await reply.read()
        assert reply.status == 200 and reply.headers["Content-Type"] == "application/xml"
    root = assert_valid_xml(body)
    assert root.findtext("c:id", namespaces=NS) == made[1][0]
    _no_node_address(fed, body.decode())
    xml_create = (f'<MachineCreate xmlns="{CIMI}"><name>xml-1</name>'
                  f'<machineTemplate href="{fed.front.url}/cimi/machineTemplates/small-tiny-linux"/></MachineCreate>')
    async with fed.session.post(f"{fed.front.url}/cimi/machines", data=xml_create,
                                headers={"Content-Type": "application/xml", "Accept": "application/xml"}) as reply:
        body = await reply.read()
        assert reply.status == 202, body
        assert reply.headers["Location"].startswith(f"{fed.front.url}/cimi/machines/")
    _no_node_address(fed, body.decode())
    async with fed.session.post(f"{fed.front.url}/cimi/machines", data=b"<MachineCreate",
                                headers={"Content-Type": "application/xml"}) as reply:
        error = await reply.json()
        assert reply.status == 400 and error["resourceURI"] == f"{CIMI}/Job"
    status, error, _h = await _get(fed, f"{fed.front.url}/cimi/machines", **{"$filter": "nosuch = 1"})
    assert status == 400 and "nosuch" in error["statusMessage"]
    status, error, _h = await _get(fed, f"{fed.front.url}/cimi/machines/00000000-0000-0000-0000-000000000000")
    assert status == 404 and error["resourceURI"] == f"{CIMI}/Job"


async def _state(fed, url, state) -> bool:
    status, doc, _ = await _get(fed, url)
    return status == 200 and doc["state"] == state


async def test_a_node_down_answers_503_for_its_resources_and_lists_go_partial(federation):
    fed = federation
    victim = fed.nodes[2]
    _s, doc, _h = await _get(fed, f"{victim.url}/cimi/machines")
    theirs = doc["machines"][0]["id"].replace(f"{victim.url}/cimi/", f"{fed.front.url}/cimi/")
    _s, everything, _h = await _get(fed, f"{fed.front.url}/cimi/machines")
    victim.signal(signal.SIGKILL)
    victim.popen.wait()
    try:
        # a live lease, a dead process: the node does not answer
        status, error, headers = await _get(fed, theirs)
        assert status == 503 and headers["Retry-After"] == "5" and victim.name in error["statusMessage"]
        # the lease runs out: the front sees the node known and down, without asking it
        await _until(lambda: _offline(fed, theirs, victim), seconds=TTL * 3)
        status, partial, headers = await _get(fed, f"{fed.front.url}/cimi/machines")
        assert status == 200 and headers["Warning"] == f'199 cimid "node(s) {victim.name} unavailable; results partial"'
        assert partial["count"] == everything["count"] - len(doc["machines"])
        status, error, headers = await _get(fed, theirs)
        assert status == 503 and f"node {victim.name}, which is unavailable" in error["statusMessage"]
        status, error, headers = await _get(fed, f"{fed.strict.url}/cimi/machines")
        assert status == 503 and "front.strict" in error["statusMessage"]
        location, _job = await _create(fed, "while-n3-is-down")
        direct = [await _get(fed, f"{n.url}/cimi/machines", **{"$filter": "name = 'while-n3-is-down'"})
                  for n in fed.nodes[:2]]
        assert sum(d[1]["count"] for d in direct) == 1
    finally:
        await asyncio.to_thread(victim.start)
    await _until(lambda: _live_nodes(fed, 3), seconds=TTL * 3)
    status, doc, _h = await _get(fed, theirs)
    assert status == 200 and doc["id"] == theirs


async def _offline(fed, url, node) -> bool:
    _s, error, _h = await _get(fed, url)
    return f"node {node.name}, which is unavailable" in error["statusMessage"]


async def test_without_etcd_quorum_creates_fail_fast_and_reads_go_on(federation):
    """Two of three etcd members gone: the front still routes reads from its cached index and lists,
    refuses creates at once with a CIMI 503, and every node's own API still answers."""
    fed = federation
    status, listed, _h = await _get(fed, f"{fed.front.url}/cimi/machines")
    known = listed["machines"][0]["id"]
    await _get(fed, known)  # indexed by now
    left, *gone = fed.etcd.names
    for name in gone:
        fed.etcd.kill(name)
    try:
        status, doc, _h = await _get(fed, known)
        assert status == 200 and doc["id"] == known
        status, again, _h = await _get(fed, f"{fed.front.url}/cimi/machines")
        assert status == 200 and again["count"] == listed["count"]
        body = {"resourceURI": f"{CIMI}/MachineCreate", "name": "no-quorum",
                "machineTemplate": {"href": f"{fed.front.url}/cimi/machineTemplates/small-tiny-linux"}}
        async with fed.session.post(f"{fed.front.url}/cimi/machines", json=body) as reply:
            error = await reply.json()
            assert reply.status == 503 and "etcd cluster does not answer" in error["statusMessage"]
        for node in fed.nodes:
            status, _doc, _h = await _get(fed, f"{node.url}/cimi/cloudEntryPoint")
            assert status == 200
    finally:
        for name in gone:
            await asyncio.to_thread(fed.etcd.restart, name)


async def test_an_etcd_leader_killed_costs_no_node_its_lease_and_creates_resume(federation):
    fed = federation
    etcd = Etcd(fed.etcd.endpoints)
    await etcd.connect()
    try:
        await _until(lambda: _all_registered(etcd, 3), seconds=30)  # after the quorum loss above
        before = {e.key: e.lease for e in (await etcd.get_prefix("/cimid/v1/nodes/"))[0]}
        leader = await asyncio.to_thread(fed.etcd.leader)
        fed.etcd.kill(leader)
        try:
            await _until(lambda: _created(fed, "after-leader-kill"), seconds=30)
            after = {e.key: e.lease for e in (await etcd.get_prefix("/cimid/v1/nodes/"))[0]}
            assert after == before
        finally:
            await asyncio.to_thread(fed.etcd.restart, leader)
    finally:
        await etcd.close()


async def _all_registered(etcd, count: int) -> bool:
    try:
        return len((await etcd.get_prefix("/cimid/v1/nodes/"))[0]) == count
    except EtcdUnavailable:  # an election in progress
        return False


async def _created(fed, name: str) -> bool:
    body = {"resourceURI": f"{CIMI}/MachineCreate", "name": name,
            "machineTemplate": {"href": f"{fed.front.url}/cimi/machineTemplates/small-tiny-linux"}}
    async with fed.session.post(f"{fed.front.url}/cimi/machines", json=body) as reply:
        return reply.status == 202
