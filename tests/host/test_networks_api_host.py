"""Networks through the API on the host profile: the bridge network driver and libvirt with real TCG
guests, as an operator drives them. Runs in the test network namespace, with libvirtd in it too
(setup-host.sh; `make test`)."""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import re
import shutil

import pytest
from conftest import assert_error, make_client

from cimid.http.keys import PROVIDER

from .conftest import HOST_OVERRIDES, domain_names, fresh_dir, remove_domains
from .netns import in_test_netns, libvirtd_in_our_netns  # noqa: F401 (fixtures)

NETWORK_OVERRIDES = {**copy.deepcopy(HOST_OVERRIDES), "network": {"driver": "bridge", "create_default": False}}
# udhcpc on every link that appears (hot-add); eth0's lease asked again each round where the test says so
# (the test image's udhcpc script applies the routes a lease carries: a guest reaches another network only
# by the routes its DHCP server announces for a ForwardingGroup); then the peers' pings.
GUEST_SCRIPT = """#!/bin/sh
( seen=" eth0 "
  while true; do
    for d in /sys/class/net/eth*; do
      i=${d##*/}
      case "$seen" in *" $i "*) ;; *) seen="$seen$i "; ip link set "$i" up
        udhcpc -i "$i" -q -n -t 60 -T 1 -O staticroutes >/dev/null 2>&1 & ;; esac
    done
    RENEW
    for p in PEERS; do
      if ping -c 1 -W 1 "$p" >/dev/null 2>&1; then echo "HVTEST: ping $p ok"; else echo "HVTEST: ping $p no"; fi
    done
    sleep 0.5
  done ) >/dev/console 2>&1 &
"""


def user_data(peers=(), renew=False) -> str:
    script = GUEST_SCRIPT.replace("PEERS", " ".join(peers)).replace(
        "RENEW", "udhcpc -i eth0 -q -n -t 2 -T 1 -O staticroutes >/dev/null 2>&1" if renew else ":")
    return base64.b64encode(script.encode()).decode()


@pytest.fixture
async def root(libvirt_host):
    if not libvirtd_in_our_netns():
        pytest.fail("no libvirtd runs in this network namespace: start it with tests/host/setup-host.sh and run "
                    "pytest in cimid-test (`make test` does both)", pytrace=False)
    path = fresh_dir()
    yield path
    left = await asyncio.to_thread(domain_names, "cimid-", str(path) + "/")
    await asyncio.to_thread(remove_domains, left)
    # A last daemon on an emptied store would remove what is left of the networks; the driver does it.
    from cimid_bridge import BridgeNetwork
    from cimid import config
    sweep = BridgeNetwork(config.load(None, profile="host", state_dir=path / "state"))
    await sweep.open()
    await sweep.adopt([], {}, {})
    await sweep.close()
    shutil.rmtree(path, ignore_errors=True)


async def ok(client, response, timeout=120.0) -> str:
    assert response.status == 202, response
    job = await client.wait_job(response.headers["CIMI-Job-URI"], timeout=timeout)
    assert job["state"] == "SUCCESS", job
    return response.headers["Location"]


async def console_after(client, machine: str, pattern: str, offset: int = 0, timeout: float = 90.0) -> re.Match:
    for _ in range(int(timeout / 0.25)):
        text = (await client.get(f"{machine}/console")).body.decode(errors="replace")[offset:]
        found = re.search(pattern, text)
        if found:
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"{pattern!r} never appeared on {machine}'s console:\n{text[-2000:]}")


async def console_length(client, machine: str) -> int:
    return len((await client.get(f"{machine}/console")).body.decode(errors="replace"))


async def cut_off(client, machine: str, peer: str) -> None:
    """Two pings of `peer` in a row fail, after the one that may have been under way (any result)."""
    await console_after(client, machine, f"ping {re.escape(peer)} (ok|no)", await console_length(client, machine))
    start = await console_length(client, machine)
    await console_after(client, machine, f"(ping {re.escape(peer)} no[\\s\\S]*){{2}}", start)
    text = (await client.get(f"{machine}/console")).body.decode(errors="replace")[start:]
    assert f"ping {peer} ok" not in text


