"""Networks on the sandbox (the memory network driver, libvirt's test driver): made from templates by value
and by reference with overrides, started and stopped; Addresses; machine interfaces at create and hot-added
and hot-removed; operator ports; forwarding groups; the default network; alarms; a restart. Every refused
request is a clear CIMI error that changes nothing, in the store or on the (fake) host."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from conftest import CONSUMERS, DATABASE, NS, assert_error, make_client, who

from cimid.hookspecs import hookimpl
from cimid.http.auth import hash_password
from cimid.http.keys import PROVIDER
from cimid.store import consumers

ACTION = "http://schemas.dmtf.org/cimi/1/action/"
TEMPLATE = "machineTemplates/small-tiny-linux"


@pytest.fixture
async def client(tmp_path):
    client = await make_client(tmp_path)
    yield client
    await client.client.close()


def driver(client):
    return client.app[PROVIDER].drivers.network


def compute(client):
    return client.app[PROVIDER].drivers.compute


def last(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def make_network(client, cidr: str | None = "10.0.7.0/24", state="STARTED", **config) -> str:
    props = {"cidr": cidr} if cidr else {}
    r = await client.post("networks", {"name": "n", "networkTemplate": {
        "initialState": state, "networkConfig": {"networkType": "PRIVATE", "properties": props, **config}}})
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert job["state"] == "SUCCESS", job
    return r.headers["Location"]


async def make_machine(client, interfaces: list[dict] | None = None, state="STARTED", name="m") -> str:
    template = {"href": client.base + TEMPLATE, "initialState": state}
    if interfaces is not None:
        template["networkInterfaces"] = interfaces
    r = await client.post("machines", {"name": name, "machineTemplate": template})
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert job["state"] == "SUCCESS", job
    return r.headers["Location"]


async def interfaces_of(client, machine: str) -> list[dict]:
    return (await client.get(machine + "/networkInterfaces")).json.get("machineNetworkInterfaces", [])


async def address_of(client, interface: dict) -> dict:
    (link,) = (await client.get(interface["addresses"]["href"])).json["machineNetworkInterfaceAddresses"]
    return (await client.get(link["address"]["href"])).json


async def host(client) -> dict:
    """What the fake host has: each network's state and reservations, ports, every machine's NICs."""
    d = driver(client)
    return {"networks": {n: (await d.network(n), d.spec(n).reservations) for n in list(d._networks)},
            "ports": d.ports(), "groups": dict(d._groups),
            "nics": {m: compute(client).nics(m) for m in list(compute(client)._interfaces)}}


# ---------------------------------------------------------------- networks


async def test_a_network_by_value_is_made_started_stopped_and_deleted(client):
    network = await make_network(client, mtu=1400)
    doc = await client.assert_state(network, "STARTED")
    bridge = doc["host"]["bridge"]["value"]
    assert doc["networkType"] == "PRIVATE" and doc["mtu"] == 1400 and len(bridge) <= 15
    assert doc["host"]["cidr"] == {"value": "10.0.7.0/24"} and doc["host"]["gateway"] == {"value": "10.0.7.1"}
    spec = driver(client).spec(last(network))
    assert (spec.bridge, spec.cidr, spec.gateway, spec.mtu, spec.dhcp) == (bridge, "10.0.7.0/24", "10.0.7.1", 1400, True)
    assert await driver(client).network(last(network)) == {"bridge": "present", "link": "up", "dhcp": "present",
                                                          "rules": "none"}
    assert (await client.get(network, fmt="xml")).xml is not None
    assert {o["rel"] for o in doc["operations"]} == {"edit", "delete", ACTION + "stop"}

    r = await client.post(network + "/stop", {"action": ACTION + "stop"})
    assert r.status == 202 and (await client.get(network)).json["state"] in ("STOPPING", "STOPPED")
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    await client.assert_state(network, "STOPPED")
    assert (await driver(client).network(last(network)))["link"] == "down"
    assert "stop" in assert_error(await client.post(network + "/stop", {"action": ACTION + "stop"}), 409)
    r = await client.post(network + "/start", {"action": ACTION + "start"})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    await client.assert_state(network, "STARTED")

    r = await client.put(network, {"name": "renamed", "properties": {"tier": "db"}})
    assert r.status == 200, r
    assert r.json["name"] == "renamed" and r.json["properties"] == {"tier": "db"}
    assert r.json["host"] == doc["host"]  # what the provider chose is not the consumer's to change

    r = await client.delete(network)
    assert r.status == 202
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(network)).status == 404
    assert await driver(client).network(last(network)) is None


async def test_a_network_by_reference_with_overrides_and_its_event_log(client):
    config = await client.post("networkConfigs", {"name": "public", "networkType": "PUBLIC", "mtu": 9000,
                                                  "classOfService": "gold", "properties": {"cidr": "10.9.0.0/16"}})
    assert config.status == 201, config
    template = await client.post("networkTemplates", {"name": "t", "initialState": "STOPPED",
                                                      "networkConfig": {"href": config.headers["Location"]}})
    assert template.status == 201, template
    r = await client.post("networks", {"name": "web", "networkTemplate": {
        "href": template.headers["Location"], "networkConfig": {"href": config.headers["Location"], "mtu": 1450}}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    doc = await client.assert_state(r.headers["Location"], "STOPPED")
    assert (doc["networkType"], doc["mtu"], doc["classOfService"]) == ("PUBLIC", 1450, "gold")
    assert doc["host"]["cidr"] == {"value": "10.9.0.0/16"}
    spec = driver(client).spec(last(doc["id"]))
    assert spec.network_type == "PUBLIC" and spec.mtu == 1450
    # without a cidr the provider picks the first free /24 of its pool
    auto = (await client.get(await make_network(client, None))).json
    assert auto["host"]["cidr"] == {"value": "10.213.0.0/24"}
    events = (await client.get(doc["eventLog"]["href"] + "/events")).json["events"]
    assert ("CREATING", "STOPPED") in [(e["content"]["previous"], e["content"]["state"]) for e in events
                                       if e["type"].endswith("state")]
    for collection in ("networkConfigs", "networkTemplates", "networks"):
        assert (await client.get(collection, fmt="xml")).xml is not None


async def test_a_subnet_the_host_uses_already_is_never_given_to_a_network(client):
    """Another cimid's bridge or the LAN may hold a subnet of the pool: the pool skips it, and a network
    that asks for it is refused with nothing changed (dnsmasq would fail on the clash at start)."""
    driver(client).foreign_subnets["10.213.0.0/24"] = "lan0"
    auto = (await client.get(await make_network(client, None))).json
    assert auto["host"]["cidr"] == {"value": "10.213.1.0/24"}
    before, on_host = await client.rows(), await host(client)
    r = await client.post("networks", {"networkTemplate": {"networkConfig": {
        "networkType": "PRIVATE", "properties": {"cidr": "10.213.0.128/25"}}}})
    assert "overlaps 10.213.0.0/24 of the host's link lan0, which cimid did not make" in assert_error(r, 409)
    assert await client.rows() == before and await host(client) == on_host


@pytest.mark.parametrize("config, status, says", [
    ({"networkType": "PRIVATE", "properties": {"cidr": "10.0.7.128/25"}}, 409, "overlaps 10.0.7.0/24"),
    ({"networkType": "PRIVATE", "properties": {"cidr": "10.0.0.0/8"}}, 409, "overlaps"),
    ({"networkType": "PRIVATE", "mtu": 67}, 400, "at least 68"),
    ({"networkType": "PRIVATE", "mtu": 65536}, 400, "MTU must be from 68 to 65535"),
    ({"networkType": "PRIVATE", "properties": {"cidr": "10.0.8.1/24"}}, 400, "not an IPv4 subnet"),
    ({"networkType": "PRIVATE", "properties": {"cidr": "10.0.8.0/24", "gateway": "10.0.9.1"}}, 400,
     "not a host address of 10.0.8.0/24"),
    ({"networkType": "PRIVATE", "properties": {"dns": "1.2.3"}}, 400, "not an IPv4 address"),
    ({"networkType": "NAT"}, 400, "not one of PRIVATE, PUBLIC"),
    ({"mtu": 1500}, 400, "needs 'networkTemplate.networkConfig.networkType'"),
    ({"href": "networkConfigs/nope"}, 400, "does not name an existing NetworkConfiguration"),
])
async def test_bad_networks_are_refused_and_change_nothing(client, config, status, says):
    await make_network(client)
    before, on_host = await client.rows(), await host(client)
    r = await client.post("networks", {"networkTemplate": {"networkConfig": config}})
    assert says in assert_error(r, status)
    assert await client.rows() == before and await host(client) == on_host


async def test_a_bridge_name_that_clashes_with_a_host_link_fails_the_job_and_leaves_nothing(client, monkeypatch):
    import cimid.service.networks as networks
    monkeypatch.setattr(networks, "bridge_name", lambda network_id: "eth0")  # a link cimid did not make
    on_host = await host(client)
    r = await client.post("networks", {"networkTemplate": {"networkConfig": {"networkType": "PRIVATE"}}})
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert job["state"] == "FAILED" and "already has a link named eth0 that cimid did not make" in job["statusMessage"]
    assert (await client.get(r.headers["Location"])).status == 404
    assert (await client.get("networks")).json["count"] == 0 and await host(client) == on_host


# ---------------------------------------------------------------- addresses


async def test_addresses_static_and_dynamic_and_every_bad_one(client):
    network = await make_network(client)
    r = await client.post("addresses", {"addressTemplate": {"network": {"href": network}, "ip": "10.0.7.50",
                                                            "hostname": "db"}})
    assert r.status == 201, r
    static = r.json
    assert (static["ip"], static["allocation"], static["mask"], static["defaultGateway"], static["protocol"]) == (
        "10.0.7.50", "static", "255.255.255.0", "10.0.7.1", "IPv4")
    dynamic = (await client.post("addresses", {"addressTemplate": {"network": {"href": network}}})).json
    assert (dynamic["ip"], dynamic["allocation"]) == ("10.0.7.2", "dynamic")
    assert (await client.get(static["id"], fmt="xml")).xml is not None
    template = await client.post("addressTemplates", {"name": "t", "network": {"href": network}, "ip": "10.0.7.60",
                                                      "allocation": "static"})
    assert template.status == 201, template
    r = await client.post("addresses", {"addressTemplate": {"href": template.headers["Location"], "ip": "10.0.7.61"}})
    assert r.status == 201 and r.json["ip"] == "10.0.7.61"

    before = await client.rows()
    for body, status, says in [
        ({"network": {"href": network}, "ip": "10.0.8.5"}, 400, "not a host address of Network"),
        ({"network": {"href": network}, "ip": "10.0.7.255"}, 400, "not a host address"),
        ({"network": {"href": network}, "ip": "10.0.7.50"}, 409, "taken by another Address"),
        ({"network": {"href": network}, "ip": "10.0.7.1"}, 409, "taken by the network's gateway"),
        ({"network": {"href": network}, "ip": "ten"}, 400, "not an IPv4 address"),
        ({"network": {"href": network}, "allocation": "static"}, 400, "a static Address needs its ip"),
        ({"network": {"href": client.base + "networks/nope"}}, 400, "does not name an existing Network"),
        ({"network": {"href": client.base + "machines/nope"}}, 400, "is not a Network"),
    ]:
        assert says in assert_error(await client.post("addresses", {"addressTemplate": body}), status), body
    assert await client.rows() == before
    assert (await client.delete(dynamic["id"])).status == 200  # a free address goes at once


# ---------------------------------------------------------------- machine interfaces


async def test_two_machines_on_one_network_get_the_addresses_dhcp_gives_them(client):
    network = await make_network(client)
    fixed = (await client.post("addresses", {"addressTemplate": {"network": {"href": network}, "ip": "10.0.7.9"}})).json
    a = await make_machine(client, [{"network": {"href": network}}], name="a")
    b = await make_machine(client, [{"network": {"href": network}, "addresses": [{"href": fixed["id"]}], "mtu": 1400}],
                           name="b")
    (ia,), (ib,) = await interfaces_of(client, a), await interfaces_of(client, b)
    assert ia["state"] == ib["state"] == "ACTIVE" and ia["network"]["href"] == network and ib["mtu"] == 1400
    address_a, address_b = await address_of(client, ia), await address_of(client, ib)
    assert (address_a["ip"], address_a["allocation"], address_a["hostname"]) == ("10.0.7.2", "dynamic", "a")
    assert address_a["resource"]["href"] == ia["id"] and address_b["id"] == fixed["id"]
    # the reservations are the Addresses, and what the guests' DHCP requests get
    reservations = {r.mac: r.ip for r in driver(client).spec(last(network)).reservations}
    assert reservations == {ia["macAddress"]: "10.0.7.2", ib["macAddress"]: "10.0.7.9"}
    assert driver(client).lease(last(network), ia["macAddress"]) == "10.0.7.2"
    assert await driver(client).leases(last(network)) == {ia["macAddress"]: "10.0.7.2"}
    # the guests' NICs: on the bridge; the static one carries its addressing for cloud-init
    bridge = driver(client).spec(last(network)).bridge
    (nic_a,), (nic_b,) = compute(client).nics(last(a)).values(), compute(client).nics(last(b)).values()
    assert (nic_a.mac, nic_a.bridge, nic_a.address) == (ia["macAddress"], bridge, None)
    assert (nic_b.address, nic_b.gateway, nic_b.mtu) == ("10.0.7.9/24", "10.0.7.1", 1400)
    # the interface, its addresses and the machine validate in XML, listed and one by one
    for url in (ia["id"], a + "/networkInterfaces", ia["addresses"]["href"], a, network, "addresses"):
        assert (await client.get(url, fmt="xml")).xml is not None, url
    port = (await client.get(ia["networkPort"]["href"])).json
    assert port["state"] == "STARTED" and port["network"]["href"] == network

    # a network in use cannot go, and says by what
    before, on_host = await client.rows(), await host(client)
    says = assert_error(await client.delete(network), 409)
    assert ia["id"].split("/cimi/")[1] in says and ib["id"].split("/cimi/")[1] in says
    assert "held by" in assert_error(await client.delete(fixed["id"]), 409)
    assert "remove that interface" in assert_error(await client.delete(ia["networkPort"]["href"]), 409)
    assert await client.rows() == before and await host(client) == on_host

    # deleting a machine frees its addresses: the dynamic one goes, the static one stays free
    for machine in (a, b):
        await client.wait_job((await client.delete(machine)).headers["CIMI-Job-URI"])
    assert (await client.get(address_a["id"])).status == 404
    assert "resource" not in (await client.get(fixed["id"])).json
    assert driver(client).spec(last(network)).reservations == ()
    assert (await client.get("networkPorts")).json["count"] == 0
    r = await client.delete(network)
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"


@pytest.mark.parametrize("interface, status, says", [
    ({"network": {"href": "networks/nope"}}, 400, "does not name an existing Network"),
    ({"network": {"href": "NET"}, "mtu": 67}, 400, "at least 68"),
    ({"network": {"href": "NET"}, "mtu": 70000}, 400, "MTU must be from 68 to 65535"),
    ({"network": {"href": "NET"}, "addresses": [{"href": "addresses/nope"}]}, 400, "does not name an Address"),
    ({"network": {"href": "NET"}, "addresses": [{"href": "HELD"}]}, 409, "is held already"),
    ({"network": {"href": "OTHER"}, "addresses": [{"href": "FREE"}]}, 400, "is of another network"),
    ({"mtu": 1500}, 400, "needs"),
])
async def test_bad_interfaces_at_create_are_refused_and_change_nothing(client, interface, status, says):
    network = await make_network(client)
    other = await make_network(client, "10.0.8.0/24")
    free = (await client.post("addresses", {"addressTemplate": {"network": {"href": network}}})).json["id"]
    held_by = await make_machine(client, [{"network": {"href": network}}])
    held = (await address_of(client, (await interfaces_of(client, held_by))[0]))["id"]
    names = {"NET": network, "OTHER": other, "FREE": free, "HELD": held}

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return names.get(value, client.base + value if isinstance(value, str) and "/" in value else value)

    before, on_host = await client.rows(), await host(client)
    r = await client.post("machines", {"machineTemplate": {"href": client.base + TEMPLATE,
                                                           "networkInterfaces": [fill(interface)]}})
    assert says in assert_error(r, status)
    assert await client.rows() == before and await host(client) == on_host


async def test_an_interface_is_hot_added_to_a_running_machine_and_hot_removed(client):
    network = await make_network(client)
    machine = await make_machine(client, [])
    assert await interfaces_of(client, machine) == []
    r = await client.post(machine + "/networkInterfaces", {"network": {"href": network}, "name": "eth0"})
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    interface = await client.assert_state(r.headers["Location"], "ACTIVE")
    assert interface["name"] == "eth0" and interface["mtu"] == 1500
    assert interface["macAddress"].startswith("52:54:00:")
    assert list(compute(client).nics(last(machine))) == [interface["macAddress"]]
    address = await address_of(client, interface)
    assert driver(client).lease(last(network), interface["macAddress"]) == address["ip"] == "10.0.7.2"

    before = await client.rows()
    assert "needs" in assert_error(await client.post(machine + "/networkInterfaces", {"mtu": 1500}), 400)
    assert "unicast MAC" in assert_error(await client.post(machine + "/networkInterfaces", {
        "network": {"href": network}, "macAddress": "01:00:5e:00:00:01"}), 400)
    assert "taken by another interface" in assert_error(await client.post(machine + "/networkInterfaces", {
        "network": {"href": network}, "macAddress": interface["macAddress"]}), 409)
    assert await client.rows() == before

    r = await client.delete(interface["id"])
    assert r.status == 202
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert await interfaces_of(client, machine) == [] and compute(client).nics(last(machine)) == {}
    assert (await client.get(address["id"])).status == 404
    assert driver(client).spec(last(network)).reservations == ()
    assert driver(client).lease(last(network), interface["macAddress"]) is None


async def test_a_hot_added_interface_takes_an_address_made_beforehand(client):
    network, other = await make_network(client), await make_network(client, "10.0.9.0/24")
    machine = await make_machine(client, [])
    made = {}
    for name, net, ip in (("mine", network, "10.0.7.50"), ("elsewhere", other, "10.0.9.50")):
        r = await client.post("addresses", {"addressTemplate": {"network": {"href": net}, "ip": ip}})
        assert r.status == 201, r
        made[name] = r.headers["Location"]
    before, on_host = await client.rows(), driver(client).spec(last(network))
    for body, status, says in (
            ({"addresses": [{"href": made["elsewhere"]}]}, 400, "is of another network"),
            ({"addresses": [{"href": client.base + "addresses/nothing"}]}, 400, "does not name an Address of yours"),
            ({"addresses": [{"href": made["mine"]}, {"href": made["mine"]}]}, 409, "is held already"),
            ({"addresses": "10.0.7.50"}, 400, "addresses")):
        r = await client.post(machine + "/networkInterfaces", {"network": {"href": network}, **body})
        assert says in assert_error(r, status), body
    assert await client.rows() == before and driver(client).spec(last(network)) == on_host

    r = await client.post(machine + "/networkInterfaces", {"network": {"href": network},
                                                           "addresses": [{"href": made["mine"]}]})
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    interface = await client.assert_state(r.headers["Location"], "ACTIVE")
    address = await address_of(client, interface)
    assert address["id"] == made["mine"] and address["ip"] == "10.0.7.50"
    assert address["resource"]["href"] == interface["id"]
    assert driver(client).lease(last(network), interface["macAddress"]) == "10.0.7.50"


async def test_a_hot_add_the_hypervisor_refuses_leaves_nothing(client):
    network = await make_network(client)
    machine = await make_machine(client, [{"network": {"href": network}}])
    (first,) = await interfaces_of(client, machine)
    compute(client)._interfaces[last(machine)]["52:54:00:aa:bb:cc"] = None  # the guest has that MAC already
    before_nics = dict(compute(client).nics(last(machine)))
    r = await client.post(machine + "/networkInterfaces", {"network": {"href": network},
                                                           "macAddress": "52:54:00:aa:bb:cc"})
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert job["state"] == "FAILED" and "already has an interface" in job["statusMessage"]
    assert [i["id"] for i in await interfaces_of(client, machine)] == [first["id"]]
    assert (await client.get("addresses")).json["count"] == 1
    assert {r.mac for r in driver(client).spec(last(network)).reservations} == {first["macAddress"]}
    assert compute(client).nics(last(machine)).keys() == before_nics.keys() - {"52:54:00:aa:bb:cc"}
    log = (await client.get(machine)).json["eventLog"]["href"]  # the failure is an alarm on the machine
    alarms = [e for e in (await client.get(log + "/events")).json["events"] if e["type"].endswith("alarm")]
    assert len(alarms) == 1 and "already has an interface" in alarms[0]["content"]["detail"]


# ---------------------------------------------------------------- ports and forwarding groups


async def test_an_operator_port_is_a_veth_end_on_the_bridge(client):
    network = await make_network(client)
    config = await client.post("networkPortConfigs", {"name": "access", "portType": "ACCESS"})
    template = await client.post("networkPortTemplates", {"name": "t", "network": {"href": network},
                                                          "networkPortConfig": {"href": config.headers["Location"]}})
    assert template.status == 201, template
    r = await client.post("networkPorts", {"name": "probe", "networkPortTemplate": {"href": template.headers["Location"]}})
    assert r.status == 202, r
    await client.wait_job(r.headers["CIMI-Job-URI"])
    port = await client.assert_state(r.headers["Location"], "STARTED")
    assert port["host"]["peer"]["value"].startswith("cimidp") and port["portType"] == "ACCESS"
    xml = (await client.get(port["id"], fmt="xml")).xml
    assert xml.find("{urn:x-cimid:xml:1}host/{urn:x-cimid:xml:1}item").get("value") == port["host"]["peer"]["value"]
    assert driver(client).ports() == {last(port["id"]): last(network)}
    assert (await client.get("networkPorts", fmt="xml")).xml is not None
    says = assert_error(await client.delete(network), 409)
    assert f"networkPorts/{last(port['id'])}" in says
    before = await client.rows()
    assert "does not name an existing Network" in assert_error(await client.post("networkPorts", {
        "networkPortTemplate": {"network": {"href": client.base + "networks/nope"}}}), 400)
    assert "ACCESS, not TRUNK" in assert_error(await client.post("networkPorts", {
        "networkPortTemplate": {"network": {"href": network}, "networkPortConfig": {"portType": "TRUNK"}}}), 400)
    assert await client.rows() == before
    r = await client.delete(port["id"])
    await client.wait_job(r.headers["CIMI-Job-URI"])
    assert (await client.get(port["id"])).status == 404 and driver(client).ports() == {}


async def test_a_forwarding_group_lets_its_networks_route_to_each_other(client):
    a, b, c = [await make_network(client, f"10.0.{i}.0/24") for i in (1, 2, 3)]
    ids = [last(n) for n in (a, b, c)]
    assert not driver(client).routes(ids[0], ids[1])
    r = await client.post("forwardingGroups", {"name": "tiers", "forwardingGroupTemplate": {
        "networks": [{"href": a}, {"href": b}]}})
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    group = r.headers["Location"]
    assert driver(client).routes(ids[0], ids[1]) and not driver(client).routes(ids[0], ids[2])
    doc = (await client.get(group)).json
    assert [n["href"] for n in doc["networks"]] == [a, b]
    assert (await client.get(group, fmt="xml")).xml is not None

    before, on_host = await client.rows(), await host(client)
    for members, status, says in [([{"href": a}, {"href": a}], 400, "named twice"),
                                  ([{"href": client.base + "networks/nope"}], 400, "does not name an existing Network")]:
        assert says in assert_error(await client.post("forwardingGroups", {"forwardingGroupTemplate": {
            "networks": members}}), status)
        assert says in assert_error(await client.put(group, {**doc, "networks": members}), status)
    assert await client.rows() == before and await host(client) == on_host

    r = await client.put(group, {"name": "tiers", "networks": [{"href": a}, {"href": c}]})
    assert r.status == 202, r
    await client.wait_job(r.headers["CIMI-Job-URI"])
    assert driver(client).routes(ids[0], ids[2]) and not driver(client).routes(ids[0], ids[1])
    # a network made into the group through its template joins it
    r = await client.post("networks", {"networkTemplate": {"forwardingGroup": {"href": group},
                                                           "networkConfig": {"networkType": "PRIVATE"}}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    joined = (await client.get(r.headers["Location"])).json
    assert joined["forwardingGroup"]["href"] == group and driver(client).routes(ids[0], last(joined["id"]))
    # a member that goes leaves the group
    await client.wait_job((await client.delete(c)).headers["CIMI-Job-URI"])
    assert [n["href"] for n in (await client.get(group)).json["networks"]] == [a, joined["id"]]
    r = await client.delete(group)
    await client.wait_job(r.headers["CIMI-Job-URI"])
    assert (await client.get(group)).status == 404 and not driver(client).routes(ids[0], last(joined["id"]))
    assert "forwardingGroup" not in (await client.get(joined["id"])).json


async def test_a_network_lists_its_ports_at_its_network_ports_link(tmp_path):
    client = await make_client(tmp_path)
    try:
        network = await make_network(client)
        doc = (await client.get(network)).json
        assert doc["networkPorts"] == {"href": network + "/networkPorts"}
        machine = await make_machine(client, [{"network": {"href": network}}])
        (interface,) = await interfaces_of(client, machine)
        r = await client.post("networkPorts", {"networkPortTemplate": {"network": {"href": network}}})
        await client.wait_job(r.headers["CIMI-Job-URI"])
        operator = r.headers["Location"]
        listing = (await client.get(network + "/networkPorts")).json
        assert listing["count"] == 2 and {p["networkPort"]["href"] for p in listing["networkNetworkPorts"]} == {
            interface["networkPort"]["href"], operator}
        xml = (await client.get(network + "/networkPorts", fmt="xml")).xml  # validated against DSP8009
        assert len(xml.findall("c:NetworkNetworkPort", NS)) == 2
        before = await client.rows()
        r = await client.post(network + "/networkPorts", {"networkPort": {"href": operator}})
        assert r.status == 405 and await client.rows() == before
        assert (await client.get(client.base + "networks/nothing/networkPorts")).status == 404

        r = await client.delete(operator)
        await client.wait_job(r.headers["CIMI-Job-URI"])
        r = await client.delete(machine)
        await client.wait_job(r.headers["CIMI-Job-URI"])
        assert (await client.get(network + "/networkPorts")).json["count"] == 0  # each goes with its port
        r = await client.post("networkPorts", {"networkPortTemplate": {"network": {"href": network}}})
        await client.wait_job(r.headers["CIMI-Job-URI"])
        kept = r.headers["Location"]
        db = sqlite3.connect(client.app[DATABASE])  # a store from before networks listed their ports
        with db:
            db.execute("DELETE FROM resources WHERE kind = 'NetworkNetworkPort'")
        db.close()
        assert (await client.get(network + "/networkPorts")).json["count"] == 0
    finally:
        await client.client.close()
    again = await make_client(tmp_path)  # a restart lists them again
    try:
        (link,) = (await again.get(f"networks/{last(network)}/networkPorts")).json["networkNetworkPorts"]
        assert last(link["networkPort"]["href"]) == last(kept)
    finally:
        await again.client.close()


# ---------------------------------------------------------------- the provider's network


async def test_the_default_network_is_made_once_and_machines_without_interfaces_join_it(tmp_path):
    client = await make_client(tmp_path, {"network": {"create_default": True}})
    try:
        await client.app[PROVIDER].jobs.drain()
        (default,) = (await client.get("networks")).json["networks"]
        assert default["name"] == "default" and default["networkType"] == "PUBLIC"
        await client.assert_state(default["id"], "STARTED")
        machine = await make_machine(client)  # its template names no interface
        (interface,) = await interfaces_of(client, machine)
        assert interface["network"]["href"] == default["id"]
    finally:
        await client.client.close()
    again = await make_client(tmp_path, {"network": {"create_default": True}})  # a restart
    try:
        await again.app[PROVIDER].jobs.drain()
        assert (await again.get("networks")).json["count"] == 1  # not made twice
        spec = driver(again).spec(last(default["id"]))  # rebuilt on the fresh (memory) host, up, reserved
        assert spec is not None and (await driver(again).network(last(default["id"])))["link"] == "up"
        assert [r.mac for r in spec.reservations] == [interface["macAddress"]]
        r = await again.delete("machines/" + last(machine))
        assert r.status == 202, r
        await again.wait_job(r.headers["CIMI-Job-URI"])
        r = await again.delete("networks/" + last(default["id"]))  # the admin does not want it
        assert r.status == 202, r
        assert (await again.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    finally:
        await again.client.close()
    third = await make_client(tmp_path, {"network": {"create_default": True}})
    try:
        await third.app[PROVIDER].jobs.drain()
        assert (await third.get("networks")).json["count"] == 0  # made on the first start only
    finally:
        await third.client.close()


async def test_a_restart_rebuilds_networks_ports_and_groups(tmp_path):
    client = await make_client(tmp_path)
    try:
        a, b = await make_network(client, "10.0.1.0/24"), await make_network(client, "10.0.2.0/24", "STOPPED")
        r = await client.post("forwardingGroups", {"forwardingGroupTemplate": {"networks": [{"href": a}, {"href": b}]}})
        await client.wait_job(r.headers["CIMI-Job-URI"])
        r = await client.post("networkPorts", {"networkPortTemplate": {"network": {"href": a}}})
        await client.wait_job(r.headers["CIMI-Job-URI"])
        machine = await make_machine(client, [{"network": {"href": a}}])
        r = await client.post(machine + "/networkInterfaces", {"network": {"href": a}})  # hot-added
        await client.wait_job(r.headers["CIMI-Job-URI"])
        removed = await make_machine(client, [{"network": {"href": a}}], name="r")
        r = await client.post(removed + "/networkInterfaces", {"network": {"href": a}})
        await client.wait_job(r.headers["CIMI-Job-URI"])
        await client.wait_job((await client.delete(r.headers["Location"])).headers["CIMI-Job-URI"])  # hot-removed
        on_host = await host(client)
        assert len(on_host["nics"][last(machine)]) == 2 and len(on_host["nics"][last(removed)]) == 1
    finally:
        await client.client.close()
    again = await make_client(tmp_path)
    try:
        assert await host(again) == on_host
    finally:
        await again.client.close()


async def test_a_dead_dhcp_server_raises_an_alarm_on_its_network(client):
    network = await make_network(client)
    driver(client).dhcp_died(last(network))
    await client.app[PROVIDER].jobs.drain()
    import asyncio
    for _ in range(100):
        log = (await client.get(network)).json["eventLog"]["href"]
        alarms = [e for e in (await client.get(log + "/events")).json.get("events", []) if e["type"].endswith("alarm")]
        if alarms:
            break
        await asyncio.sleep(0.02)
    assert alarms and "dnsmasq died and was restarted" in alarms[0]["content"]["detail"]


async def test_quotas_and_tenancy(tmp_path):
    client = await make_client(tmp_path)
    try:
        store = client.app[PROVIDER].store
        for name, (role, password) in CONSUMERS.items():
            await consumers.add(store, name, role, hash_password(password, 1000))
        await consumers.set_quotas(store, "bob", {"networks": 1})
        client.default_headers = who("alice")
        mine = await make_network(client)
        client.default_headers = who("bob")
        assert (await client.get(mine)).status == 404
        before = await client.rows()
        assert "does not name an existing Network" in assert_error(await client.post("addresses", {
            "addressTemplate": {"network": {"href": mine}}}), 400)
        assert "does not name an existing Network" in assert_error(await client.post("forwardingGroups", {
            "forwardingGroupTemplate": {"networks": [{"href": mine}]}}), 400)
        assert await client.rows() == before
        await make_network(client, "10.0.8.0/24")
        before = await client.rows()
        assert "quota networks exceeded" in assert_error(await client.post("networks", {"networkTemplate": {
            "networkConfig": {"networkType": "PRIVATE"}}}), 403)
        assert await client.rows() == before
        usage = (await client.get("cloudEntryPoint")).json["usage"]
        assert usage["networks"] == {"used": 1, "limit": 1}
    finally:
        await client.client.close()


class SharedNetwork:
    """A network driver that outlives one app, as a host's bridges outlive the daemon."""

    def __init__(self):
        from cimid_memory import MemoryNetwork
        self.driver = MemoryNetwork()

    @hookimpl
    def cimid_network_driver(self, config):
        return self.driver if config["network"]["driver"] == "shared" else None


