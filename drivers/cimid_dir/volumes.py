"""The directory storage pool ("dir"): each Volume a sparse qcow2 file <id>.qcow2 in the pool's directory
(`path`, default <state_dir>/volumes), each VolumeImage a standalone file in its images/ subdirectory.

A volume made from an image is a copy-on-write overlay on it (as fast for a 10 GiB image as for 1 GiB); a
snapshot is a flattened copy, so it stays whole whatever happens to the volume; a restore replaces the
volume by a flattened copy of the image, at the volume's capacity. Work happens on scratch files that get
their final name only once complete, so a failure leaves nothing half-made."""

from __future__ import annotations

import shutil
from pathlib import Path

from cimid.errors import DriverError

from . import disks, download

KB = 1024
MAX_IMAGE_BYTES = 1 << 40
FORMATS = ("qcow2", "raw")


class DirVolumes:
    name = "dir"

    def __init__(self, config, pool: str, settings: dict):
        self.pool = pool
        self.path = Path(settings.get("path") or config.state_dir / "volumes")
        self.image_dir = self.path / "images"
        self.shareable = settings.get("shareable", False)
        self.reserve_kb = settings.get("reserve_mb", 0) * 1024

    async def open(self) -> None:
        """Nothing to connect to; the directory is made (reachable by QEMU) with the first volume."""

    async def close(self) -> None:
        """Nothing held open."""

    async def adopt(self, volumes: dict[str, int], images: dict[str, int]) -> None:
        """The files outlive cimid: nothing to rebuild; the scratch files of work a kill cut short (a
        restore's or snapshot's partial copy, a download) go, as no Job runs yet."""
        for directory in (self.path, self.image_dir):
            if directory.exists():
                for path in directory.iterdir():
                    if path.is_file() and path.name.endswith((".part", ".restore", ".download")):
                        path.unlink(missing_ok=True)

    def _existing(self) -> Path:
        return next(p for p in (self.path, *self.path.parents) if p.exists())

    async def space(self) -> dict[str, int]:
        usage = shutil.disk_usage(self._existing())
        return {"total_kb": usage.total // KB, "free_kb": max(0, usage.free // KB - self.reserve_kb)}

    async def usage(self) -> dict[str, int]:
        """What each volume's sparse file takes on disk (its allocated blocks), not its capacity."""
        taken = {}
        for path in self.path.glob("*.qcow2") if self.path.exists() else ():
            try:
                taken[path.stem] = path.stat().st_blocks * 512 // KB
            except FileNotFoundError:
                pass  # deleted while we looked
        return taken

    async def health(self) -> dict[str, str]:
        count = sum(1 for _ in self.path.glob("*.qcow2")) if self.path.exists() else 0
        used = sum(p.stat().st_blocks * 512 for p in self.path.rglob("*") if p.is_file()) if self.path.exists() else 0
        return {"path": str(self.path), "volumes": str(count), "used": f"{used // KB} KiB on disk"}

    def _file(self, volume_id: str) -> Path:
        return self.path / f"{volume_id}.qcow2"

    def _image(self, image_id: str) -> Path | None:
        for fmt in FORMATS:
            path = self.image_dir / f"{image_id}.{fmt}"
            if path.exists():
                return path
        return None

    def _require(self, volume_id: str) -> Path:
        path = self._file(volume_id)
        if not path.exists():
            raise DriverError(f"pool '{self.pool}' has no volume {volume_id}")
        return path

    async def create_volume(self, volume_id: str, capacity_kb: int, image_id: str | None = None) -> None:
        dest = self._file(volume_id)
        if dest.exists():
            raise DriverError(f"pool '{self.pool}' already has a volume {volume_id}")
        disks.make_reachable(self.path)
        scratch = dest.with_name(dest.name + ".part")
        try:
            if image_id is None:
                await disks.create_sparse(scratch, capacity_kb * KB)
            else:
                base = self._image(image_id)
                if base is None:
                    raise DriverError(f"pool '{self.pool}' holds no image {image_id}")
                await disks.create_overlay(base, base.suffix[1:], scratch, capacity_kb * KB)
            scratch.replace(dest)
        finally:
            scratch.unlink(missing_ok=True)

    async def volume(self, volume_id: str) -> dict | None:
        path = self._file(volume_id)
        if not path.exists():
            return None
        info = await disks.info(path)
        return {"capacity_kb": -(-info["virtual-size"] // KB), "format": info["format"]}

    async def attachment(self, volume_id: str) -> dict:
        return {"kind": "file", "path": str(self._require(volume_id)), "format": "qcow2"}

    async def grow_volume(self, volume_id: str, capacity_kb: int, attached_live: bool) -> None:
        path = self._require(volume_id)
        if attached_live:
            return  # QEMU holds the file: the hypervisor grows it (ComputeDriver.resize_volume)
        await disks.run("qemu-img", "resize", "-q", "-f", "qcow2", str(path), str(capacity_kb * KB))

    async def snapshot_volume(self, volume_id: str, image_id: str) -> dict:
        path = self._require(volume_id)
        disks.make_reachable(self.image_dir)
        dest = self.image_dir / f"{image_id}.qcow2"
        await disks.flatten(path, dest)
        dest.chmod(0o644)
        info = await disks.inspect(dest)
        return {"capacity_kb": -(-info["virtual_size"] // KB)}

    async def import_image(self, image_id: str, location: str, checksum: str | None, progress) -> dict:
        disks.make_reachable(self.image_dir)
        scratch = self.image_dir / f"{image_id}.download"
        try:
            await download.fetch(location, scratch, checksum, progress, MAX_IMAGE_BYTES)
            info = await disks.inspect(scratch)  # raw or self-contained qcow2 only
            scratch.chmod(0o644)
            scratch.replace(self.image_dir / f"{image_id}.{info['format']}")
            return {"capacity_kb": -(-info["virtual_size"] // KB)}
        finally:
            scratch.unlink(missing_ok=True)

    async def restore_volume(self, volume_id: str, image_id: str) -> None:
        path = self._require(volume_id)
        source = self._image(image_id)
        if source is None:
            raise DriverError(f"pool '{self.pool}' holds no image {image_id}")
        capacity = (await disks.info(path))["virtual-size"]
        fresh = path.with_name(path.name + ".restore")
        try:
            await disks.flatten(source, fresh)
            if (await disks.info(fresh))["virtual-size"] < capacity:  # the volume keeps its (grown) size
                await disks.run("qemu-img", "resize", "-q", "-f", "qcow2", str(fresh), str(capacity))
            fresh.replace(path)
        finally:
            fresh.unlink(missing_ok=True)

    async def delete_image(self, image_id: str) -> None:
        if self.image_dir.exists():
            for path in self.image_dir.glob(f"{image_id}.*"):
                path.unlink(missing_ok=True)

    async def delete_volume(self, volume_id: str) -> None:
        for path in (self._file(volume_id), *(self._file(volume_id).with_name(f"{volume_id}.qcow2.{scratch}")
                                              for scratch in ("part", "restore", "restore.part"))):
            path.unlink(missing_ok=True)

    async def forget(self) -> None:
        disks.remove_tree(self.path)
