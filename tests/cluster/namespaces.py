"""The network of the federation tests (design study §6.1): three "hosts" and a hub, each a network
namespace this test run makes, joined by veths on a bridge that lives in the hub. Every address exists
only inside those namespaces:

- host i (i = 1..3): eth0 with 10.210.0.i (clients: etcd's client port, the cimid node) and
  10.210.1.i (etcd's peer traffic only, so a blackhole route can cut a member off from its peers
  while clients still reach it: the minority partition of §3.3);
- the hub: the bridge with 10.210.0.254, where the fronts listen and the tests' requests come from.

Faults: `link_down(i)` on the hub side cuts host i off entirely; `isolate_peers(i)` blackholes the
other members' peer addresses in host i. Names carry a random tag, so runs side by side never meet."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import uuid

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(netns: str):
    """Run the calling thread (only it) in `netns`: sockets it opens meanwhile live there."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/run/netns/{netns}")
        try:
            yield
        finally:
            if _libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)


def in_netns(netns: str | None, command: list[str]) -> list[str]:
    """`command` run inside `netns` (as is with None); `ip netns exec` execs it, so its PID is the command's."""
    return ["ip", "netns", "exec", netns, *command] if netns else command


class Topology:
    HUB_ADDRESS = "10.210.0.254"

    def __init__(self, hosts: int = 3):
        tag = uuid.uuid4().hex[:6]
        self.hub = f"cf{tag}hub"
        self.hosts = [f"cf{tag}h{i}" for i in range(1, hosts + 1)]
        self._hub_links = [f"cf{tag}v{i}" for i in range(1, hosts + 1)]
        self._made: list[str] = []

    @staticmethod
    def client_address(i: int) -> str:
        return f"10.210.0.{i}"

    @staticmethod
    def peer_address(i: int) -> str:
        return f"10.210.1.{i}"

    def host(self, i: int) -> str:
        return self.hosts[i - 1]

    def up(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the federation tests make network namespaces: run them as root (`make test` does)")
        try:
            self._make()
        except BaseException:
            self.down()
            raise

    def _make(self) -> None:
        for netns in (self.hub, *self.hosts):
            _ip("netns", "add", netns)
            self._made.append(netns)
            _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{self.HUB_ADDRESS}/24", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (netns, link) in enumerate(zip(self.hosts, self._hub_links), start=1):
            _ip("-n", self.hub, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("-n", self.hub, "link", "set", link, "master", "br0")
            _ip("-n", self.hub, "link", "set", link, "up")
            _ip("-n", netns, "addr", "add", f"{self.client_address(i)}/24", "dev", "eth0")
            _ip("-n", netns, "addr", "add", f"{self.peer_address(i)}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")

    def down(self) -> None:
        """Remove the namespaces (their links and addresses go with them); the processes in them are
        stopped by PID before this, by whoever started them."""
        for netns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        self._made = []

    # ------------------------------------------------------------------ faults

    def link_down(self, i: int) -> None:
        _ip("-n", self.hub, "link", "set", self._hub_links[i - 1], "down")

    def link_up(self, i: int) -> None:
        _ip("-n", self.hub, "link", "set", self._hub_links[i - 1], "up")

    def isolate_peers(self, i: int) -> None:
        """Host i's packets to the other hosts' peer addresses go nowhere: its etcd member loses its
        peers both ways (their connections need its answers), its clients still reach it."""
        for other in range(1, len(self.hosts) + 1):
            if other != i:
                _ip("-n", self.host(i), "route", "add", "blackhole", f"{self.peer_address(other)}/32")

    def heal_peers(self, i: int) -> None:
        for other in range(1, len(self.hosts) + 1):
            if other != i:
                subprocess.run(["ip", "-n", self.host(i), "route", "del", "blackhole",
                                f"{self.peer_address(other)}/32"], capture_output=True, timeout=30)
