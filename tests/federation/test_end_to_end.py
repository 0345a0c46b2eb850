"""End to end through a front (design study §6.3, case 1), on the namespaced federation: the front's own
CloudEntryPoint; creates placed, reads, actions and sub-resources routed, lists merged page by page in
JSON and XML; a DELETE takes the machine out of the index and the placement ledger."""

from __future__ import annotations

import json

import pytest

from conftest import NS, assert_valid_xml
from federation.conftest import CIMI, until

pytestmark = pytest.mark.federation


def _no_node_address(fed, text: str) -> None:
    for node in fed.nodes:
        assert node.url not in text


async def _state(fed, url, state) -> bool:
    status, doc, _ = await fed.get(url)
    return status == 200 and doc["state"] == state


async def test_the_entry_point_is_the_fronts_own(fed):
    for front in fed.fronts:  # replicas behind one name: both answer with its address
        status, doc, _ = await fed.get(f"{front.url}/cimi/cloudEntryPoint")
        assert status == 200 and doc["baseURI"] == f"{fed.public}/cimi/"
        assert doc["machines"]["href"] == f"{fed.public}/cimi/machines"
        _no_node_address(fed, json.dumps(doc))
    status, body, headers = await fed.get(f"{fed.front.url}/cimi/cloudEntryPoint", **{"$format": "xml"})
    root = assert_valid_xml(body)
    assert root.findtext("c:baseURI", namespaces=NS) == f"{fed.public}/cimi/"
    _no_node_address(fed, body.decode())


