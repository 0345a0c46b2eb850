"""The bridge network driver on this host's kernel: real bridges, veth ports, dnsmasq and nftables, with
clients in network namespaces these tests make (each client is the operator's end of a NetworkPort,
moved into its own namespace, running busybox's udhcpc and ping).

Everything runs inside the test network namespace (`make test` runs pytest in cimid-test, which
setup-host.sh makes): no address used here exists in the root namespace."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from pyroute2 import IPRoute

from cimid.errors import DriverError
from cimid.hookspecs import NetworkSpec, Reservation
from cimid_bridge import BridgeNetwork, BridgeTraffic, dnsmasq, links, rules

from .conftest import fresh_dir
from .netns import clients, config, in_test_netns, off_loop, reach, spec, uplink  # noqa: F401 (fixtures)

@pytest.fixture
async def state_dir():
    path = fresh_dir("net")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
async def driver(state_dir):
    made = BridgeNetwork(config(state_dir))
    await made.open()
    yield made
    await made.forget()
    await made.close()
    assert not off_loop(links.owned_links, made.owner), "the driver left links"
    assert not dnsmasq.running_under(made.run_dir), "the driver left dnsmasq running"


async def test_private_network_dhcp_matches_reservations_and_guests_reach_only_each_other(driver, clients, state_dir):
    macs = ("52:54:00:61:00:0a", "52:54:00:61:00:0b")
    net = spec("n61", "cimidt61", "10.61.0.0/24", reservations=(
        Reservation(macs[0], "10.61.0.10", "a"), Reservation(macs[1], "10.61.0.11", "b")))
    await driver.create_network(net)
    await driver.start_network("n61")
    a = clients((await driver.create_port("n61", "p61a"))["peer"], mac=macs[0])
    b = clients((await driver.create_port("n61", "p61b"))["peer"], mac=macs[1])
    assert a.dhcp(state_dir) == "10.61.0.10" and b.dhcp(state_dir) == "10.61.0.11"
    assert await driver.leases("n61") == {macs[0]: "10.61.0.10", macs[1]: "10.61.0.11"}
    # each reaches the other; a PRIVATE network's guests do not reach the host
    assert reach((a, "10.61.0.11"), (b, "10.61.0.10"), (a, "10.61.0.1")) == [True, True, False]
    # DNS on the gateway knows the guests by the names of their reservations (and nothing outside).
    # (busybox's nslookup also asks AAAA, which dnsmasq refuses: its exit status says nothing here)
    assert "Address: 10.61.0.11" in a.run("busybox", "nslookup", "b", "10.61.0.1", check=False).stdout
    assert "Name:" not in a.run("busybox", "nslookup", "example.org", "10.61.0.1", check=False).stdout
    # A MAC without a reservation gets nothing: every lease is an Address cimid allocated.
    stranger = clients((await driver.create_port("n61", "p61c"))["peer"], mac="52:54:00:61:00:0c")
    assert stranger.dhcp(state_dir, tries=2) is None
    # A new reservation reaches the running dnsmasq (SIGHUP), without a restart.
    pid = driver._daemons["n61"].pid
    await driver.set_reservations("n61", net.reservations + (Reservation("52:54:00:61:00:0c", "10.61.0.12"),))
    assert stranger.dhcp(state_dir) == "10.61.0.12" and driver._daemons["n61"].pid == pid
    assert await driver.network("n61") == {"bridge": "present", "link": "up", "dhcp": "present", "rules": "present"}


async def test_mtu_is_honoured_on_bridge_ports_and_in_dhcp(driver, clients, state_dir):
    mac = "52:54:00:66:00:0a"
    await driver.create_network(spec("n66", "cimidt66", "10.66.0.0/24", mtu=1400,
                                     reservations=(Reservation(mac, "10.66.0.10"),)))
    await driver.start_network("n66")
    peer = (await driver.create_port("n66", "p66"))["peer"]
    assert off_loop(links.link_state, "cimidt66")["mtu"] == 1400 and off_loop(links.link_state, peer)["mtu"] == 1400
    client = clients(peer, mac=mac)
    assert client.dhcp(state_dir) == "10.66.0.10"
    assert (state_dir / f"udhcpc.sh.{peer}").read_text().strip() == "mtu=1400"


async def test_networks_are_isolated_until_a_forwarding_group_joins_them(driver, clients):
    for n in ("62", "63"):
        await driver.create_network(spec(f"n{n}", f"cimidt{n}", f"10.{n}.0.0/24", dhcp=False))
        await driver.start_network(f"n{n}")
    a = clients((await driver.create_port("n62", "p62"))["peer"], address="10.62.0.10/24", route_via="10.62.0.1")
    b = clients((await driver.create_port("n63", "p63"))["peer"], address="10.63.0.10/24", route_via="10.63.0.1")
    # A PRIVATE network's host address answers nothing, and nothing routes between networks.
    assert reach((a, "10.63.0.10"), (b, "10.62.0.10")) == [False, False]
    await driver.set_forwarding_group("g1", ("n62", "n63"))
    assert reach((a, "10.63.0.10"), (b, "10.62.0.10")) == [True, True]
    assert "group:g1" in await driver.nft.comments(driver.table)
    await driver.delete_forwarding_group("g1")
    assert reach((a, "10.63.0.10"), (b, "10.62.0.10")) == [False, False]
    assert "group:g1" not in await driver.nft.comments(driver.table)
    # A member that goes takes its part of the group's rules with it.
    await driver.set_forwarding_group("g2", ("n62", "n63"))
    await driver.delete_network("n63")
    assert "group:g2" not in await driver.nft.comments(driver.table)
    with pytest.raises(DriverError, match="no such network"):
        await driver.set_forwarding_group("g3", ("n62", "nope"))


ROUTES_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
set -- $staticroutes
while [ $# -ge 2 ]; do ip route add "$1" via "$2" dev "$interface"; shift 2; done
exit 0
"""


