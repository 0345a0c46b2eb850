"""Real TCG guests on cimid bridges: the bridge network driver and the libvirt compute driver together,
as the service drives them (NetworkSpec + MachineSpec.interfaces). Guests run the test image, whose init
runs udhcpc on eth0, applies the address and the routes of each lease (DHCP option 121 included) and prints
"HVTEST: dhcp <if> <ip>/<mask> routes <routes or none>"; each guest's user-data adds what a test needs
(udhcpc on every hot-added link, DHCP asked again every round, pings of its peers printed to the console).
No route is ever added by hand: a guest reaches another network only by the routes its DHCP server sends.

libvirtd must run in the same network namespace as this process (setup-host.sh starts it in cimid-test,
and `make test` runs pytest there): its taps join the bridges made here."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil

import pytest
from cimid_bridge import BridgeNetwork, links
from cimid_dir import DirImageStore
from cimid_libvirt import LibvirtCompute
from cimid_libvirt.compute import tap_name

from cimid import config as cimid_config
from cimid.hookspecs import InterfaceSpec, MachineSpec, Reservation

from .conftest import URI, fresh_dir, remove_domains
from .netns import clients, in_test_netns, libvirtd_in_our_netns, off_loop, spec, uplink  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("libvirt_host")


@pytest.fixture(scope="module")
async def host(guest_image):
    if not libvirtd_in_our_netns():
        pytest.fail("no libvirtd runs in this network namespace: start it with tests/host/setup-host.sh and run "
                    "pytest in cimid-test (`make test` does both)", pytrace=False)
    root = fresh_dir("netguests")
    cfg = cimid_config.load(None, profile="host", state_dir=root / "state", overrides={
        "compute": {"uri": URI, "virt_type": "qemu", "stop_timeout": 30.0}, "network": {"driver": "bridge"}})
    images = DirImageStore(cfg)
    await images.import_image("guest", f"file://{guest_image}", None, _no_progress)
    compute = LibvirtCompute(cfg, images)
    await compute.open()
    network = BridgeNetwork(cfg)
    await network.open()
    made: list[str] = []
    yield compute, network, made
    await asyncio.to_thread(remove_domains, [f"cimid-{m}" for m in made])
    await network.forget()
    await network.close()
    # A test may have swapped in a driver of its own (a restart): a last one adopting nothing removes
    # whatever any of them left, as a restarted cimid with an empty store would.
    sweep = BridgeNetwork(cfg)
    await sweep.open()
    await sweep.adopt([], {}, {})
    await sweep.close()
    await compute.close()
    await asyncio.to_thread(shutil.rmtree, root, True)


@pytest.fixture(autouse=True)
async def own_guests(host):
    """Each test's guests go when it ends: TCG guests left running would slow every later test."""
    made = host[2]
    before = len(made)
    yield
    await asyncio.to_thread(remove_domains, [f"cimid-{m}" for m in made[before:]])


async def _no_progress(percent: int) -> None:
    pass


GUEST_SCRIPT = """#!/bin/sh
# udhcpc on every link that appears (a hot-plugged NIC); each round eth0's lease asked again if the test
# says so (its routes follow the forwarding groups), then the peers' pings
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


async def boot(host, machine_id, interfaces, **script) -> str:
    compute, _, made = host
    spec_ = MachineSpec(id=machine_id, name=machine_id, cpu=1, memory=196608, image_id="guest",
                        user_data=user_data(**script), interfaces=interfaces)
    made.append(machine_id)
    await compute.create(spec_)
    await compute.start(machine_id)
    return machine_id


class Console:
    """A guest's serial log read from a point on: `await until(pattern)` waits for a new line matching it."""

    def __init__(self, compute, machine_id):
        self.path, self.offset = compute.console_log(machine_id), 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        """What the guest wrote since the mark."""
        return self.path.read_bytes()[self.offset:].decode(errors="replace") if self.path.exists() else ""

    async def until(self, pattern: str, timeout: float = 90.0) -> re.Match:
        for _ in range(int(timeout / 0.25)):
            text = self.text()
            found = re.search(pattern, text)
            if found:
                return found
            await asyncio.sleep(0.25)
        raise AssertionError(f"{pattern!r} never appeared on {self.path}:\n{text[-2000:]}")