async def test_creates_spread_reads_and_actions_are_routed_and_lists_merge(fed):
    before = {node.name: len(await fed.machines_on(node)) for node in fed.nodes}
    made = []
    for i in range(6):
        status, doc, headers = await fed.create(f"web-{i}", front=fed.fronts[i % 2])
        assert status == 202, doc
        made.append((headers["Location"], headers["CIMI-Job-URI"]))
    for location, job in made:
        assert location.startswith(f"{fed.public}/cimi/machines/") and job.startswith(f"{fed.public}/cimi/jobs/")
    # the fewest machines first, one create after the other: the six fill the emptiest nodes up
    after = {node.name: await fed.machines_on(node) for node in fed.nodes}
    assert sorted(len(ms) for ms in after.values()) == _filled(list(before.values()), 6)
    mine = {fed.front_url(node, m["id"]) for node in fed.nodes for m in after[node.name]
            if m["name"].startswith("web-")}
    assert mine == {location for location, _ in made}
    for location, job in made:  # a Job, then its machine, through the front
        status, doc, _ = await fed.get(job)
        assert status == 200 and doc["id"] == job
        await until(lambda: _state(fed, location, "STARTED"))
    status, doc, _ = await fed.get(made[0][0])
    _no_node_address(fed, json.dumps(doc))
    # a sub-collection and a resource of another collection the machine names: both found on its node
    status, disks, _h = await fed.get(doc["disks"]["href"])
    assert status == 200 and disks["id"] == doc["disks"]["href"]
    status, log, _h = await fed.get(doc["eventLog"]["href"])
    assert status == 200 and log["id"] == doc["eventLog"]["href"] and log["id"].startswith(f"{fed.public}/cimi/")
    stop = next(op["href"] for op in doc["operations"] if op["rel"].endswith("/stop"))
    assert stop.startswith(f"{fed.public}/cimi/machines/")
    async with fed.session.post(stop.replace(fed.public, fed.fronts[1].url),
                                json={"resourceURI": f"{CIMI}/Action", "action": f"{CIMI}/action/stop"}) as r:
        assert r.status == 202, await r.text()
    await until(lambda: _state(fed, made[0][0], "STOPPED"))

    # the federated list equals the union of the nodes' own lists, in the same order
    query = {"$orderby": "name:desc", "$filter": "name >= 'web-' and name < 'web.' and name != 'web-5'"}
    direct = []
    for node in fed.nodes:
        _s, page, _h = await fed.get(f"{node.url}/cimi/machines", **query)
        direct += [{**m, "id": fed.front_url(node, m["id"])} for m in page.get("machines", [])]
    status, whole, headers = await fed.get(f"{fed.front.url}/cimi/machines", **query)
    assert status == 200 and "Warning" not in headers and whole["count"] == 5 == len(direct)
    assert [m["name"] for m in whole["machines"]] == [f"web-{i}" for i in (4, 3, 2, 1, 0)]
    assert {m["id"] for m in whole["machines"]} == {m["id"] for m in direct}
    walked = []
    for first in range(1, 7, 2):
        _s, page, _h = await fed.get(f"{fed.fronts[first % 2].url}/cimi/machines",
                                     **query, **{"$first": first, "$last": first + 1})
        assert page["count"] == 5
        walked += page.get("machines", [])
    assert walked == whole["machines"]
    _no_node_address(fed, json.dumps(whole))
    # every machine names its node; $filter on it asks that node only
    assert {m["id"]: m["cimid:node"] for m in whole["machines"]} == \
        {fed.front_url(node, m["id"]): node.name for node in fed.nodes for m in after[node.name]
         if m["name"].startswith("web-") and m["name"] != "web-5"}
    for node in fed.nodes:
        _s, on, _h = await fed.get(f"{fed.front.url}/cimi/machines",
                                   **{"$filter": f"cimid:node='{node.name}' and name >= 'web-' and name < 'web.'"})
        assert sorted(m["name"] for m in on.get("machines", [])) == \
            sorted(m["name"] for m in after[node.name] if m["name"].startswith("web-"))
    _s, selected, _h = await fed.get(f"{fed.front.url}/cimi/machines", **{
        "$select": "name", "$orderby": "name", "$filter": "name >= 'web-' and name < 'web.'", "$last": 2})
    assert [m["name"] for m in selected["machines"]] == ["web-0", "web-1"] and "id" not in selected["machines"][0]
    status, body, _h = await fed.get(f"{fed.front.url}/cimi/machines", **{
        "$format": "xml", "$orderby": "name", "$filter": "name >= 'web-' and name < 'web.'"})
    root = assert_valid_xml(body)
    names = [m.findtext("c:name", namespaces=NS) for m in root.findall("c:Machine", NS)]
    assert names == [f"web-{i}" for i in range(6)]
    _no_node_address(fed, body.decode())
    async with fed.session.get(made[1][0].replace(fed.public, fed.front.url),
                               headers={"Accept": "application/xml"}) as reply:
        body = await reply.read()
        assert reply.status == 200 and reply.headers["Content-Type"] == "application/xml"
    assert assert_valid_xml(body).findtext("c:id", namespaces=NS) == made[1][0]
    _no_node_address(fed, body.decode())
    xml_create = (f'<MachineCreate xmlns="{CIMI}"><name>xml-1</name>'
                  f'<machineTemplate href="{fed.public}/cimi/machineTemplates/small-tiny-linux"/></MachineCreate>')
    async with fed.session.post(f"{fed.front.url}/cimi/machines", data=xml_create,
                                headers={"Content-Type": "application/xml", "Accept": "application/xml"}) as reply:
        body = await reply.read()
        assert reply.status == 202, body
        assert reply.headers["Location"].startswith(f"{fed.public}/cimi/machines/")
    _no_node_address(fed, body.decode())
    async with fed.session.post(f"{fed.front.url}/cimi/machines", data=b"<MachineCreate",
                                headers={"Content-Type": "application/xml"}) as reply:
        error = await reply.json()
        assert reply.status == 400 and error["resourceURI"] == f"{CIMI}/Job"
    status, error, _h = await fed.get(f"{fed.front.url}/cimi/machines", **{"$filter": "nosuch = 1"})
    assert status == 400 and "nosuch" in error["statusMessage"]
    status, error, _h = await fed.get(f"{fed.front.url}/cimi/machines/00000000-0000-0000-0000-000000000000")
    assert status == 404 and error["resourceURI"] == f"{CIMI}/Job"


def _filled(counts: list[int], creates: int) -> list[int]:
    """The machines per node, sorted, after `creates` each went to a node with the fewest."""
    counts = list(counts)
    for _ in range(creates):
        counts[counts.index(min(counts))] += 1
    return sorted(counts)


async def test_a_delete_through_the_front_leaves_no_index_entry_and_frees_its_place(fed):
    status, _doc, headers = await fed.create("short-lived")
    assert status == 202
    location = headers["Location"]
    id = location.rsplit("/", 1)[-1]
    await until(lambda: _state(fed, location, "STARTED"))
    index = await until(fed.index)
    owner = next(node for node in fed.nodes if node.name == index[id])
    used = json.loads((await fed.entry(f"capacity/{owner.name}")).value)["used_cpu"]
    async with fed.session.delete(location.replace(fed.public, fed.fronts[1].url)) as reply:
        assert reply.status == 202, await reply.text()

    async def gone() -> bool:
        status, _d, _h = await fed.get(location)
        index = await fed.index()
        record = json.loads((await fed.entry(f"capacity/{owner.name}")).value)
        return status == 404 and index is not None and id not in index and record["used_cpu"] < used \
            and record["inflight"] == {}

    await until(gone)
    assert "short-lived" not in [m["name"] for m in await fed.machines_on(owner)]