async def test_a_forwarding_group_is_announced_to_guests_as_dhcp_routes(driver, clients, state_dir):
    macs = {"n6f": "52:54:00:6f:00:0a", "n70": "52:54:00:70:00:0a"}
    for n, third in (("n6f", 111), ("n70", 112)):
        await driver.create_network(spec(n, f"cimidt{n[1:]}", f"10.{third}.0.0/24",
                                         reservations=(Reservation(macs[n], f"10.{third}.0.10"),)))
        await driver.start_network(n)
    await driver.set_forwarding_group("g6f", ("n6f", "n70"))
    script = state_dir / "routes.sh"
    script.write_text(ROUTES_SCRIPT)
    script.chmod(0o755)
    guests = {}
    for n in macs:  # DHCP with option 121 asked for, and no route added by hand
        guests[n] = clients((await driver.create_port(n, f"p{n[1:]}"))["peer"], mac=macs[n])
        guests[n].run("busybox", "udhcpc", "-i", guests[n].ifname, "-q", "-n", "-t", "6", "-T", "1",
                      "-O", "staticroutes", "-s", str(script), check=False)
    assert "10.112.0.0/24 via 10.111.0.1" in guests["n6f"].run("ip", "-4", "route").stdout
    assert reach((guests["n6f"], "10.112.0.10"), (guests["n70"], "10.111.0.10")) == [True, True]
    # The group goes: so do the routes its members announce (dnsmasq re-read them, no restart).
    pid = driver._daemons["n6f"].pid
    await driver.delete_forwarding_group("g6f")
    assert (driver.run_dir / "n6f" / "options").read_text() == "" and driver._daemons["n6f"].pid == pid


async def test_public_network_is_masqueraded_to_its_uplink_and_private_is_not(driver, clients, uplink, state_dir):
    mac = "52:54:00:64:00:0a"
    await driver.create_network(spec("n64", "cimidt64", "10.64.0.0/24", network_type="PUBLIC", uplink="cimidup0",
                                     reservations=(Reservation(mac, "10.64.0.10"),)))
    await driver.start_network("n64")
    guest = clients((await driver.create_port("n64", "p64"))["peer"], mac=mac)
    assert guest.dhcp(state_dir) == "10.64.0.10"  # with the gateway as its default route (PUBLIC)
    await driver.create_network(spec("n65", "cimidt65", "10.65.0.0/24", dhcp=False))
    await driver.start_network("n65")
    private = clients((await driver.create_port("n65", "p65"))["peer"], address="10.65.0.10/24",
                      route_via="10.65.0.1")
    # The far side has no route to 10.64.0.0/24: its answers come back only because the source was
    # masqueraded; nothing reaches in; a PRIVATE network beside it is not masqueraded.
    assert reach((guest, "192.0.2.1"), (uplink, "10.64.0.10"), (private, "192.0.2.1")) == [True, False, False]
    await driver.stop_network("n64")
    assert not guest.ping("192.0.2.1")
    # With no uplink named, a PUBLIC network goes out by any link that is not a cimid bridge.
    mac = "52:54:00:6c:00:0a"
    await driver.create_network(spec("n6c", "cimidt6c", "10.108.0.0/24", network_type="PUBLIC",
                                     reservations=(Reservation(mac, "10.108.0.10"),)))
    await driver.start_network("n6c")
    other = clients((await driver.create_port("n6c", "p6c"))["peer"], mac=mac)
    assert other.dhcp(state_dir) == "10.108.0.10"
    assert reach((other, "192.0.2.1"), (other, "10.65.0.10")) == [True, False]  # out, but not into another network
    assert await driver.network("n64") == {"bridge": "present", "link": "down", "dhcp": "off", "rules": "none"}


