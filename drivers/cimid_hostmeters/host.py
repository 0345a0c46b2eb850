"""The host's figures through psutil, read on a worker thread (psutil reads /proc and /sys files)."""

from __future__ import annotations

import asyncio
import os
import time

from cimid.hookspecs import HOST

KIB = 1024
LOOPBACK = "lo"  # traffic to itself is not bandwidth


class HostStats:
    """A MeterSource of the host: target id ""."""

    name = "psutil"
    kind = HOST
    aspects = ("cpu", "memory", "disk", "diskIO", "inputBandwidth", "outputBandwidth")

    def __init__(self, disk_path: str):
        self.disk_path = disk_path
        self._previous: tuple[float, dict[str, float]] | None = None

    async def read(self) -> dict[str, dict[str, float]]:
        return {"": await asyncio.to_thread(self._read)}

    def _read(self) -> dict[str, float]:
        import psutil  # here, on the sampler's thread: a start-up that answers first need not load it

        stamp = time.monotonic()
        memory = psutil.virtual_memory()
        values = {"memory": (memory.total - memory.available) / KIB,
                  "disk": psutil.disk_usage(_existing(self.disk_path)).used / KIB}
        cpu = psutil.cpu_times()
        counters = {"busy": sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0), "all": sum(cpu)}
        disk = psutil.disk_io_counters()
        if disk is not None:  # None where the kernel exposes no disk statistics (some containers)
            counters["io"] = float(disk.read_bytes + disk.write_bytes)
        nics = psutil.net_io_counters(pernic=True)
        counters["rx"] = float(sum(n.bytes_recv for name, n in nics.items() if name != LOOPBACK))
        counters["tx"] = float(sum(n.bytes_sent for name, n in nics.items() if name != LOOPBACK))
        if self._previous is not None and stamp > self._previous[0]:
            then, before = self._previous
            seconds = stamp - then
            spent = counters["all"] - before["all"]
            if spent > 0:  # CPU seconds of every core: busy over all is the share of the whole host
                values["cpu"] = max(0.0, min(100.0, 100 * (counters["busy"] - before["busy"]) / spent))
            for aspect, counter in (("diskIO", "io"), ("inputBandwidth", "rx"), ("outputBandwidth", "tx")):
                if counter in counters and counter in before and counters[counter] >= before[counter]:
                    values[aspect] = (counters[counter] - before[counter]) / seconds
        self._previous = (stamp, counters)
        return values

    async def close(self) -> None:
        """Nothing held open."""


def _existing(path: str) -> str:
    """The path, or its nearest existing parent (the state directory may not exist yet)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path
