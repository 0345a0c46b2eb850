"""Volumes in memory: the sandbox's storage driver. A volume is its size and format within a pool of
fixed capacity (`storage.memory_capacity_gb`), so running out of space is an error here as on a disk."""

from __future__ import annotations

from cimid.errors import DriverError

FORMATS = ("raw", "qcow2")


class MemoryStorage:
    name = "memory"

    def __init__(self, capacity_kb: int):
        self.capacity_kb = capacity_kb
        self._volumes: dict[str, dict] = {}

    @property
    def used_kb(self) -> int:
        return sum(v["capacity_kb"] for v in self._volumes.values())

    async def open(self) -> None:
        """Always ready."""

    async def close(self) -> None:
        self._volumes.clear()

    async def health(self) -> dict[str, str]:
        return {"volumes": f"{len(self._volumes)} in memory, {self.used_kb} of {self.capacity_kb} KiB used"}

    async def create_volume(self, volume_id: str, capacity_kb: int, fmt: str) -> None:
        if volume_id in self._volumes:
            raise DriverError(f"there is already a volume {volume_id}")
        if fmt not in FORMATS:
            raise DriverError(f"volume format '{fmt}' is not one of {', '.join(FORMATS)}")
        if capacity_kb <= 0:
            raise DriverError(f"a volume needs a positive capacity, not {capacity_kb} KiB")
        free = self.capacity_kb - self.used_kb
        if capacity_kb > free:
            raise DriverError(f"no room for {capacity_kb} KiB: {free} of {self.capacity_kb} KiB free")
        self._volumes[volume_id] = {"capacity_kb": capacity_kb, "format": fmt}

    async def volume(self, volume_id: str) -> dict | None:
        found = self._volumes.get(volume_id)
        return dict(found) if found else None

    async def delete_volume(self, volume_id: str) -> None:
        self._volumes.pop(volume_id, None)