async def test_the_traffic_source_reads_what_guests_send_through_the_bridge(driver, clients):
    source = BridgeTraffic(driver)
    await driver.create_network(spec("n6d", "cimidt6d", "10.109.0.0/24", dhcp=False))
    await driver.start_network("n6d")
    await driver.create_network(spec("n6e", "cimidt6e", "10.110.0.0/24", dhcp=False))  # stopped: not read
    guest = clients((await driver.create_port("n6d", "p6d"))["peer"], address="10.109.0.10/24")
    began = time.monotonic()
    assert await source.read() == {}  # the first reading has no rate yet
    # 20 echo requests of 1000 bytes to the gateway: the bridge link receives them all (a PRIVATE
    # network's host then drops them, so little goes back).
    guest.run("busybox", "ping", "-c", "20", "-i", "0.05", "-s", "1000", "-W", "1", "10.109.0.1", check=False)
    reading = await source.read()
    elapsed = time.monotonic() - began
    assert set(reading) == {"n6d"} and set(reading["n6d"]) == {"inputBandwidth", "outputBandwidth"}
    assert reading["n6d"]["outputBandwidth"] * elapsed >= 20 * 1000
    assert 0 <= reading["n6d"]["inputBandwidth"] < reading["n6d"]["outputBandwidth"]


async def test_a_killed_dnsmasq_is_restarted_with_an_alarm(driver, clients, state_dir):
    mac = "52:54:00:67:00:0a"
    alarms = []
    driver.watch(lambda network_id, message: alarms.append((network_id, message)))
    await driver.create_network(spec("n67", "cimidt67", "10.67.0.0/24", reservations=(Reservation(mac, "10.67.0.10"),)))
    await driver.start_network("n67")
    old = driver._daemons["n67"].pid
    os.kill(old, signal.SIGKILL)
    for _ in range(100):
        if alarms:
            break
        await asyncio.sleep(0.05)
    assert alarms and alarms[0][0] == "n67" and "restarted" in alarms[0][1]
    assert driver._daemons["n67"].pid != old
    client = clients((await driver.create_port("n67", "p67"))["peer"], mac=mac)
    assert client.dhcp(state_dir) == "10.67.0.10"


async def test_a_new_driver_adopts_networks_ports_and_groups_after_a_restart_or_reboot(state_dir, clients):
    first = BridgeNetwork(config(state_dir))
    await first.open()
    mac = "52:54:00:68:00:0a"
    nets = [spec("n68", "cimidt68", "10.68.0.0/24", reservations=(Reservation(mac, "10.68.0.10"),)),
            spec("n69", "cimidt69", "10.69.0.0/24"),
            spec("n6a", "cimidt6a", "10.106.0.0/24")]
    for n in nets:
        await first.create_network(n)
        await first.start_network(n.network_id)
    peer = (await first.create_port("n68", "p68"))["peer"]
    await first.set_forwarding_group("g68", ("n68", "n69"))
    old = {n: first._daemons[n].pid for n in ("n68", "n69", "n6a")}
    await first.close()  # a restart: the daemon goes, its dnsmasq processes stay
    # A reboot of part of it: the bridge of n69 and the whole table are gone; and n6a's spec changed.
    off_loop(links.delete, "cimidt69")
    subprocess.run(["nft", "delete", "table", "inet", first.table], check=True)
    nets[2] = spec("n6a", "cimidt6a", "10.106.0.0/24", mtu=1400)
    second = BridgeNetwork(config(state_dir))
    await second.open()
    alarms = []
    second.watch(lambda network_id, message: alarms.append((network_id, message)))
    try:
        await second.adopt([(n, True) for n in nets], {"p68": "n68"}, {"g68": ("n68", "n69")})
        for n in nets:
            assert await second.network(n.network_id) == {
                "bridge": "present", "link": "up", "dhcp": "present", "rules": "present"}
        assert "group:g68" in await second.nft.comments(second.table)
        # n68's dnsmasq serves on without a break; n6a's, configured otherwise now, was replaced.
        assert second._daemons["n68"].pid == old["n68"]
        assert second._daemons["n6a"].pid != old["n6a"] and not dnsmasq.Daemon(old["n6a"]).alive()
        assert sorted(p.name for p in dnsmasq.running_under(second.run_dir).values()) == ["n68", "n69", "n6a"]
        assert off_loop(links.link_state, peer)["master"] is None
        assert off_loop(links.link_state, links.port_names("p68")[0])["master"] == "cimidt68"
        assert off_loop(links.link_state, "cimidt6a")["mtu"] == 1400
        client = clients(peer, mac=mac)
        assert client.dhcp(state_dir) == "10.68.0.10"
        # The dnsmasq taken over is supervised like a child: killed, it is restarted, with an alarm.
        os.kill(old["n68"], signal.SIGKILL)
        for _ in range(100):
            if alarms:
                break
            await asyncio.sleep(0.05)
        assert alarms and alarms[0][0] == "n68" and "restarted" in alarms[0][1]
        assert second._daemons["n68"].alive() and second._daemons["n68"].pid != old["n68"]
    finally:
        await second.forget()
        await second.close()