async def test_networks_addresses_groups_hot_add_and_a_restart_through_the_api(root, guest_image):
    client = await make_client(root, copy.deepcopy(NETWORK_OVERRIDES), profile="host")
    try:
        image = await ok(client, await client.post("machineImages", {"name": "guest",
                                                                     "imageLocation": f"file://{guest_image}"}))

        async def network(name, cidr):
            return await ok(client, await client.post("networks", {"name": name, "networkTemplate": {
                "networkConfig": {"networkType": "PRIVATE", "properties": {"cidr": cidr}}}}))

        db, web = await network("db", "10.90.0.0/24"), await network("web", "10.91.0.0/24")

        async def address(network_url, ip):
            r = await client.post("addresses", {"addressTemplate": {"network": {"href": network_url}, "ip": ip}})
            assert r.status in (201, 202), r
            return r.json["id"] if r.status == 201 else await ok(client, r)

        async def machine(name, network_url, ip, **script):
            fixed = await address(network_url, ip)
            return await client.post("machines", {"name": name, "machineTemplate": {
                "machineImage": {"href": image}, "machineConfig": {"href": client.base + "machineConfigs/tiny"},
                "userData": user_data(**script),
                "networkInterfaces": [{"network": {"href": network_url}, "addresses": [{"href": fixed}]}]}})

        # Their Jobs run side by side.
        made = [await machine("a", db, "10.90.0.10", peers=("10.90.0.11",), renew=True),
                await machine("b", db, "10.90.0.11", peers=("10.90.0.10",)),
                await machine("c", web, "10.91.0.12", peers=("10.90.0.10",), renew=True)]
        a, b, c = [await ok(client, r) for r in made]
        # Each guest's DHCP lease is its Address resource, which its seed's network-config names too.
        for m, ip in ((a, "10.90.0.10"), (b, "10.90.0.11"), (c, "10.91.0.12")):
            seed = (await console_after(client, m, r"BEGIN network-config -----([\s\S]*?)HVTEST: ----- END")).group(1)
            assert f'"addresses": ["{ip}/24"]' in seed, seed
            got = (await console_after(client, m, r"HVTEST: dhcp eth0 ([\d.]+)/")).group(1)
            (interface,) = (await client.get(m + "/networkInterfaces")).json["machineNetworkInterfaces"]
            (link,) = (await client.get(interface["addresses"]["href"])).json["machineNetworkInterfaceAddresses"]
            assert got == ip == (await client.get(link["address"]["href"])).json["ip"]
        driver = client.app[PROVIDER].drivers.network
        assert set((await driver.leases(db.rsplit("/", 1)[1])).values()) == {"10.90.0.10", "10.90.0.11"}
        await console_after(client, a, "ping 10.90.0.11 ok")
        await console_after(client, b, "ping 10.90.0.10 ok")
        # The other network is out of reach until a ForwardingGroup joins them, and again once it goes.
        # (the routes each side's DHCP server announces for the group are the only ones the guests have)
        await cut_off(client, c, "10.90.0.10")
        since = await console_length(client, c)
        group = await ok(client, await client.post("forwardingGroups", {"name": "tiers", "forwardingGroupTemplate": {
            "networks": [{"href": db}, {"href": web}]}}))
        await console_after(client, c, r"dhcp eth0 10\.91\.0\.12/24 routes 10\.90\.0\.0/24 10\.91\.0\.1\s", since)
        await console_after(client, c, "ping 10.90.0.10 ok", since)
        await ok(client, await client.delete(group))
        await cut_off(client, c, "10.90.0.10")
        # A network in use cannot go, and says by what.
        before = await client.rows()
        assert "networkInterfaces" in assert_error(await client.delete(db), 409)
        assert await client.rows() == before
        # Hot-add: the running guest sees a new link and gets the address of its new Address resource.
        added = await ok(client, await client.post(a + "/networkInterfaces", {"network": {"href": web}}))
        (link,) = (await client.get((await client.get(added)).json["addresses"]["href"])).json[
            "machineNetworkInterfaceAddresses"]
        ip = (await client.get(link["address"]["href"])).json["ip"]
        assert (await console_after(client, a, r"HVTEST: dhcp eth1 ([\d.]+)/")).group(1) == ip
        serving = driver._daemons[db.rsplit("/", 1)[1]].pid
    finally:
        await client.client.close()
    # The daemon restarts: everything is taken back, DHCP never stopped; a dnsmasq killed comes back.
    client = await make_client(root, copy.deepcopy(NETWORK_OVERRIDES), profile="host")
    db, web, a, b, c = (url.split("/cimi/", 1)[1] for url in (db, web, a, b, c))  # the new server's port
    try:
        driver = client.app[PROVIDER].drivers.network
        db_id = db.rsplit("/", 1)[1]
        for _ in range(100):  # the network service adopts at start-up
            if db_id in driver._daemons:
                break
            await asyncio.sleep(0.05)
        assert driver._daemons[db_id].pid == serving
        for n in (db, web):
            assert await driver.network(n.rsplit("/", 1)[1]) == {"bridge": "present", "link": "up",
                                                                  "dhcp": "present", "rules": "present"}
        doc = (await client.get(db)).json
        assert doc["state"] == "STARTED" and "eventLog" in doc, doc
        os.kill(serving, 9)
        for _ in range(200):
            log = doc["eventLog"]["href"]
            alarms = [e for e in (await client.get(log + "/events")).json.get("events", []) if e["type"].endswith("alarm")]
            if alarms:
                break
            await asyncio.sleep(0.05)
        assert alarms and "restarted" in alarms[0]["content"]["detail"]
        await console_after(client, a, "ping 10.90.0.11 ok", await console_length(client, a))
        for m in (a, b, c):
            await ok(client, await client.delete(m))
        for n in (db, web):
            await ok(client, await client.delete(n))
        assert driver._specs == {}
    finally:
        await client.client.close()


