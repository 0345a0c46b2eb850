"""Networks in memory: the sandbox's network driver. It checks what a bridge driver must check too:
a valid subnet and MTU, and no subnet overlapping another network's."""

from __future__ import annotations

import ipaddress

from cimid.errors import DriverError

MTU_RANGE = range(68, 65536)  # 68: the IPv4 minimum; 65535: the largest a link can state


class MemoryNetwork:
    name = "memory"

    def __init__(self):
        self._networks: dict[str, dict] = {}

    async def open(self) -> None:
        """Always ready."""

    async def close(self) -> None:
        self._networks.clear()

    async def health(self) -> dict[str, str]:
        return {"networks": f"{len(self._networks)} in memory"}

    async def create_network(self, network_id: str, options: dict) -> None:
        if network_id in self._networks:
            raise DriverError(f"there is already a network {network_id}")
        unknown = set(options) - {"cidr", "mtu"}
        if unknown:
            raise DriverError(f"unknown network option(s): {', '.join(sorted(unknown))}")
        subnet = None
        if options.get("cidr") is not None:
            try:
                subnet = ipaddress.ip_network(options["cidr"])
            except ValueError as exc:
                raise DriverError(f"cidr: {exc}") from None
            for other_id, other in self._networks.items():
                if other["subnet"] is not None and other["subnet"].version == subnet.version \
                        and other["subnet"].overlaps(subnet):
                    raise DriverError(f"{subnet} overlaps {other['subnet']} of network {other_id}")
        mtu = options.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or mtu not in MTU_RANGE):
            raise DriverError(f"mtu must be an integer from {MTU_RANGE.start} to {MTU_RANGE.stop - 1}, not {mtu!r}")
        self._networks[network_id] = {"subnet": subnet, "mtu": mtu}

    async def network(self, network_id: str) -> dict | None:
        found = self._networks.get(network_id)
        if found is None:
            return None
        return {"cidr": str(found["subnet"]) if found["subnet"] else None, "mtu": found["mtu"]}

    async def delete_network(self, network_id: str) -> None:
        self._networks.pop(network_id, None)
