"""The catalogue as global data, end to end with real processes on loopback (one etcd member, two
sandbox nodes, one front): configurations, templates and credentials live in etcd under catalog/, the
seeded ones appear once, edits follow a node's CIMI semantics, and a machine made from a global template
reaches its node by value."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from cimid.cluster.etcd import Etcd

from cluster.etcd_harness import EtcdCluster
from cluster.processes import Front, Node
from conftest import NS, assert_valid_xml

pytestmark = pytest.mark.federation

CIMI = "http://schemas.dmtf.org/cimi/1"


class Federation:
    def __init__(self, base):
        self.etcd = EtcdCluster(base / "etcd", size=1)
        self.etcd.base.mkdir()
        self.nodes = [Node(base, f"n{i}", self.etcd.endpoints, lease_ttl=4) for i in (1, 2)]
        self.front = Front(base, "front", self.etcd.endpoints)

    def start(self):
        self.etcd.start()
        for process in (*self.nodes, self.front):
            process.start()

    def stop(self):
        for process in (self.front, *self.nodes):
            process.stop()
        self.etcd.stop()


@pytest.fixture(scope="module")
async def fed(tmp_path_factory):
    federation = Federation(tmp_path_factory.mktemp("catalogue"))
    try:
        await asyncio.to_thread(federation.start)
        async with aiohttp.ClientSession() as session:
            federation.session = session
            await _until(lambda: _both_live(federation))
            yield federation
    finally:
        await asyncio.to_thread(federation.stop)


async def _until(check, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {seconds} s")


async def _both_live(fed) -> bool:
    async with fed.session.get(f"{fed.front.url}/cimi/machines") as reply:
        return reply.status == 200 and "Warning" not in reply.headers


async def _call(fed, method, url, body=None, **kw):
    async with fed.session.request(method, url, json=body, **kw) as reply:
        data = await reply.read()
        doc = json.loads(data) if data and "json" in reply.content_type else data
        return reply.status, doc, reply.headers


def _api(fed, path: str) -> str:
    return f"{fed.front.url}/cimi/{path}"


async def _etcd_catalogue(fed) -> dict[str, dict]:
    etcd = Etcd(fed.etcd.endpoints)
    await etcd.connect()
    try:
        entries, _ = await etcd.get_prefix("/cimid/v1/catalog/")
        return {e.key.removeprefix("/cimid/v1/catalog/"): json.loads(e.value) for e in entries
                if not e.key.endswith(".imported")}
    finally:
        await etcd.close()


async def _machine_count(fed) -> int:
    total = 0
    for node in fed.nodes:
        status, doc, _ = await _call(fed, "GET", f"{node.url}/cimi/machines")
        total += doc["count"]
    return total


async def test_seeded_entries_appear_once_from_etcd(fed):
    status, doc, _ = await _call(fed, "GET", _api(fed, "machineConfigs"), params={"$orderby": "name"})
    assert status == 200 and doc["count"] == 4  # each node seeded four; the federation shows them once
    assert [c["name"] for c in doc["machineConfigurations"]] == ["large", "medium", "small", "tiny"]
    assert all(c["id"].startswith(_api(fed, "machineConfigs/")) for c in doc["machineConfigurations"])
    status, doc, _ = await _call(fed, "GET", _api(fed, "machineTemplates"))
    assert doc["count"] == 1
    assert doc["machineTemplates"][0]["machineConfig"]["href"] == _api(fed, "machineConfigs/small")
    stored = await _etcd_catalogue(fed)
    assert "machineConfigs/small" in stored and stored["machineTemplates/small-tiny-linux"]["attrs"][
        "machineConfig"] == {"href": "machineConfigs/small"}
    status, body, _ = await _call(fed, "GET", _api(fed, "machineConfigs"), params={"$format": "xml"})
    root = assert_valid_xml(body)
    assert len(root.findall("c:MachineConfiguration", NS)) == 4


async def test_create_read_update_delete_with_etags(fed):
    config = {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "huge", "cpu": 8, "memory": 16777216,
              "properties": {"tier": "gold"}}
    status, doc, headers = await _call(fed, "POST", _api(fed, "machineConfigs"), config)
    assert status == 201, doc
    location, etag = headers["Location"], headers["ETag"]
    assert location == doc["id"] and location.startswith(_api(fed, "machineConfigs/"))
    id = location.rsplit("/", 1)[-1]
    assert (await _etcd_catalogue(fed))[f"machineConfigs/{id}"]["attrs"]["cpu"] == 8
    for node in fed.nodes:  # a global entry, on no node
        status, _doc, _ = await _call(fed, "GET", f"{node.url}/cimi/machineConfigs/{id}")
        assert status == 404
    status, doc, headers = await _call(fed, "GET", location)
    assert status == 200 and doc["cpu"] == 8 and headers["ETag"] == etag
    assert {op["rel"] for op in doc["operations"]} >= {"edit", "delete"}
    # $filter (properties too), $orderby, $first/$last, $select over the global entries
    status, doc, _ = await _call(fed, "GET", _api(fed, "machineConfigs"),
                                 params={"$filter": "cpu >= 2", "$orderby": "cpu:desc", "$first": "1", "$last": "2"})
    assert status == 200 and doc["count"] == 3
    assert [c["name"] for c in doc["machineConfigurations"]] == ["huge", "large"]
    status, doc, _ = await _call(fed, "GET", _api(fed, "machineConfigs"),
                                 params={"$filter": "property['tier'] = 'gold'", "$select": "name"})
    assert doc["count"] == 1 and doc["machineConfigurations"] == [
        {"resourceURI": f"{CIMI}/MachineConfiguration", "id": location, "name": "huge"}]
    # a stale If-Match changes nothing
    changed = {**config, "cpu": 6}
    status, doc, _ = await _call(fed, "PUT", location, changed, headers={"If-Match": '"1"'})
    assert status == 412, doc
    status, doc, _ = await _call(fed, "GET", location)
    assert doc["cpu"] == 8
    status, doc, headers = await _call(fed, "PUT", location, changed, headers={"If-Match": etag})
    assert status == 200 and doc["cpu"] == 6 and headers["ETag"] != etag
    new_etag = headers["ETag"]
    status, _doc, _ = await _call(fed, "DELETE", location, headers={"If-Match": etag})
    assert status == 412
    status, _doc, _ = await _call(fed, "GET", location)
    assert status == 200
    status, _doc, _ = await _call(fed, "DELETE", location, headers={"If-Match": new_etag})
    assert status == 200
    status, doc, _ = await _call(fed, "GET", location)
    assert status == 404
    assert f"machineConfigs/{id}" not in await _etcd_catalogue(fed)


async def test_bad_input_is_a_cimi_error_that_changes_nothing(fed):
    before = await _etcd_catalogue(fed)
    bad = [
        ("machineConfigs", {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "x", "cpu": 1, "memory": 1,
                            "colour": "red"}, "unknown attribute"),
        ("machineConfigs", {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "x", "cpu": 0, "memory": 1}, "cpu"),
        ("machineConfigs", {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "x", "memory": 1}, "cpu"),
        ("machineTemplates", {"resourceURI": f"{CIMI}/MachineTemplate", "name": "t",
                              "machineConfig": {"href": _api(fed, "machineConfigs/nope")}}, "machineConfigs/nope"),
    ]
    for collection, body, words in bad:
        status, doc, _ = await _call(fed, "POST", _api(fed, collection), body)
        assert status == 400 and words in doc["statusMessage"], doc
    status, doc, _ = await _call(fed, "GET", _api(fed, "machineConfigs"), params={"$filter": "cpu >>> 2"})
    assert status == 400 and "$filter" in doc["statusMessage"]
    status, doc, _ = await _call(fed, "GET", _api(fed, "machineConfigs/nope"))
    assert status == 404
    assert await _etcd_catalogue(fed) == before


async def test_a_machine_from_a_global_template_reaches_its_node_by_value(fed):
    status, config, _ = await _call(fed, "POST", _api(fed, "machineConfigs"), {
        "resourceURI": f"{CIMI}/MachineConfiguration", "name": "three", "cpu": 3, "memory": 512 * 1024})
    assert status == 201
    status, template, _ = await _call(fed, "POST", _api(fed, "machineTemplates"), {
        "resourceURI": f"{CIMI}/MachineTemplate", "name": "three-tiny", "initialState": "STOPPED",
        "machineConfig": {"href": config["id"]}, "machineImage": {"href": _api(fed, "machineImages/tiny-linux")}})
    assert status == 201, template
    before = await _machine_count(fed)
    status, doc, headers = await _call(fed, "POST", _api(fed, "machines"), {
        "resourceURI": f"{CIMI}/MachineCreate", "name": "from-global",
        "machineTemplate": {"href": template["id"], "machineConfig": {"href": config["id"], "memory": 256 * 1024}}})
    assert status == 202, doc
    status, machine, _ = await _call(fed, "GET", headers["Location"])
    assert status == 200 and machine["cpu"] == 3 and machine["memory"] == 256 * 1024
    assert await _machine_count(fed) == before + 1
    # an unknown global href is a 400, and no node made anything
    for template_ref in ({"href": _api(fed, "machineTemplates/nope")},
                         {"machineConfig": {"href": _api(fed, "machineConfigs/nope")},
                          "machineImage": {"href": _api(fed, "machineImages/tiny-linux")}}):
        status, doc, _ = await _call(fed, "POST", _api(fed, "machines"), {
            "resourceURI": f"{CIMI}/MachineCreate", "name": "bad", "machineTemplate": template_ref})
        assert status == 400 and "nope" in doc["statusMessage"], doc
    assert await _machine_count(fed) == before + 1


async def test_an_xml_create_naming_a_global_template_reaches_its_node_by_value(fed):
    before = await _machine_count(fed)
    body = (f'<MachineCreate xmlns="{CIMI}"><name>from-xml</name>'
            f'<machineTemplate href="{_api(fed, "machineTemplates/small-tiny-linux")}"/></MachineCreate>')
    async with fed.session.post(_api(fed, "machines"), data=body,
                                headers={"Content-Type": "application/xml", "Accept": "application/xml"}) as reply:
        assert reply.status == 202, await reply.text()
        assert_valid_xml(await reply.read())
        location = reply.headers["Location"]
    status, machine, _ = await _call(fed, "GET", location)
    assert status == 200 and machine["name"] == "from-xml" and machine["cpu"] == 1  # the global "small"
    assert await _machine_count(fed) == before + 1


async def test_a_credential_from_a_global_template_keeps_its_password_secret(fed):
    status, template, _ = await _call(fed, "POST", _api(fed, "credentialTemplates"), {
        "resourceURI": f"{CIMI}/CredentialTemplate", "name": "ops", "userName": "ops", "password": "s3cret"})
    assert status == 201 and "password" not in template
    status, credential, headers = await _call(fed, "POST", _api(fed, "credentials"), {
        "resourceURI": f"{CIMI}/CredentialCreate", "name": "ops-1",
        "credentialTemplate": {"href": template["id"], "userName": "root"}})
    assert status == 201, credential
    assert credential["userName"] == "root" and "password" not in credential
    id = headers["Location"].rsplit("/", 1)[-1]
    assert (await _etcd_catalogue(fed))[f"credentials/{id}"]["attrs"]["password"] == "s3cret"
    status, body, _ = await _call(fed, "GET", headers["Location"], params={"$format": "xml"})
    assert assert_valid_xml(body).findtext("c:userName", namespaces=NS) == "root"


async def test_publish_and_unpublish_through_the_front(fed):
    status, config, headers = await _call(fed, "POST", _api(fed, "machineConfigs"), {
        "resourceURI": f"{CIMI}/MachineConfiguration", "name": "pub", "cpu": 1, "memory": 1024})
    rels = {op["rel"] for op in config["operations"]}
    assert "urn:x-cimid:action:unpublish" in rels and "urn:x-cimid:action:publish" not in rels
    status, doc, _ = await _call(fed, "POST", f"{config['id']}/unpublish",
                                 {"resourceURI": f"{CIMI}/Action", "action": "urn:x-cimid:action:unpublish"})
    assert status == 200, doc
    key = f"machineConfigs/{config['id'].rsplit('/', 1)[-1]}"
    assert (await _etcd_catalogue(fed))[key]["public"] is False
    status, doc, _ = await _call(fed, "POST", f"{config['id']}/unpublish",
                                 {"resourceURI": f"{CIMI}/Action", "action": "urn:x-cimid:action:publish"})
    assert status == 400 and (await _etcd_catalogue(fed))[key]["public"] is False
