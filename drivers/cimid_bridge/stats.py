"""The bridge driver's MeterSource: each started Network's traffic through the host, from its bridge
link's byte counters (one netlink dump per sampling round)."""

from __future__ import annotations

import asyncio
import time

from cimid.hookspecs import NETWORK

from . import links
from .driver import BridgeNetwork


class BridgeTraffic:
    """inputBandwidth: what the host sends into the network (the bridge's transmit counter); outputBandwidth:
    what its guests send to or through the host (its receive counter). Traffic between two guests of one
    network is switched by the bridge without passing its own link, so it is not counted."""

    kind = NETWORK
    aspects = ("inputBandwidth", "outputBandwidth")

    def __init__(self, driver: BridgeNetwork):
        self.driver = driver
        self.name = "bridge-traffic"
        self._previous: tuple[float, dict[str, tuple[int, int]]] | None = None  # (time, id -> (rx, tx))

    async def read(self) -> dict[str, dict[str, float]]:
        bridges = self.driver.started_bridges()
        counters = {}
        if bridges:
            found = await asyncio.to_thread(links.byte_counters, set(bridges))
            counters = {bridges[name]: pair for name, pair in found.items()}
        stamp = time.monotonic()
        readings: dict[str, dict[str, float]] = {}
        if self._previous is not None and stamp > self._previous[0]:
            seconds = stamp - self._previous[0]
            for network_id, (received, sent) in counters.items():
                before = self._previous[1].get(network_id)
                if before is not None and received >= before[0] and sent >= before[1]:  # else: a new link
                    readings[network_id] = {"inputBandwidth": (sent - before[1]) / seconds,
                                            "outputBandwidth": (received - before[0]) / seconds}
        self._previous = (stamp, counters)
        return readings

    async def close(self) -> None:
        """Nothing of its own to release."""
