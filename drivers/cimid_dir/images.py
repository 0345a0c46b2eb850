"""The image store in a directory (`images.dir`, default <state_dir>/images): one file per MachineImage,
<id>.qcow2 or <id>.raw, readable by QEMU. Imports are streamed in, checked and inspected before they get
their final name, so an interrupted one leaves only a .download file that delete_image removes."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import disks, download

MAX_IMAGE_BYTES = 1 << 40
FORMATS = ("qcow2", "raw")


class DirImageStore:
    name = "dir"
    imports_images = True

    def __init__(self, config):
        self.image_dir = Path(config["images"]["dir"] or config.state_dir / "images")

    async def open(self) -> None:
        """Nothing to connect to: the directory is made (reachable by QEMU) when the first image comes."""

    async def close(self) -> None:
        """Nothing held open between calls."""

    async def health(self) -> dict[str, str]:
        existing = next(p for p in (self.image_dir, *self.image_dir.parents) if p.exists())
        count = sum(1 for fmt in FORMATS for _ in self.image_dir.glob(f"*.{fmt}")) if self.image_dir.exists() else 0
        return {"image_dir": f"{self.image_dir} ({shutil.disk_usage(existing).free // 2**20} MiB free)",
                "images": str(count)}

    def image_path(self, image_id: str) -> Path | None:
        for fmt in FORMATS:
            path = self.image_dir / f"{image_id}.{fmt}"
            if path.exists():
                return path
        return None

    async def image_info(self, image_id: str) -> dict | None:
        path = self.image_path(image_id)
        return await disks.inspect(path) if path else None

    async def import_image(self, image_id: str, location: str, checksum: str | None,
                           progress: download.Progress) -> dict:
        return await self._keep(image_id, lambda dest: download.fetch(location, dest, checksum, progress,
                                                                      MAX_IMAGE_BYTES), ".download")

    async def add_image(self, image_id: str, fill: Callable[[Path], Awaitable[None]]) -> dict:
        info = await self._keep(image_id, fill, ".capture")
        return {**info, "location": self.image_path(image_id).as_uri()}

    async def _keep(self, image_id: str, fill: Callable[[Path], Awaitable[None]], suffix: str) -> dict:
        """fill() a scratch file, inspect it, then give it its final name; a refused one leaves nothing."""
        disks.make_reachable(self.image_dir)
        scratch = self.image_dir / f"{image_id}{suffix}"
        try:
            await fill(scratch)
            info = await disks.inspect(scratch)
            scratch.chmod(0o644)  # QEMU runs as its own user
            scratch.replace(self.image_dir / f"{image_id}.{info['format']}")
            return info
        finally:
            scratch.unlink(missing_ok=True)

    async def delete_image(self, image_id: str) -> None:
        if self.image_dir.exists():
            for path in self.image_dir.glob(f"{image_id}.*"):  # the image, or what an interrupted import left
                path.unlink(missing_ok=True)
