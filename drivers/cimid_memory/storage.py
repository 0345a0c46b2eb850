"""Volumes in memory: the sandbox's storage pool. A volume is its size and a few bytes of "data" (what a
snapshot keeps and a restore brings back), within a pool of fixed capacity (`capacity_gb`), so running out
of space is an error here as on a disk. Images count against the pool like volumes."""

from __future__ import annotations

from cimid.errors import DriverError


class MemoryStorage:
    name = "memory"

    def __init__(self, capacity_kb: int, shareable: bool = False):
        self.capacity_kb = capacity_kb
        self.shareable = shareable
        self._volumes: dict[str, dict] = {}
        self._images: dict[str, dict] = {}

    @property
    def used_kb(self) -> int:
        return sum(v["capacity_kb"] for v in (*self._volumes.values(), *self._images.values()))

    async def open(self) -> None:
        """Always ready."""

    async def close(self) -> None:
        """Volumes stay while the process lives (the Volume rows outlive a driver reopen)."""

    async def health(self) -> dict[str, str]:
        return {"volumes": f"{len(self._volumes)} in memory, {self.used_kb} of {self.capacity_kb} KiB used"}

    async def space(self) -> dict[str, int]:
        return {"total_kb": self.capacity_kb, "free_kb": self.capacity_kb - self.used_kb}

    async def usage(self) -> dict[str, int]:
        """A memory volume takes its whole capacity of the pool."""
        return {volume_id: found["capacity_kb"] for volume_id, found in self._volumes.items()}

    async def adopt(self, volumes: dict[str, int], images: dict[str, int]) -> None:
        """After a restart: the stored volumes and images again, at their sizes; their data was in memory."""
        for volume_id, capacity_kb in volumes.items():
            self._volumes.setdefault(volume_id, {"capacity_kb": capacity_kb, "format": "raw", "data": b""})
        for image_id, capacity_kb in images.items():
            self._images.setdefault(image_id, {"capacity_kb": capacity_kb, "data": b""})

    def _room_for(self, capacity_kb: int) -> None:
        free = self.capacity_kb - self.used_kb
        if capacity_kb > free:
            raise DriverError(f"no room for {capacity_kb} KiB: {free} of {self.capacity_kb} KiB free")

    async def create_volume(self, volume_id: str, capacity_kb: int, image_id: str | None = None) -> None:
        if volume_id in self._volumes:
            raise DriverError(f"there is already a volume {volume_id}")
        if capacity_kb <= 0:
            raise DriverError(f"a volume needs a positive capacity, not {capacity_kb} KiB")
        data = b""
        if image_id is not None:
            image = self._images.get(image_id)
            if image is None:
                raise DriverError(f"the pool holds no image {image_id}")
            data = image["data"]
        self._room_for(capacity_kb)
        self._volumes[volume_id] = {"capacity_kb": capacity_kb, "format": "raw", "data": data}

    async def volume(self, volume_id: str) -> dict | None:
        found = self._volumes.get(volume_id)
        return {"capacity_kb": found["capacity_kb"], "format": found["format"]} if found else None

    def _require(self, volume_id: str) -> dict:
        found = self._volumes.get(volume_id)
        if found is None:
            raise DriverError(f"the pool holds no volume {volume_id}")
        return found

    async def attachment(self, volume_id: str) -> dict:
        self._require(volume_id)
        return {"kind": "block", "path": f"/dev/memory/{volume_id}", "format": "raw"}

    async def grow_volume(self, volume_id: str, capacity_kb: int, attached_live: bool) -> None:
        found = self._require(volume_id)
        self._room_for(capacity_kb - found["capacity_kb"])
        found["capacity_kb"] = capacity_kb

    async def snapshot_volume(self, volume_id: str, image_id: str) -> dict:
        found = self._require(volume_id)
        self._room_for(found["capacity_kb"])
        self._images[image_id] = {"capacity_kb": found["capacity_kb"], "data": found["data"]}
        return {"capacity_kb": found["capacity_kb"]}

    async def import_image(self, image_id: str, location: str, checksum: str | None, progress) -> dict:
        raise DriverError("the memory pool imports no image data; snapshot a volume instead")

    async def restore_volume(self, volume_id: str, image_id: str) -> None:
        found = self._require(volume_id)
        image = self._images.get(image_id)
        if image is None:
            raise DriverError(f"the pool holds no image {image_id}")
        found["data"] = image["data"]

    def write(self, volume_id: str, data: bytes) -> None:
        """What a guest would write on the volume (the fast tier's stand-in for a guest)."""
        self._require(volume_id)["data"] = data

    def read(self, volume_id: str) -> bytes:
        return self._require(volume_id)["data"]

    async def delete_image(self, image_id: str) -> None:
        self._images.pop(image_id, None)

    async def delete_volume(self, volume_id: str) -> None:
        self._volumes.pop(volume_id, None)

    async def forget(self) -> None:
        self._volumes.clear()
        self._images.clear()