async def test_a_bridged_public_network_puts_its_guests_on_the_uplinks_segment(driver, clients, uplink):
    # The host has no address on it: the segment's addresses are the uplink network's.
    await driver.create_network(NetworkSpec("n6b", "cimidt6b", "PUBLIC", "192.0.2.0/24", uplink="cimidup0",
                                            bridged=True, dhcp=False))
    await driver.start_network("n6b")
    assert off_loop(links.link_state, "cimidup0")["master"] == "cimidt6b"
    guest = clients((await driver.create_port("n6b", "p6b"))["peer"], address="192.0.2.50/24")
    assert reach((guest, "192.0.2.1"), (uplink, "192.0.2.50")) == [True, True]  # one segment: no NAT, both ways
    assert not any("masquerade" in str(r) for r in rules.ruleset(driver.table, [driver._specs["n6b"]], {})["nftables"])
    await driver.delete_network("n6b")
    assert off_loop(links.link_state, "cimidup0")["master"] is None  # the uplink is the operator's: kept


async def test_a_bridge_name_clashing_with_a_link_cimid_did_not_make_is_refused(driver):
    off_loop(foreign_bridge, "cimidclash0")
    try:
        with pytest.raises(DriverError, match="a link named cimidclash0 already exists and cimid did not make it"):
            await driver.create_network(spec("n70", "cimidclash0", "10.70.0.0/24"))
        assert await driver.network("n70") is None
        assert off_loop(links.link_alias, "cimidclash0") == "" and off_loop(links.link_state, "cimidclash0")["addresses"] == []
        assert not (driver.run_dir / "n70").exists()
        # Another network's bridge name is refused as well.
        await driver.create_network(spec("n71", "cimidt71", "10.71.0.0/24"))
        with pytest.raises(DriverError, match="taken by network n71"):
            await driver.create_network(spec("n72", "cimidt71", "10.72.0.0/24"))
    finally:
        off_loop(links.delete, "cimidclash0")


async def test_the_host_subnets_are_those_of_links_cimid_did_not_make(driver):
    off_loop(foreign_bridge, "cimidlan0", "10.74.0.1")
    try:
        await driver.create_network(spec("n75", "cimidt75", "10.75.0.0/24"))
        found = await driver.host_subnets()
        assert found["10.74.0.0/24"] == "cimidlan0" and "10.75.0.0/24" not in found
    finally:
        off_loop(links.delete, "cimidlan0")