async def test_a_daemon_killed_in_the_middle_of_network_jobs_leaves_no_orphan_after_restart(tmp_path):
    import asyncio
    shared = SharedNetwork()
    settings = {"network": {"driver": "shared"}}
    client = await make_client(tmp_path, settings, extra_plugins=(shared,))
    made = asyncio.Event()
    real_create, real_port = shared.driver.create_network, shared.driver.create_port

    async def create_then_hang(spec):
        await real_create(spec)  # the bridge is made, then the daemon dies before the Job records it
        made.set()
        await asyncio.Event().wait()

    async def port_then_hang(network_id, port_id):
        await real_port(network_id, port_id)
        made.set()
        await asyncio.Event().wait()

    try:
        kept = await make_network(client, "10.0.1.0/24")
        shared.driver.create_network, shared.driver.create_port = create_then_hang, port_then_hang
        r = await client.post("networks", {"networkTemplate": {"networkConfig": {"networkType": "PRIVATE"}}})
        await asyncio.wait_for(made.wait(), 10)
        made.clear()
        r = await client.post("networkPorts", {"networkPortTemplate": {"network": {"href": kept}}})
        await asyncio.wait_for(made.wait(), 10)
        assert len(shared.driver._networks) == 2 and len(shared.driver.ports()) == 1  # made, not recorded
    finally:
        await client.client.close()  # the Jobs never finish: RUNNING in the store
    shared.driver.create_network, shared.driver.create_port = real_create, real_port
    again = await make_client(tmp_path, settings, extra_plugins=(shared,))
    try:
        jobs = (await again.get("jobs")).json["jobs"]
        assert sorted(j["state"] for j in jobs if j["action"] == "add") == ["FAILED", "FAILED", "SUCCESS"]
        assert [last(n["id"]) for n in (await again.get("networks")).json["networks"]] == [last(kept)]
        assert (await again.get("networkPorts")).json["count"] == 0
        assert list(shared.driver._networks) == [last(kept)] and shared.driver.ports() == {}
    finally:
        await again.client.close()


