"""The bridge network driver on this host's kernel: real bridges, veth ports, dnsmasq and nftables, with
clients in network namespaces these tests make (each client is the operator's end of a NetworkPort,
moved into its own namespace, running busybox's udhcpc and ping).

Everything runs inside the test network namespace (`make test` runs pytest in cimid-test, which
setup-host.sh makes): no address used here exists in the root namespace."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest
from pyroute2 import IPRoute, netns

from cimid import config as cimid_config
from cimid.errors import DriverError
from cimid.hookspecs import NetworkSpec, Reservation
from cimid_bridge import BridgeNetwork, dnsmasq, links, rules

from .conftest import fresh_dir

UDHCPC_SCRIPT = "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/$mask\" dev \"$interface\" && " \
                "{ [ -z \"$router\" ] || ip route add default via \"$router\"; } && echo \"mtu=$mtu\" > \"$0.$interface\"\nexit 0\n"


def off_loop(fn, *args):
    """Run a blocking pyroute2 call on a thread: its synchronous API refuses a thread with a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def in_named_netns() -> bool:
    """This process runs in a namespace made with `ip netns add` (never the host's own)."""
    here = os.stat("/proc/self/ns/net")
    return any((os.stat(f"/run/netns/{name}").st_dev, os.stat(f"/run/netns/{name}").st_ino)
               == (here.st_dev, here.st_ino) for name in netns.listnetns())


@pytest.fixture(autouse=True)
def test_netns():
    if not in_named_netns():
        pytest.fail("the network tests make bridges with addresses: run them inside a test network namespace "
                    "(`make test`, or `ip netns exec cimid-test .venv/bin/pytest ...` after setup-host.sh)")


def config(state_dir):
    cfg = cimid_config.load(None, profile="host", state_dir=state_dir)
    cfg.sections["network"]["driver"] = "bridge"
    return cfg


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
    assert not [n for n, a in off_loop(links.owned_links).items()], "the driver left links"
    assert not dnsmasq.running_under(made.run_dir), "the driver left dnsmasq running"


class Client:
    """A namespace holding the operator's end of a port: `run(cmd...)` runs there."""

    def __init__(self, name: str, ifname: str):
        self.name, self.ifname = name, ifname

    def run(self, *cmd: str, check=True, timeout=30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def ping(self, address: str) -> bool:
        return self.run("busybox", "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0

    def dhcp(self, script_dir) -> str | None:
        script = script_dir / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        self.run("busybox", "udhcpc", "-i", self.ifname, "-q", "-n", "-t", "6", "-T", "1", "-O", "mtu", "-s", str(script),
                 check=False)
        for addr in self.run("ip", "-4", "-o", "addr", "show", "dev", self.ifname).stdout.split():
            if "/" in addr and addr[0].isdigit():
                return addr.split("/")[0]
        return None


@pytest.fixture
def clients():
    made: list[str] = []

    def client(peer: str, mac: str | None = None, address: str | None = None, route_via: str | None = None):
        return off_loop(make, peer, mac, address, route_via)

    def make(peer, mac, address, route_via):
        name = f"cimid-t-{uuid.uuid4().hex[:8]}"
        netns.create(name)
        made.append(name)
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=peer)[0], net_ns_fd=name)
        with IPRoute(netns=name) as ipr:
            index = ipr.link_lookup(ifname=peer)[0]
            if mac:
                ipr.link("set", index=index, address=mac)
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            if address:
                ip, prefix = address.split("/")
                ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
            if route_via:
                ipr.route("add", dst="default", gateway=route_via)
        return Client(name, peer)

    yield client
    for name in made:
        off_loop(netns.remove, name)


def spec(network_id, bridge, cidr, **kw) -> NetworkSpec:
    gateway = cidr.rsplit(".", 1)[0] + ".1"
    return NetworkSpec(network_id=network_id, bridge=bridge, cidr=cidr, gateway=gateway, **kw)


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
    assert a.ping("10.61.0.11") and b.ping("10.61.0.10")
    assert not a.ping("10.61.0.1"), "a PRIVATE network's guests must not reach the host"
    # A MAC without a reservation gets nothing: every lease is an Address cimid allocated.
    stranger = clients((await driver.create_port("n61", "p61c"))["peer"], mac="52:54:00:61:00:0c")
    assert stranger.dhcp(state_dir) is None
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
    assert not a.ping("10.63.0.10") and not b.ping("10.62.0.10")
    await driver.set_forwarding_group("g1", ("n62", "n63"))
    assert a.ping("10.63.0.10") and b.ping("10.62.0.10")
    assert "group:g1" in await rules.comments("nft")
    await driver.delete_forwarding_group("g1")
    assert not a.ping("10.63.0.10") and not b.ping("10.62.0.10")
    assert "group:g1" not in await rules.comments("nft")
    # A member that goes takes its part of the group's rules with it.
    await driver.set_forwarding_group("g2", ("n62", "n63"))
    await driver.delete_network("n63")
    assert "group:g2" not in await rules.comments("nft")
    with pytest.raises(DriverError, match="no such network"):
        await driver.set_forwarding_group("g3", ("n62", "nope"))


