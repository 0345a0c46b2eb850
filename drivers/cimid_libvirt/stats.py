"""Machine and Volume statistics for Meters: one `getAllDomainStats` call per reading for every machine at
once (and one for the volumes' block devices), through the compute driver's own connection and threads.

Counters (CPU time, bytes read, written, received, sent) become rates over the time since the previous
reading; levels (memory, disk allocation) are reported as read.
"""

from __future__ import annotations

import logging
import time

import libvirt

from cimid.errors import DriverError
from cimid.hookspecs import MACHINE, VOLUME

from .domains import DOMAIN_PREFIX, LibvirtDomains

log = logging.getLogger("cimid.stats")
KB = 1024
_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON
           | libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)
# Only machines that run have statistics worth a sample; a paused one still holds its memory.
_ACTIVE = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PAUSED


def _summed(record: dict, prefix: str, suffixes: tuple[str, ...]) -> float | None:
    """The sum of `{prefix}.{n}.{suffix}` over every device n (block.0.rd.bytes + block.1.rd.bytes ...)."""
    count = record.get(f"{prefix}.count")
    if count is None:
        return None
    return float(sum(record.get(f"{prefix}.{n}.{suffix}", 0) for n in range(count) for suffix in suffixes))


class MachineStats:
    """A MeterSource of every machine the compute driver runs."""

    kind = MACHINE
    aspects = ("cpu", "memory", "disk", "diskIO", "inputBandwidth", "outputBandwidth")

    def __init__(self, compute: LibvirtDomains):
        self.compute = compute
        self.name = f"{compute.name}-stats"
        # machine id -> (monotonic time, {counter: value}) of the previous reading
        self._previous: dict[str, tuple[float, dict[str, float]]] = {}

    async def read(self) -> dict[str, dict[str, float]]:
        await self.compute.open()  # reconnects if libvirt went away; a no-op when connected
        records = await self.compute._call(self._bulk)
        stamp = time.monotonic()
        readings, previous = {}, {}
        for machine_id, record in records.items():
            counters = {"cpu_ns": record.get("cpu.time"),
                        "io": _summed(record, "block", ("rd.bytes", "wr.bytes")),
                        "rx": _summed(record, "net", ("rx.bytes",)),
                        "tx": _summed(record, "net", ("tx.bytes",))}
            counters = {k: float(v) for k, v in counters.items() if v is not None}
            values: dict[str, float] = {}
            memory = record.get("balloon.rss", record.get("balloon.current"))
            if memory is not None:
                values["memory"] = float(memory)  # KiB already
            # What the disks take on the host: `physical` is a file's size there; `allocation` is a qcow2's
            # highest written offset, 0 until the guest writes, so it is only the fallback.
            taken = _summed(record, "block", ("physical",)) or _summed(record, "block", ("allocation",))
            if taken is not None:
                values["disk"] = taken / KB
            before = self._previous.get(machine_id)
            if before is not None and stamp > before[0]:
                seconds = stamp - before[0]
                vcpus = record.get("vcpu.current") or 1
                rates = {"cpu": ("cpu_ns", 100 / (1e9 * vcpus)), "diskIO": ("io", 1.0),
                         "inputBandwidth": ("rx", 1.0), "outputBandwidth": ("tx", 1.0)}
                for aspect, (counter, scale) in rates.items():
                    if counter in counters and counter in before[1]:
                        # a counter that went back (the machine restarted) gives no rate this time
                        delta = counters[counter] - before[1][counter]
                        if delta >= 0:
                            values[aspect] = delta * scale / seconds
                if "cpu" in values:  # the counter and the clock are read apart: a busy guest can show 100.3
                    values["cpu"] = min(values["cpu"], 100.0)
            previous[machine_id] = (stamp, counters)
            if values:
                readings[machine_id] = values
        self._previous = previous  # machines that stopped are forgotten: their counters start again
        return readings

    def _bulk(self) -> dict[str, dict]:
        stats = self.compute._connection().getAllDomainStats(_GROUPS, _ACTIVE)
        return {dom.name()[len(DOMAIN_PREFIX):]: self._complete(dom, record)
                for dom, record in stats if dom.name().startswith(DOMAIN_PREFIX)}

    def _complete(self, dom: libvirt.virDomain, record: dict) -> dict:
        """What the bulk call answered; a subclass fills in what its hypervisor leaves out."""
        return record

    async def close(self) -> None:
        """The connection is the compute driver's, closed with it."""