async def test_guests_get_their_reserved_addresses_reach_each_other_and_another_network_only_through_a_group(host):
    compute, network, _ = host
    a_mac, b_mac, c_mac = "52:54:00:80:00:0a", "52:54:00:80:00:0b", "52:54:00:81:00:0c"
    await network.create_network(spec("g80", "cimidg80", "10.80.0.0/24", reservations=(
        Reservation(a_mac, "10.80.0.10", "a"), Reservation(b_mac, "10.80.0.11", "b"))))
    await network.create_network(spec("g81", "cimidg81", "10.81.0.0/24", reservations=(
        Reservation(c_mac, "10.81.0.12", "c"),)))
    for n in ("g80", "g81"):
        await network.start_network(n)
    # a and c ask DHCP again every round: their routes to each other's network come from there alone.
    a, b, c = await asyncio.gather(  # booted side by side
        boot(host, "net-a", [InterfaceSpec(a_mac, "cimidg80")], peers=("10.80.0.11",), renew=True),
        boot(host, "net-b", [InterfaceSpec(b_mac, "cimidg80")], peers=("10.80.0.10",)),
        boot(host, "net-c", [InterfaceSpec(c_mac, "cimidg81")], peers=("10.80.0.10",), renew=True))
    consoles = {m: Console(compute, m) for m in (a, b, c)}
    # PRIVATE networks in no group announce no route.
    assert (await consoles[a].until(r"HVTEST: dhcp eth0 ([\d.]+)/24 routes none")).group(1) == "10.80.0.10"
    assert (await consoles[b].until(r"HVTEST: dhcp eth0 ([\d.]+)/24 routes none")).group(1) == "10.80.0.11"
    assert (await consoles[c].until(r"HVTEST: dhcp eth0 ([\d.]+)/24 routes none")).group(1) == "10.81.0.12"
    assert await network.leases("g80") == {a_mac: "10.80.0.10", b_mac: "10.80.0.11"}
    await consoles[a].until("HVTEST: ping 10.80.0.11 ok")
    await consoles[b].until("HVTEST: ping 10.80.0.10 ok")
    # The taps libvirt made are named after the MACs, on the right bridge.
    assert off_loop(links.link_state, tap_name(a_mac))["master"] == "cimidg80"
    # c, on the other network, cannot reach a ...
    await cut_off(consoles[c], "10.80.0.10")
    # ... until a forwarding group joins the networks: each side's DHCP server now sends the way to the
    # other (option 121), and the host forwards ...
    await network.set_forwarding_group("fg", ("g80", "g81"))
    for m in (a, c):
        consoles[m].mark()
    await consoles[a].until(r"HVTEST: dhcp eth0 10\.80\.0\.10/24 routes 10\.81\.0\.0/24 10\.80\.0\.1\s")
    await consoles[c].until(r"HVTEST: dhcp eth0 10\.81\.0\.12/24 routes 10\.80\.0\.0/24 10\.81\.0\.1\s")
    await consoles[c].until(r"HVTEST: ping 10\.80\.0\.10 ok")
    # ... and cannot once the group is gone (its rules go, and the routes with the next lease).
    await network.delete_forwarding_group("fg")
    await cut_off(consoles[c], "10.80.0.10")
    await consoles[c].until(r"HVTEST: dhcp eth0 10\.81\.0\.12/24 routes none")


async def cut_off(console: Console, peer: str) -> None:
    """Two pings of `peer` in a row fail, after the one that may have been under way (any result)."""
    console.mark()
    await console.until(f"HVTEST: ping {re.escape(peer)} (ok|no)")
    console.mark()
    await console.until(f"(HVTEST: ping {re.escape(peer)} no[\\s\\S]*){{2}}")
    assert f"ping {peer} ok" not in console.text()