@pytest.fixture
async def uplink(clients):
    """A veth pair standing in for the host's uplink: "cimidup0" here (192.0.2.2), its peer in a namespace
    (192.0.2.1) that has no route back to any cimid network."""
    def make():
        with IPRoute() as ipr:
            ipr.link("add", ifname="cimidup0", kind="veth", peer="cimidup0p")
            index = ipr.link_lookup(ifname="cimidup0")[0]
            ipr.addr("add", index=index, address="192.0.2.2", prefixlen=24)
            ipr.link("set", index=index, state="up")
    off_loop(make)
    far = clients("cimidup0p", address="192.0.2.1/24")
    yield far
    off_loop(links.delete, "cimidup0")


async def test_public_network_is_masqueraded_to_its_uplink_and_private_is_not(driver, clients, uplink, state_dir):
    mac = "52:54:00:64:00:0a"
    await driver.create_network(spec("n64", "cimidt64", "10.64.0.0/24", network_type="PUBLIC", uplink="cimidup0",
                                     reservations=(Reservation(mac, "10.64.0.10"),)))
    await driver.start_network("n64")
    guest = clients((await driver.create_port("n64", "p64"))["peer"], mac=mac)
    assert guest.dhcp(state_dir) == "10.64.0.10"  # with the gateway as its default route (PUBLIC)
    # The far side has no route to 10.64.0.0/24: its answers come back only because the source was masqueraded.
    assert guest.ping("192.0.2.1")
    assert not uplink.ping("10.64.0.10")  # and nothing reaches in
    await driver.create_network(spec("n65", "cimidt65", "10.65.0.0/24", dhcp=False))
    await driver.start_network("n65")
    private = clients((await driver.create_port("n65", "p65"))["peer"], address="10.65.0.10/24",
                      route_via="10.65.0.1")
    assert not private.ping("192.0.2.1")
    await driver.stop_network("n64")
    assert not guest.ping("192.0.2.1")
    assert await driver.network("n64") == {"bridge": "present", "link": "down", "dhcp": "off", "rules": "none"}


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
            spec("n69", "cimidt69", "10.69.0.0/24", dhcp=False)]
    for n in nets:
        await first.create_network(n)
        await first.start_network(n.network_id)
    peer = (await first.create_port("n68", "p68"))["peer"]
    await first.set_forwarding_group("g68", ("n68", "n69"))
    old_pid = first._daemons["n68"].pid
    await first.close()  # a restart: the daemon goes, its dnsmasq stays
    # A reboot on top: the bridge of n69 and the whole table are gone.
    off_loop(links.delete, "cimidt69")
    subprocess.run(["nft", "delete", "table", "inet", "cimid"], check=True)
    second = BridgeNetwork(config(state_dir))
    await second.open()
    try:
        await second.adopt([(n, True) for n in nets], {"p68": "n68"}, {"g68": ("n68", "n69")})
        for n in nets:
            assert await second.network(n.network_id) == {
                "bridge": "present", "link": "up", "dhcp": "present" if n.dhcp else "off", "rules": "present"}
        assert "group:g68" in await rules.comments("nft")
        assert not os.path.exists(f"/proc/{old_pid}") or dnsmasq._zombie(old_pid)
        assert list(dnsmasq.running_under(second.run_dir).values()) == [second.run_dir / "n68"]
        assert off_loop(links.link_state, peer)["master"] is None
        assert off_loop(links.link_state, links.port_names("p68")[0])["master"] == "cimidt68"
        client = clients(peer, mac=mac)
        assert client.dhcp(state_dir) == "10.68.0.10"
    finally:
        await second.forget()
        await second.close()


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


def foreign_bridge(ifname: str) -> None:
    """A link cimid did not make (this kernel has no dummy links; a bridge without cimid's alias)."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="bridge")


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
    try:
        job = subprocess.Popen([sys.executable, "-c", CRASHING_JOB, str(state_dir)], stdout=subprocess.PIPE, text=True)
        assert job.stdout.readline().strip() == "made"
        job.send_signal(signal.SIGKILL)
        job.wait()
        assert "cimidt73" in off_loop(links.owned_links) and dnsmasq.running_under(state_dir / "networks")
        restarted = BridgeNetwork(config(state_dir))
        await restarted.open()
        await restarted.adopt([], {}, {})  # the store never recorded the network (its Job was cut short)
        assert off_loop(links.owned_links) == {}
        assert dnsmasq.running_under(state_dir / "networks") == {}
        assert await rules.comments("nft") == []
        assert not (state_dir / "networks" / "n73").exists()
        assert off_loop(links.link_alias, "cimidforeign0") == ""
        await restarted.close()
    finally:
        off_loop(links.delete, "cimidforeign0")
