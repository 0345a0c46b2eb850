"""Every operation keeps working through a front: with real processes (tests/front/test_front.py's
federation), the registry's collections, the actions of machines, volumes, networks, meters and jobs,
the sub-collections (a machine's disks, volumes, network interfaces and their addresses, snapshots and
meters; a meter's samples; a network's ports; a volume's images) and the console extension, in JSON
and XML, each answer with the front's own addresses only."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import pytest

from conftest import assert_valid_xml
from front.loopback import CIMI, _get, _until, federation  # noqa: F401 (the fixture)
from cimid.model.registry import SUB_COLLECTIONS, TOP_LEVEL

pytestmark = pytest.mark.federation

NODE = "n2"  # what belongs together (a machine, its network, its volume) is made on one node


async def _call(fed, method: str, url: str, body: dict | None = None, **params):
    async with fed.session.request(method, url, json=body, params=params) as reply:
        data = await reply.read()
        doc = json.loads(data) if data and "json" in reply.content_type else data
        text = data.decode(errors="replace")
        for node in fed.nodes:
            assert node.url not in text and node.url not in json.dumps(dict(reply.headers)), (method, url)
        return reply.status, doc, reply.headers


async def _done(fed, status, doc, headers, expect=(202,)) -> str:
    """The Location of an accepted change, once its Job (read through the front) succeeded."""
    assert status in expect, doc
    job = headers.get("CIMI-Job-URI")
    if job:
        async def finished():
            _s, found, _h = await _call(fed, "GET", job)
            return found if found["state"] in ("SUCCESS", "FAILED") else None
        found = await _until(finished, seconds=30)
        assert found["state"] == "SUCCESS", found
    return headers.get("Location")


async def _action(fed, resource: dict, name: str) -> None:
    href = next(op["href"] for op in resource["operations"] if op["rel"] == f"{CIMI}/action/{name}")
    await _done(fed, *await _call(fed, "POST", href, {"resourceURI": f"{CIMI}/Action",
                                                      "action": f"{CIMI}/action/{name}"}), expect=(200, 202))


async def _state(fed, url: str, state: str) -> dict:
    async def reached():
        _s, doc, _h = await _call(fed, "GET", url)
        return doc if doc.get("state") == state else None
    return await _until(reached, seconds=30)


async def test_every_collection_of_the_entry_point_answers_through_the_front(federation):
    fed = federation
    front = f"{fed.front.url}/cimi/"
    _s, cep, _h = await _call(fed, "GET", f"{front}cloudEntryPoint")
    listed = {k: v["href"] for k, v in cep.items() if isinstance(v, dict) and "href" in v}
    assert set(listed) >= set(TOP_LEVEL) - {"resourceMetadata"} or set(listed) >= set(TOP_LEVEL)
    for name, href in listed.items():
        status, doc, headers = await _call(fed, "GET", href)
        assert status == 200 and doc["id"] == href and "Warning" not in headers, name
        status, body, _h = await _call(fed, "GET", href, **{"$format": "xml"})
        assert status == 200, name
        assert_valid_xml(body)
    # what every node has alike (ResourceMetadata) is listed once, as one node lists it
    _s, direct, _h = await _get(fed, f"{fed.nodes[0].url}/cimi/resourceMetadata")
    _s, merged, _h = await _call(fed, "GET", f"{front}resourceMetadata")
    assert merged["count"] == direct["count"]
    items = TOP_LEVEL["resourceMetadata"].items
    assert [m["id"].removeprefix(front) for m in merged[items]] == \
        [m["id"].removeprefix(f"{fed.nodes[0].url}/cimi/") for m in direct[items]]
    status, machine_meta, _h = await _call(fed, "GET", f"{front}resourceMetadata/Machine")
    assert status == 200 and machine_meta["id"] == f"{front}resourceMetadata/Machine"


async def test_machines_networks_volumes_and_their_sub_collections_and_actions(federation):
    fed = federation
    front = f"{fed.front.url}/cimi/"
    network = await _done(fed, *await _call(fed, "POST", f"{front}networks", {
        "resourceURI": f"{CIMI}/NetworkCreate", "name": "net", "cimid:target": NODE,
        "networkTemplate": {"networkConfig": {"networkType": "PRIVATE", "properties": {"cidr": "10.0.7.0/24"}}}}))
    net = await _state(fed, network, "STARTED")
    await _action(fed, net, "stop")
    net = await _state(fed, network, "STOPPED")
    await _action(fed, net, "start")
    await _state(fed, network, "STARTED")

    machine = await _done(fed, *await _call(fed, "POST", f"{front}machines", {
        "resourceURI": f"{CIMI}/MachineCreate", "name": "walker", "cimid:target": NODE,
        "machineTemplate": {"href": f"{front}machineTemplates/small-tiny-linux",
                            "networkInterfaces": [{"network": {"href": network}}]}}))
    doc = await _state(fed, machine, "STARTED")
    for action, state in (("stop", "STOPPED"), ("start", "STARTED"), ("restart", "STARTED")):
        await _action(fed, doc, action)
        doc = await _state(fed, machine, state)

    # the machine's sub-collections, and the nested one (an interface's addresses)
    for sub in SUB_COLLECTIONS["Machine"]:
        status, listed, _h = await _call(fed, "GET", doc[sub]["href"])
        assert status == 200 and listed["id"] == doc[sub]["href"], sub
    status, meters, _h = await _call(fed, "GET", doc["meters"]["href"])
    assert status == 200 and meters["id"] == f"{machine}/meters"
    _s, interfaces, _h = await _call(fed, "GET", doc["networkInterfaces"]["href"])
    (interface,) = interfaces["machineNetworkInterfaces"]
    status, one, _h = await _call(fed, "GET", interface["id"])
    assert status == 200 and one["network"]["href"] == network
    status, addresses, _h = await _call(fed, "GET", one["addresses"]["href"])
    assert status == 200 and addresses["id"] == one["addresses"]["href"]
    status, body, _h = await _call(fed, "GET", one["addresses"]["href"], **{"$format": "xml"})
    assert status == 200
    assert_valid_xml(body)
    status, console, headers = await _call(fed, "GET", f"{machine}/console")
    assert status == 200, console

    # a volume, attached and detached
    volume = await _done(fed, *await _call(fed, "POST", f"{front}volumes", {
        "resourceURI": f"{CIMI}/VolumeCreate", "name": "data", "cimid:target": NODE,
        "volumeTemplate": {"volumeConfig": {"capacity": 1024}}}))
    await _state(fed, volume, "AVAILABLE")
    attachment = await _done(fed, *await _call(fed, "POST", f"{machine}/volumes", {
        "resourceURI": f"{CIMI}/MachineVolume", "volume": {"href": volume}, "initialLocation": "vdb"}))
    assert attachment.startswith(f"{machine}/volumes/")
    status, attached, _h = await _call(fed, "GET", attachment)
    assert status == 200 and attached["volume"]["href"] == volume
    status, images, _h = await _call(fed, "GET", f"{volume}/images")
    assert status == 200
    await _done(fed, *await _call(fed, "DELETE", attachment))
    status, _doc, _h = await _call(fed, "GET", attachment)
    assert status == 404

    # an address on the network, and the network's ports
    address = await _done(fed, *await _call(fed, "POST", f"{front}addresses", {
        "resourceURI": f"{CIMI}/AddressCreate", "cimid:target": NODE,
        "addressTemplate": {"network": {"href": network}, "ip": "10.0.7.50"}}), expect=(201,))
    status, got, _h = await _call(fed, "GET", address)
    assert status == 200 and got["ip"] == "10.0.7.50" and got["network"]["href"] == network
    status, ports, _h = await _call(fed, "GET", f"{network}/networkPorts")
    assert status == 200
    await _done(fed, *await _call(fed, "DELETE", address), expect=(200,))

    # a meter on the machine: its samples, its actions
    meter = await _done(fed, *await _call(fed, "POST", f"{front}meters", {
        "resourceURI": f"{CIMI}/MeterCreate", "name": "cpu", "cimid:target": NODE,
        "meterTemplate": {"meterConfig": {"href": f"{front}meterConfigs/cpu"}, "targetResource": {"href": machine}}}),
        expect=(201,))
    status, got, _h = await _call(fed, "GET", meter)
    assert status == 200 and got["targetResource"]["href"] == machine
    status, samples, _h = await _call(fed, "GET", f"{meter}/samples")
    assert status == 200 and samples["id"] == f"{meter}/samples"
    for action in ("stop", "start"):
        if any(op["rel"] == f"{CIMI}/action/{action}" for op in got["operations"]):
            await _action(fed, got, action)
            _s, got, _h = await _call(fed, "GET", meter)
    status, meters, _h = await _call(fed, "GET", doc["meters"]["href"])
    assert [m["id"] for m in meters["meters"]] == [meter]

    # jobs: listed, read, and one finished refuses stop with the node's 409
    status, jobs, _h = await _call(fed, "GET", f"{front}jobs", **{"$filter": "state = 'SUCCESS'", "$orderby": "created"})
    assert status == 200 and jobs["count"] >= 8  # every change above made one
    finished = jobs["jobs"][0]
    status, again, _h = await _call(fed, "GET", finished["id"])
    assert status == 200 and again["id"] == finished["id"]
    status, error, _h = await _call(fed, "POST", f"{finished['id']}/stop", {"resourceURI": f"{CIMI}/Action",
                                                                            "action": f"{CIMI}/action/stop"})
    assert status in (400, 409) and error["resourceURI"] == f"{CIMI}/Job"

    # deletes: the machine, the volume, the network
    for url in (machine, volume, network):
        await _done(fed, *await _call(fed, "DELETE", url))

        async def gone(url=url):
            return (await _call(fed, "GET", url))[0] == 404
        await _until(gone, seconds=30)


async def test_pages_of_rows_that_tie_merge_exactly(federation):
    """Rows equal in $orderby (or with none) are ordered by id on every node, as the front merges them:
    pages walked one by one through the front give the whole list, in id order."""
    fed = federation
    front = f"{fed.front.url}/cimi/"
    for i in range(9):
        await _call(fed, "POST", f"{front}volumeTemplates", {
            "resourceURI": f"{CIMI}/VolumeTemplate", "name": "tie", "description": "ab"[i % 2],
            "volumeConfig": {"capacity": 1024}, "cimid:target": fed.nodes[i % 3].name})
    items = TOP_LEVEL["volumeTemplates"].items
    for order in ({}, {"$orderby": "name"}, {"$orderby": "description:desc"}):
        query = {"$filter": "name='tie'", **order}
        _s, whole, _h = await _call(fed, "GET", f"{front}volumeTemplates", **query)
        ids = [m["id"] for m in whole[items]]
        expected = sorted(ids) if "description" not in str(order) else \
            sorted(ids, key=lambda i: (next(m["description"] for m in whole[items] if m["id"] == i) == "a", i))
        assert whole["count"] == 9 and ids == expected, order
        walked = []
        for first in range(1, 10, 2):
            _s, page, _h = await _call(fed, "GET", f"{front}volumeTemplates",
                                       **query, **{"$first": first, "$last": first + 1})
            walked += [m["id"] for m in page.get(items, [])]
        assert walked == ids, order


async def test_a_client_that_goes_away_mid_body_is_one_line_in_the_fronts_log(federation):
    """A client that leaves before sending its whole body: one info line at the front, no traceback, nothing
    made, and the front goes on answering."""
    fed = federation
    seen = len(fed.front.log.read_text())
    url = urlsplit(fed.front.url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(f"POST /cimi/machineConfigs HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{\"name\": \"cut".encode())

    async def logged() -> str | None:
        text = fed.front.log.read_text()[seen:]
        return text if "went away" in text else None
    logged_now = await _until(logged, seconds=20)
    assert "Traceback" not in logged_now and "Error handling request" not in logged_now, logged_now
    status, configs, _h = await _get(fed, f"{fed.front.url}/cimi/machineConfigs")
    assert status == 200 and "cut" not in [c.get("name") for c in configs.get("machineConfigs", [])]