async def test_reset_forgets_every_network(tmp_path):
    client = await make_client(tmp_path, {"server": {"test_api": True}})
    try:
        network = await make_network(client)
        await make_machine(client, [{"network": {"href": network}}])
        assert (await client.post("testControl/reset")).status == 200
        for collection in ("networks", "addresses", "networkPorts", "forwardingGroups"):
            assert (await client.get(collection)).json["count"] == 0, collection
        assert await driver(client).network(last(network)) is None
        await make_network(client)  # and networks work as after a fresh start
    finally:
        await client.client.close()


async def test_networks_and_interfaces_in_xml(client):
    ns = 'xmlns="http://schemas.dmtf.org/cimi/1"'
    r = await client.post("networks", f'<NetworkCreate {ns}><name>x</name><networkTemplate><networkConfig>'
                                      '<networkType>PRIVATE</networkType><mtu>1400</mtu>'
                                      '<property key="cidr">10.0.5.0/24</property></networkConfig>'
                                      '</networkTemplate></NetworkCreate>', fmt="xml")
    assert r.status == 202, r
    await client.wait_job(r.headers["CIMI-Job-URI"])
    network = r.headers["Location"]
    assert (await client.get(network)).json["mtu"] == 1400
    r = await client.post("machines", f'<MachineCreate {ns}><machineTemplate href="{client.base + TEMPLATE}">'
                                      f'<networkInterface><network href="{network}"/><state>ACTIVE</state>'
                                      '<mtu>1300</mtu></networkInterface></machineTemplate></MachineCreate>',
                          fmt="xml")
    assert r.status == 202, r
    await client.wait_job(r.headers["CIMI-Job-URI"])
    (interface,) = await interfaces_of(client, r.headers["Location"])
    assert interface["mtu"] == 1300 and (await address_of(client, interface))["ip"] == "10.0.5.2"
    template = await client.post("machineTemplates", {
        "name": "on x", "machineConfig": {"href": client.base + "machineConfigs/small"},
        "machineImage": {"href": client.base + "machineImages/tiny-linux"},
        "networkInterfaces": [{"network": {"href": network}}]})
    assert template.status == 201, template
    assert template.json["networkInterfaces"][0]["state"] == "ACTIVE"  # the schema needs one; ACTIVE by default
    assert (await client.get(template.headers["Location"], fmt="xml")).xml is not None
    assert (await client.post(interface["addresses"]["href"], {})).status == 405