class SandboxMachineStats(MachineStats):
    """libvirt's test driver answers the bulk call with each domain's state only, so the sandbox fills in
    CPU time, vCPUs and memory from virDomainGetInfo, an in-process call there (no RPC). On a real
    hypervisor the bulk record has them all and nothing is asked per domain."""

    def _complete(self, dom: libvirt.virDomain, record: dict) -> dict:
        if "cpu.time" not in record:
            _state, _max_memory, memory, vcpus, cpu_time = dom.info()
            record = {**record, "cpu.time": cpu_time, "balloon.current": memory, "vcpu.current": vcpus}
        return record


class VolumeStats:
    """A MeterSource of every Volume of the storage pools: the space each takes in its pool (the pool's own
    `usage`, one call per pool) and, while attached to running machines, its I/O from one bulk
    `getAllDomainStats` call (block devices only), matched to the volume by the path the pool gives a
    hypervisor."""

    kind = VOLUME
    aspects = ("disk", "diskIO")

    def __init__(self, compute: LibvirtDomains, pools: dict):
        self.compute = compute
        self.pools = pools
        self.name = f"{compute.name}-volume-stats"
        self._paths: dict[str, str] = {}  # volume id -> its path on the host (fixed for a volume's life)
        self._previous: tuple[float, dict[str, float]] | None = None  # (time, volume id -> bytes read+written)

    async def read(self) -> dict[str, dict[str, float]]:
        readings: dict[str, dict[str, float]] = {}
        for name, pool in self.pools.items():
            if not hasattr(pool, "usage"):  # a third-party pool written before StorageDriver.usage existed
                continue
            try:
                taken = await pool.usage()
            except DriverError as exc:  # one pool that cannot answer leaves the others' volumes measured
                log.warning("storage pool '%s' did not say what its volumes take: %s", name, exc)
                continue
            for volume_id, taken_kb in taken.items():
                readings[volume_id] = {"disk": float(taken_kb)}
                if volume_id not in self._paths:
                    try:
                        self._paths[volume_id] = (await pool.attachment(volume_id))["path"]
                    except DriverError:
                        pass  # deleted since `usage` listed it
        self._paths = {v: p for v, p in self._paths.items() if v in readings}  # deleted ones are forgotten
        if not self._paths:
            return readings  # no volume: no hypervisor call
        await self.compute.open()
        by_path = {path: volume_id for volume_id, path in self._paths.items()}
        records = await self.compute._call(self._bulk)
        stamp = time.monotonic()
        counters: dict[str, float] = {}
        for record in records:
            for n in range(record.get("block.count", 0)):
                volume_id = by_path.get(record.get(f"block.{n}.path"))
                if volume_id is not None:  # a shareable volume's I/O is summed over its machines
                    counters[volume_id] = counters.get(volume_id, 0.0) + record.get(f"block.{n}.rd.bytes", 0) \
                        + record.get(f"block.{n}.wr.bytes", 0)
        if self._previous is not None and stamp > self._previous[0]:
            seconds = stamp - self._previous[0]
            for volume_id, total in counters.items():
                before = self._previous[1].get(volume_id)
                if before is not None and total >= before and volume_id in readings:
                    readings[volume_id]["diskIO"] = (total - before) / seconds
        self._previous = (stamp, counters)  # a volume detached (or its machine stopped) starts again
        return readings

    def _bulk(self) -> list[dict]:
        stats = self.compute._connection().getAllDomainStats(libvirt.VIR_DOMAIN_STATS_BLOCK, _ACTIVE)
        return [record for dom, record in stats if dom.name().startswith(DOMAIN_PREFIX)]

    async def close(self) -> None:
        """The connection is the compute driver's, closed with it."""
