"""The sandbox catalogue: a few MachineConfigurations, a MachineImage and a MachineTemplate, made once."""

from __future__ import annotations

from ..store.db import Row, Store
from .hrefs import now

GIB_IN_KB = 1024 * 1024

CONFIGURATIONS = [
    ("tiny", "1 vCPU, 256 MiB", 1, 256 * 1024, 1),
    ("small", "1 vCPU, 1 GiB, 10 GiB disk", 1, 1024 * 1024, 10),
    ("medium", "2 vCPUs, 4 GiB, 20 GiB disk", 2, 4 * 1024 * 1024, 20),
    ("large", "4 vCPUs, 8 GiB, 40 GiB disk", 4, 8 * 1024 * 1024, 40),
]


async def seed_catalogue(store: Store) -> None:
    async with store.write() as tx:
        if await tx.get("Meta", "catalogue-seeded"):
            return  # seeded once; what the user deleted since stays deleted
        stamp = now()
        for name, description, cpu, memory, disk_gib in CONFIGURATIONS:
            await tx.insert(Row("MachineConfiguration", name, "", {
                "name": name, "description": description, "created": stamp, "updated": stamp,
                "cpu": cpu, "memory": memory, "cpuArch": "x86_64",
                "disks": [{"capacity": disk_gib * GIB_IN_KB, "format": "raw"}],
            }, public=True))
        await tx.insert(Row("MachineImage", "tiny-linux", "", {
            "name": "tiny-linux", "description": "A sandbox image (the sandbox boots nothing real)",
            "created": stamp, "updated": stamp, "state": "AVAILABLE", "type": "IMAGE",
            "imageLocation": "urn:cimid:sandbox:tiny-linux",
        }, public=True))
        await tx.insert(Row("MachineTemplate", "small-tiny-linux", "", {
            "name": "small-tiny-linux", "description": "small configuration, tiny-linux image, started",
            "created": stamp, "updated": stamp, "initialState": "STARTED",
            "machineConfig": {"href": "machineConfigs/small"},
            "machineImage": {"href": "machineImages/tiny-linux"},
        }, public=True))
        await tx.insert(Row("Meta", "catalogue-seeded", "", {"created": stamp}))
