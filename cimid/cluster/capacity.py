"""What a node publishes about itself for placement: the host's CPUs and memory, what its machines and
volumes take, and the free space of each storage pool. Read from the store and the drivers, never
from the hypervisor on the event loop."""

from __future__ import annotations

import os

import psutil

from ..errors import DriverError
from ..service.provider import Provider


async def node_capacity(provider: Provider) -> dict:
    machines, used = await provider.store.totals("Machine", ("cpu", "memory"))
    volumes, _ = await provider.store.totals("Volume")
    networks, _ = await provider.store.totals("Network")
    pools = {}
    storage = provider.drivers.storage
    for name, pool in (storage.pools.items() if storage is not None else ()):
        try:
            await provider.drivers.open("storage")
            space = await pool.space()
        except DriverError:  # a pool that does not answer offers nothing now
            space = {"total_kb": 0, "free_kb": 0}
        pools[name] = {"total_kb": space["total_kb"], "free_kb": space["free_kb"]}
    return {"cpu": os.cpu_count() or 1, "memory_kb": psutil.virtual_memory().total // 1024,
            "machines": machines, "machine_cpu": used["cpu"], "machine_memory_kb": used["memory"],
            "volumes": volumes, "networks": networks, "pools": pools}


async def node_usage(provider: Provider, cpu_ratio: float, memory_ratio: float,
                     machine_ids: list[str]) -> tuple[dict, set[str]]:
    """The node's figures in the placement ledger: allocatable cpu and memory (the host's, times the
    allocation ratios) and what its machines take, from its own store; and which of `machine_ids` (those
    fronts recorded as just made here) the store holds, so counted in those figures."""
    machines, used = await provider.store.totals("Machine", ("cpu", "memory"))
    present = {id for id in machine_ids if await provider.store.get("Machine", id) is not None}
    return ({"cpu": int((os.cpu_count() or 1) * cpu_ratio),
             "memory_kb": int(psutil.virtual_memory().total // 1024 * memory_ratio),
             "used_cpu": used["cpu"], "used_memory_kb": used["memory"], "machines": machines}, present)