async def test_hot_added_interface_gets_its_address_and_a_killed_dnsmasq_comes_back(host):
    compute, network, _ = host
    mac0, mac1 = "52:54:00:82:00:0a", "52:54:00:83:00:0a"
    await network.create_network(spec("g82", "cimidg82", "10.82.0.0/24", reservations=(Reservation(mac0, "10.82.0.10"),)))
    await network.create_network(spec("g83", "cimidg83", "10.83.0.0/24", mtu=1400,
                                      reservations=(Reservation(mac1, "10.83.0.10"),)))
    for n in ("g82", "g83"):
        await network.start_network(n)
    alarms = []
    network.watch(lambda network_id, message: alarms.append(network_id))
    m = await boot(host, "net-hot", [InterfaceSpec(mac0, "cimidg82")])
    console = Console(compute, m)
    await console.until(r"HVTEST: dhcp eth0 10\.82\.0\.10/")
    os.kill(network._daemons["g83"].pid, 9)  # the new link's DHCP server dies before it is asked
    await compute.attach_interface(m, InterfaceSpec(mac1, "cimidg83", mtu=1400))
    assert sorted(await compute.interfaces(m)) == [mac0, mac1]
    assert (await console.until(r"HVTEST: dhcp eth1 ([\d.]+)/")).group(1) == "10.83.0.10"
    assert "g83" in alarms
    assert off_loop(links.link_state, tap_name(mac1))["mtu"] == 1400
    await compute.detach_interface(m, mac1)
    assert await compute.interfaces(m) == [mac0]
    assert off_loop(links.link_state, tap_name(mac1)) is None


async def test_a_public_networks_guest_reaches_the_uplink_masqueraded(host, uplink):
    compute, network, _ = host
    mac = "52:54:00:84:00:0a"
    await network.create_network(spec("g84", "cimidg84", "10.84.0.0/24", network_type="PUBLIC", uplink="cimidup0",
                                      reservations=(Reservation(mac, "10.84.0.10"),)))
    await network.start_network("g84")
    m = await boot(host, "net-pub", [InterfaceSpec(mac, "cimidg84")], peers=("192.0.2.1",))
    console = Console(compute, m)
    await console.until(r"HVTEST: dhcp eth0 10\.84\.0\.10/")
    await console.until(r"HVTEST: ping 192\.0\.2\.1 ok")  # the far side has no route back: masqueraded
    assert not uplink.ping("10.84.0.10")


async def test_a_restarted_daemon_takes_everything_back_while_guests_keep_talking(host):
    compute, network, _ = host
    macs = ("52:54:00:85:00:0a", "52:54:00:85:00:0b")
    await network.create_network(spec("g85", "cimidg85", "10.85.0.0/24", reservations=(
        Reservation(macs[0], "10.85.0.10"), Reservation(macs[1], "10.85.0.11"))))
    await network.start_network("g85")
    a, b = await asyncio.gather(boot(host, "net-ra", [InterfaceSpec(macs[0], "cimidg85")], peers=("10.85.0.11",)),
                                boot(host, "net-rb", [InterfaceSpec(macs[1], "cimidg85")], peers=("10.85.0.10",)))
    consoles = [Console(compute, m) for m in (a, b)]
    await consoles[0].until(r"HVTEST: ping 10\.85\.0\.11 ok")
    await consoles[1].until(r"HVTEST: ping 10\.85\.0\.10 ok")
    serving = network._daemons["g85"].pid
    # The daemon restarts: a new driver adopts what the store knows (every network of this module).
    await network.close()
    restarted = BridgeNetwork(network_config(network))
    await restarted.open()
    alarms = []
    restarted.watch(lambda network_id, message: alarms.append(network_id))
    try:
        await restarted.adopt([(s, n in network._running) for n, s in network._specs.items()], {}, {})
        assert restarted._daemons["g85"].pid == serving  # DHCP was never interrupted
        assert await restarted.network("g85") == {"bridge": "present", "link": "up", "dhcp": "present",
                                                  "rules": "present"}
        os.kill(serving, 9)
        for _ in range(100):
            if "g85" in alarms:
                break
            await asyncio.sleep(0.05)
        assert "g85" in alarms and restarted._daemons["g85"].alive()
        for console, peer in zip(consoles, ("10.85.0.11", "10.85.0.10"), strict=True):
            console.mark()
            await console.until(f"HVTEST: ping {re.escape(peer)} ok")
    finally:
        await restarted.close()


def network_config(driver: BridgeNetwork):
    cfg = cimid_config.load(None, profile="host", state_dir=driver.run_dir.parent)
    cfg.sections["network"]["driver"] = "bridge"
    return cfg
