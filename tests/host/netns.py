"""What the network host tests share: clients in namespaces of their own (the operator's end of a port,
or a guest's stand-in), an uplink stand-in, and the check that the tests run in a test-made namespace."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
import subprocess
import uuid

import pytest
from cimid_bridge import links
from pyroute2 import IPRoute, netns

from cimid import config as cimid_config
from cimid.hookspecs import NetworkSpec

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
def in_test_netns():
    if not in_named_netns():
        pytest.fail("the network tests make bridges with addresses: run them inside a test network namespace "
                    "(`make test`, or `ip netns exec cimid-test .venv/bin/pytest ...` after setup-host.sh)")


def libvirtd_in_our_netns() -> bool:
    """A libvirtd runs in this network namespace (its taps could never join our bridges otherwise)."""
    ours = os.readlink("/proc/self/ns/net")
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "libvirtd" \
                    and os.readlink(proc / "ns/net") == ours:
                return True
        except OSError:
            continue
    return False


class Client:
    """A namespace holding the operator's end of a port: `run(cmd...)` runs there."""

    def __init__(self, name: str, ifname: str):
        self.name, self.ifname = name, ifname

    def run(self, *cmd: str, check=True, timeout=30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def ping(self, address: str) -> bool:
        """Any answer to three echo requests (one lost to ARP does not decide); see `reach`."""
        return reach((self, address)) == [True]

    def dhcp(self, script_dir, tries: int = 6) -> str | None:
        """The address udhcpc got (`tries` requests, one a second), or None."""
        script = script_dir / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        self.run("busybox", "udhcpc", "-i", self.ifname, "-q", "-n", "-t", str(tries), "-T", "1", "-O", "mtu",
                 "-s", str(script), check=False)
        for addr in self.run("ip", "-4", "-o", "addr", "show", "dev", self.ifname).stdout.split():
            if "/" in addr and addr[0].isdigit():
                return addr.split("/")[0]
        return None


# Three echo requests 0.2 s apart, then at most 1 s for an answer. busybox's ping ignores -w once -c is
# given and waits -W (10 s by default) after the last request: without -W 1 every expected failure
# costs 10 s.
PING = ("busybox", "ping", "-c", "3", "-i", "0.2", "-W", "1", "-w", "2")


def reach(*checks: tuple[Client, str]) -> list[bool]:
    """Whether each (client, address) answers a ping; all pinged at once, so that several expected
    failures cost one deadline."""
    pings = [subprocess.Popen(["ip", "netns", "exec", client.name, *PING, address], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for client, address in checks]
    return [ping.wait(timeout=30) == 0 for ping in pings]


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




def config(state_dir):
    cfg = cimid_config.load(None, profile="host", state_dir=state_dir)
    cfg.sections["network"]["driver"] = "bridge"
    return cfg


def spec(network_id, bridge, cidr, **kw) -> NetworkSpec:
    gateway = cidr.rsplit(".", 1)[0] + ".1"
    return NetworkSpec(network_id=network_id, bridge=bridge, cidr=cidr, gateway=gateway, **kw)