async def test_the_host_profile_makes_a_nated_default_network_on_its_first_start_only(root, guest_image):
    # create_default as shipped; a pool of its own: the shipped one's first subnet may be on a bridge another
    # cimid left in this namespace, and the pool knows only this cimid's networks (its dnsmasq would not bind)
    overrides = {**copy.deepcopy(HOST_OVERRIDES), "network": {"driver": "bridge", "subnet_pool": "10.219.0.0/16"}}
    client = await make_client(root, copy.deepcopy(overrides), profile="host")
    try:
        for _ in range(400):  # made by a Job queued at start-up
            listed = (await client.get("networks")).json
            if listed.get("networks") and listed["networks"][0]["state"] == "STARTED":
                break
            await asyncio.sleep(0.05)
        (network,) = listed["networks"]
        assert (network["name"], network["networkType"], network["state"]) == ("default", "PUBLIC", "STARTED"), network
        network_id = network["id"].rsplit("/", 1)[1]
        driver = client.app[PROVIDER].drivers.network
        assert await driver.network(network_id) == {"bridge": "present", "link": "up", "dhcp": "present",
                                                    "rules": "present"}
        table = driver.nft.run({"nftables": [{"list": {"table": {"family": "inet", "name": driver.table}}}]})
        assert any("masquerade" in str(item["rule"]["expr"]) and item["rule"].get("comment") == f"net:{network_id}"
                   for item in table["nftables"] if "rule" in item), "the default network is not NATed"
        # A machine whose template names no networkInterfaces gets one there, and the guest's DHCP lease on
        # the default bridge is its Address.
        image = await ok(client, await client.post("machineImages", {"name": "guest",
                                                                     "imageLocation": f"file://{guest_image}"}))
        machine = await ok(client, await client.post("machines", {"name": "plain", "machineTemplate": {
            "machineImage": {"href": image}, "machineConfig": {"href": client.base + "machineConfigs/tiny"}}}))
        (interface,) = (await client.get(machine + "/networkInterfaces")).json["machineNetworkInterfaces"]
        assert interface["network"]["href"] == network["id"] and interface["state"] == "ACTIVE", interface
        (link,) = (await client.get(interface["addresses"]["href"])).json["machineNetworkInterfaceAddresses"]
        address = (await client.get(link["address"]["href"])).json
        got = (await console_after(client, machine, r"HVTEST: dhcp eth0 ([\d.]+)/24 routes")).group(1)
        assert got == address["ip"] and address["network"]["href"] == network["id"], (got, address)
        assert got in (await driver.leases(network_id)).values()
        assert (await driver.network(network_id))["dhcp"] == "present"
        await ok(client, await client.delete(machine))
        await ok(client, await client.delete(network["id"]))
    finally:
        await client.client.close()
    # Made once: a later start, even after the operator deleted it, makes no other.
    client = await make_client(root, copy.deepcopy(overrides), profile="host")
    try:
        await asyncio.sleep(0.5)  # as long as the first start's Job took, at most
        assert (await client.get("networks")).json["count"] == 0
    finally:
        await client.client.close()