def foreign_bridge(ifname: str, address: str | None = None) -> None:
    """A link cimid did not make (this kernel has no dummy links; a bridge without cimid's alias), with
    `address`/24 if given."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="bridge")
        if address:
            ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=address, prefixlen=24)


CRASHING_JOB = textwrap.dedent("""
    import asyncio, sys
    from cimid import config
    from cimid.hookspecs import NetworkSpec
    from cimid_bridge import BridgeNetwork
    async def main():
        cfg = config.load(None, profile="host", state_dir=sys.argv[1]); cfg.sections["network"]["driver"] = "bridge"
        d = BridgeNetwork(cfg); await d.open()
        await d.create_network(NetworkSpec("n73", "cimidt73", cidr="10.73.0.0/24", gateway="10.73.0.1"))
        await d.start_network("n73")
        await d.create_port("n73", "p73")
        print("made", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


async def test_sigkill_during_a_network_job_leaves_no_orphan_after_restart(state_dir):
    off_loop(foreign_bridge, "cimidforeign0")  # not cimid's: must survive the clean-up
    # Another cimid's network (another state directory) on the same host: not this one's orphan either.
    other_dir = fresh_dir("net")
    other = BridgeNetwork(config(other_dir))
    await other.open()
    await other.create_network(spec("n76", "cimidt76", "10.76.0.0/24"))
    await other.start_network("n76")
    try:
        job = subprocess.Popen([sys.executable, "-c", CRASHING_JOB, str(state_dir)], stdout=subprocess.PIPE, text=True)
        assert job.stdout.readline().strip() == "made"
        job.send_signal(signal.SIGKILL)
        job.wait()
        restarted = BridgeNetwork(config(state_dir))
        assert "cimidt73" in off_loop(links.owned_links, restarted.owner)
        assert dnsmasq.running_under(state_dir / "networks")
        await restarted.open()
        await restarted.adopt([], {}, {})  # the store never recorded the network (its Job was cut short)
        assert off_loop(links.owned_links, restarted.owner) == {}
        assert dnsmasq.running_under(state_dir / "networks") == {}
        assert await restarted.nft.comments(restarted.table) == []
        assert not (state_dir / "networks" / "n73").exists()
        assert off_loop(links.link_alias, "cimidforeign0") == ""
        assert await other.network("n76") == {"bridge": "present", "link": "up", "dhcp": "present", "rules": "present"}
        await restarted.close()
    finally:
        off_loop(links.delete, "cimidforeign0")
        await other.forget()
        await other.close()
        subprocess.run(["rm", "-rf", str(other_dir)], check=False)


async def test_steps_run_again_by_a_resumed_job_change_nothing(driver):
    net = spec("n74", "cimidt74", "10.74.0.0/24")
    await driver.create_network(net)
    await driver.create_network(net)  # the same spec again: a create step resumed after a restart
    with pytest.raises(DriverError, match="already a network n74"):
        await driver.create_network(spec("n74", "cimidt74", "10.75.0.0/24"))
    await driver.start_network("n74")
    pid = driver._daemons["n74"].pid
    await driver.start_network("n74")
    assert driver._daemons["n74"].pid == pid and len(dnsmasq.running_under(driver.run_dir)) == 1
    await driver.stop_network("n74")
    await driver.stop_network("n74")
    assert await driver.network("n74") == {"bridge": "present", "link": "down", "dhcp": "off", "rules": "none"}
    await driver.delete_network("n74")
    await driver.delete_network("n74")
    assert await driver.network("n74") is None and "net:n74" not in await driver.nft.comments(driver.table)


async def test_a_driver_that_was_told_nothing_reads_a_network_from_the_host(driver, state_dir):
    """What `cimid check` sees, in a process of its own beside the daemon."""
    await driver.create_network(spec("n77", "cimidt77", "10.77.0.0/24"))
    await driver.create_network(spec("n78", "cimidt78", "10.78.0.0/24"))
    await driver.start_network("n77")
    checker = BridgeNetwork(config(state_dir))
    await checker.open()
    assert await checker.network("n77") == {"bridge": "present", "link": "up", "dhcp": "present", "rules": "present"}
    assert await checker.network("n78") == {"bridge": "present", "link": "down", "dhcp": "off", "rules": "none"}
    assert await checker.network("n79") is None
    off_loop(links.delete, "cimidt78")  # a reboot the daemon has not repaired yet
    assert (await checker.network("n78"))["bridge"] == "missing"
    await checker.close()


async def test_adopting_a_network_that_is_not_started_brings_its_bridge_down(driver):
    """A start cut short by a SIGKILL can leave the bridge up; the store says the network is not started,
    so the restarted driver takes the link down (after the Job, the Network reads STOPPED, as the host is)."""
    net = spec("n7b", "cimidt7b", "10.123.0.0/24")
    await driver.create_network(net)
    off_loop(links.set_up, "cimidt7b", True)
    await driver.adopt([(net, False)], {}, {})
    assert await driver.network("n7b") == {"bridge": "present", "link": "down", "dhcp": "off", "rules": "none"}