async def test_a_forwarding_group_template_names_networks_only(client):
    network = await make_network(client)
    r = await client.post("forwardingGroupTemplates", {"name": "t", "networks": [{"href": network}]})
    assert r.status == 201 and r.json["networks"] == [{"href": network}]
    before = await client.rows()
    for href in (client.base + "addressTemplates/x", client.base + "networks/nope"):
        assert_error(await client.post("forwardingGroupTemplates", {"networks": [{"href": href}]}), 400)
        assert_error(await client.put(r.headers["Location"], {"networks": [{"href": href}]}), 400)
    assert await client.rows() == before
    r = await client.post("forwardingGroups", {"forwardingGroupTemplate": {"href": r.headers["Location"]}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(network)).json["forwardingGroup"]["href"] == r.headers["Location"]


async def test_an_address_keeps_what_it_was_made_with(client):
    network = await make_network(client)
    address = (await client.post("addresses", {"addressTemplate": {"network": {"href": network},
                                                                   "ip": "10.0.7.20"}})).json
    r = await client.put(address["id"], {"name": "db", "ip": "10.0.7.21", "allocation": "dynamic"})
    assert r.status == 200 and (r.json["name"], r.json["ip"], r.json["allocation"]) == ("db", "10.0.7.20", "static")


async def test_public_networks_reach_the_configured_uplink_and_private_ones_do_not(tmp_path):
    client = await make_client(tmp_path, {"network": {"uplink": "eth9", "bridged": True, "dns": ["192.0.2.53"],
                                                      "default_network": ""}})
    try:
        r = await client.post("networks", {"networkTemplate": {"networkConfig": {"networkType": "PUBLIC"}}})
        await client.wait_job(r.headers["CIMI-Job-URI"])
        public = driver(client).spec(last(r.headers["Location"]))
        assert (public.uplink, public.bridged, public.dns) == ("eth9", True, ("192.0.2.53",))
        private = driver(client).spec(last(await make_network(client)))
        assert (private.uplink, private.bridged) == (None, False)
        machine = await make_machine(client)  # no default network: no interface
        assert await interfaces_of(client, machine) == []
    finally:
        await client.client.close()


async def test_without_a_network_driver_networks_are_not_served(tmp_path):
    client = await make_client(tmp_path, {"network": {"driver": ""}})
    try:
        assert "networks" not in (await client.get("cloudEntryPoint")).json
        assert (await client.get("networks")).status == 404
        machine = await make_machine(client, state="STOPPED")
        assert (await client.get(machine + "/networkInterfaces")).status == 404
        before = await client.rows()
        r = await client.post("machines", {"machineTemplate": {"href": client.base + TEMPLATE, "networkInterfaces": [
            {"network": {"href": client.base + "networks/x"}}]}})
        assert "serves no Networks" in assert_error(r, 400)
        assert await client.rows() == before
    finally:
        await client.client.close()


async def test_a_forwarding_group_in_xml(client):
    a, b = await make_network(client, "10.0.1.0/24"), await make_network(client, "10.0.2.0/24")
    r = await client.post("forwardingGroups", '<ForwardingGroupCreate xmlns="http://schemas.dmtf.org/cimi/1">'
                                              f'<forwardingGroupTemplate><network href="{a}"/><network href="{b}"/>'
                                              '</forwardingGroupTemplate></ForwardingGroupCreate>', fmt="xml")
    assert r.status == 202, r
    await client.wait_job(r.headers["CIMI-Job-URI"])
    assert driver(client).routes(last(a), last(b))
    got = (await client.get(r.headers["Location"], fmt="xml")).xml
    assert [n.get("href") for n in got.findall("{http://schemas.dmtf.org/cimi/1}network")] == [a, b]


async def test_every_network_gets_input_and_output_meters_from_its_bridges_counters(tmp_path):
    client = await make_client(tmp_path, {"meters": {"sampling": True, "default_sample_interval": 1}})
    try:
        network = await make_network(client)
        doc = (await client.get(network)).json
        assert doc["meters"] == {"href": network + "/meters"}
        # In DSP8009's order (after forwardingGroup, before eventLog); the client validates the XML.
        xml = (await client.get(network, fmt="xml")).xml
        assert [e.tag.rsplit("}", 1)[1] for e in xml if e.tag.rsplit("}", 1)[1] in ("meters", "eventLog")] == [
            "meters", "eventLog"]
        listing = (await client.get(network + "/meters")).json
        meters = {m["aspect"].rsplit("/", 1)[-1]: m for m in listing["meters"]}
        assert set(meters) == {"inputBandwidth", "outputBandwidth"} and listing["count"] == 2
        assert all(m["targetResource"]["href"] == network and m["units"] == "byte/s" for m in meters.values())

        # Guests send 5 MB to or through the host and get nothing back: output moves, input stays at 0.
        async def values(aspect: str) -> list[float]:
            found = (await client.get(meters[aspect]["samples"]["href"])).json.get("samples", [])
            return [float(s["value"]) for s in found]
        for _ in range(400):  # until the sampler has a rate (its second reading of the counters)
            if await values("outputBandwidth"):
                break
            await asyncio.sleep(0.05)
        driver(client).carry(last(network), received=5_000_000, sent=0)
        for _ in range(400):
            if any(v > 0 for v in await values("outputBandwidth")):
                break
            await asyncio.sleep(0.05)
        assert any(v > 0 for v in await values("outputBandwidth"))
        assert set(await values("inputBandwidth")) == {0.0}

        before = await client.rows()
        r = await client.post("meters", {"meterTemplate": {
            "meterConfig": {"href": client.base + "meterConfigs/input"},
            "targetResource": {"href": client.base + "networks/nothing"}}})
        assert "networks/nothing' does not name an existing" in assert_error(r, 400)
        assert await client.rows() == before

        r = await client.delete(network)
        await client.wait_job(r.headers["CIMI-Job-URI"])
        assert (await client.get(meters["inputBandwidth"]["id"])).status == 404  # Meters go with their Network
    finally:
        await client.client.close()
