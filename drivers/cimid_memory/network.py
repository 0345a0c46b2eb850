"""Networks in memory: the sandbox's network driver, the whole NetworkDriver contract with no root.

It keeps what a bridge driver would make (bridges, their DHCP servers' reservations, operator ports,
forwarding groups) and checks what a bridge driver must check too: a valid bridge name not taken by a link
cimid did not make (`foreign_links`, the fake host's other links), a valid subnet overlapping no other
network's, an MTU a link takes. A DHCP client is played by `lease`: a guest asking for an address gets its
reservation, as dnsmasq answers it."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import replace

from cimid.errors import DriverError
from cimid.hookspecs import NETWORK, NetworkSpec, Reservation

MTU_RANGE = range(68, 65536)  # 68: the IPv4 minimum; 65535: the largest a bridge takes
MAX_LINK_NAME = 15  # IFNAMSIZ less its NUL


class MemoryNetwork:
    name = "memory"

    def __init__(self, foreign_links: tuple[str, ...] = ("lo", "eth0")):
        self.foreign_links = set(foreign_links)  # links of the fake host that cimid did not make
        self.foreign_subnets = {"127.0.0.0/8": "lo"}  # their addresses: {subnet: link}
        self._networks: dict[str, dict] = {}  # id -> {"spec", "up", "leases"}
        self._ports: dict[str, dict] = {}  # port id -> {"network", "peer"}
        self._groups: dict[str, tuple[str, ...]] = {}
        self._callback: Callable[[str, str], None] | None = None

    async def open(self) -> None:
        """Always ready."""

    async def close(self) -> None:
        """The networks outlive the daemon on a real host; here they live as long as the process."""

    async def health(self) -> dict[str, str]:
        return {"networks": f"{len(self._networks)} in memory", "ports": str(len(self._ports)),
                "forwarding groups": str(len(self._groups))}

    def watch(self, callback: Callable[[str, str], None]) -> None:
        self._callback = callback

    async def adopt(self, networks: list[tuple[NetworkSpec, bool]], ports: dict[str, str],
                    groups: dict[str, tuple[str, ...]]) -> None:
        """The process started empty: rebuild everything stored."""
        for spec, started in networks:
            if spec.network_id not in self._networks:
                await self.create_network(spec)
            self._networks[spec.network_id]["up"] = started
        for port_id, network_id in ports.items():
            if port_id not in self._ports and network_id in self._networks:
                await self.create_port(network_id, port_id)
        for group_id, members in groups.items():
            await self.set_forwarding_group(group_id, members)

    # ---------------------------------------------------------------- networks

    async def host_subnets(self) -> dict[str, str]:
        return dict(self.foreign_subnets)

    async def create_network(self, spec: NetworkSpec) -> None:
        if spec.network_id in self._networks:
            raise DriverError(f"there is already a network {spec.network_id}")
        if not spec.bridge or len(spec.bridge) > MAX_LINK_NAME or "/" in spec.bridge or " " in spec.bridge:
            raise DriverError(f"'{spec.bridge}' is not a valid link name (at most {MAX_LINK_NAME} characters)")
        if spec.bridge in self.foreign_links:
            raise DriverError(f"the host already has a link named {spec.bridge} that cimid did not make")
        if any(n["spec"].bridge == spec.bridge for n in self._networks.values()):
            raise DriverError(f"the bridge {spec.bridge} belongs to another network")
        if spec.mtu is not None and spec.mtu not in MTU_RANGE:
            raise DriverError(f"mtu must be from {MTU_RANGE.start} to {MTU_RANGE.stop - 1}, not {spec.mtu}")
        if spec.network_type not in ("PRIVATE", "PUBLIC"):
            raise DriverError(f"unknown network type {spec.network_type}")
        if spec.cidr is not None:
            try:
                subnet = ipaddress.ip_network(spec.cidr)
            except ValueError as exc:
                raise DriverError(f"cidr: {exc}") from None
            for other_id, other in self._networks.items():
                theirs = other["spec"].cidr and ipaddress.ip_network(other["spec"].cidr)
                if theirs and theirs.version == subnet.version and theirs.overlaps(subnet):
                    raise DriverError(f"{subnet} overlaps {theirs} of network {other_id}")
            if spec.gateway is not None and ipaddress.ip_address(spec.gateway) not in subnet:
                raise DriverError(f"the gateway {spec.gateway} is outside {subnet}")
        self._networks[spec.network_id] = {"spec": spec, "up": False, "leases": {}, "bytes": [0, 0]}

    def _network(self, network_id: str) -> dict:
        found = self._networks.get(network_id)
        if found is None:
            raise DriverError(f"there is no network {network_id}")
        return found

    async def start_network(self, network_id: str) -> None:
        self._network(network_id)["up"] = True

    async def stop_network(self, network_id: str) -> None:
        found = self._network(network_id)
        found["up"] = False
        found["leases"].clear()  # dnsmasq stopped: its leases go with it

    async def delete_network(self, network_id: str) -> None:
        self._networks.pop(network_id, None)
        for port_id in [p for p, port in self._ports.items() if port["network"] == network_id]:
            del self._ports[port_id]
        for group_id, members in self._groups.items():  # its forward rules go with it
            self._groups[group_id] = tuple(m for m in members if m != network_id)

    async def network(self, network_id: str) -> dict[str, str] | None:
        found = self._networks.get(network_id)
        if found is None:
            return None
        spec = found["spec"]
        serves_dhcp = spec.dhcp and spec.cidr is not None
        return {"bridge": "present", "link": "up" if found["up"] else "down",
                "dhcp": ("present" if found["up"] else "missing") if serves_dhcp else "off",
                "rules": "present" if spec.network_type == "PUBLIC" and not spec.bridged else "none"}

    def spec(self, network_id: str) -> NetworkSpec | None:
        """The spec the network was made with, reservations as now (for the fast tier's checks)."""
        found = self._networks.get(network_id)
        return found["spec"] if found else None

    # ---------------------------------------------------------------- addresses

    async def set_reservations(self, network_id: str, reservations: tuple[Reservation, ...]) -> None:
        found = self._network(network_id)
        found["spec"] = replace(found["spec"], reservations=tuple(reservations))
        kept = {r.mac for r in reservations}
        found["leases"] = {mac: ip for mac, ip in found["leases"].items() if mac in kept}

    async def leases(self, network_id: str) -> dict[str, str]:
        return dict(self._network(network_id)["leases"])

    def lease(self, network_id: str, mac: str) -> str | None:
        """A guest's DHCP request: its reserved address while the network is up, else nothing."""
        found = self._network(network_id)
        if not found["up"]:
            return None
        for reservation in found["spec"].reservations:
            if reservation.mac == mac:
                found["leases"][mac] = reservation.ip
                return reservation.ip
        return None

    def carry(self, network_id: str, received: int, sent: int) -> None:
        """Traffic through the fake host's bridge of a started network: `received` bytes from its guests,
        `sent` to them (what MemoryTraffic measures, as BridgeTraffic reads a bridge's counters)."""
        found = self._network(network_id)
        if not found["up"]:
            raise DriverError(f"network {network_id} is down: its bridge carries nothing")
        found["bytes"][0] += received
        found["bytes"][1] += sent

    def byte_counters(self) -> dict[str, tuple[int, int]]:
        """{network id: (bytes received, bytes sent)} of the started networks."""
        return {n: (found["bytes"][0], found["bytes"][1]) for n, found in self._networks.items() if found["up"]}

    def dhcp_died(self, network_id: str) -> None:
        """The fake host's dnsmasq died: the driver restarts it and says so, as a bridge driver's supervisor."""
        if self._callback is not None and network_id in self._networks:
            self._callback(network_id, "dnsmasq died and was restarted")

    # ---------------------------------------------------------------- ports

    async def create_port(self, network_id: str, port_id: str) -> dict[str, str]:
        self._network(network_id)
        if port_id in self._ports:
            raise DriverError(f"there is already a port {port_id}")
        peer = "cimidp" + port_id[:9]
        self._ports[port_id] = {"network": network_id, "peer": peer}
        return {"peer": peer}

    async def delete_port(self, port_id: str) -> None:
        self._ports.pop(port_id, None)

    def ports(self) -> dict[str, str]:
        """port id -> network id (for the fast tier's checks)."""
        return {port_id: port["network"] for port_id, port in self._ports.items()}

    # ---------------------------------------------------------------- forwarding

    async def set_forwarding_group(self, group_id: str, network_ids: tuple[str, ...]) -> None:
        for network_id in network_ids:
            self._network(network_id)
        self._groups[group_id] = tuple(network_ids)

    async def delete_forwarding_group(self, group_id: str) -> None:
        self._groups.pop(group_id, None)

    def routes(self, a: str, b: str) -> bool:
        """Whether traffic may pass from network a to network b: both in one group."""
        return any(a in members and b in members for members in self._groups.values())

    async def forget(self) -> None:
        self._networks.clear()
        self._ports.clear()
        self._groups.clear()


class MemoryTraffic:
    """The sandbox's twin of cimid_bridge.BridgeTraffic: each started network's inputBandwidth (what the
    host sent into it) and outputBandwidth (what its guests sent to the host), as rates between readings."""

    kind = NETWORK
    aspects = ("inputBandwidth", "outputBandwidth")
    name = "memory-traffic"

    def __init__(self, driver: MemoryNetwork):
        self.driver = driver
        self._previous: tuple[float, dict[str, tuple[int, int]]] | None = None  # (time, id -> (rx, tx))

    async def read(self) -> dict[str, dict[str, float]]:
        counters, stamp = self.driver.byte_counters(), time.monotonic()
        readings: dict[str, dict[str, float]] = {}
        if self._previous is not None and stamp > self._previous[0]:
            seconds = stamp - self._previous[0]
            for network_id, (received, sent) in counters.items():
                before = self._previous[1].get(network_id)
                if before is not None:
                    readings[network_id] = {"inputBandwidth": (sent - before[1]) / seconds,
                                            "outputBandwidth": (received - before[0]) / seconds}
        self._previous = (stamp, counters)
        return readings

    async def close(self) -> None:
        """Nothing of its own to release."""
