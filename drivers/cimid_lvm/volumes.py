"""The LVM storage pool ("lvm"): each Volume a logical volume cimid-v-<id> in the configured volume group,
thin in `thin_pool` when one is set, thick otherwise; each VolumeImage an LV cimid-i-<id>.

With a thin pool, snapshots, volumes made from an image and restores are thin snapshots: instant, and
the same cost for a 10 GiB image as for 1 GiB. Thick pools copy the data instead (dd on the devices).
Imports download to a scratch file on this host and copy it onto a new image LV (qemu-img for qcow2).

cimid touches only LVs whose name has its prefix and that carry its tag; any other LV in the group is
never read, changed or removed. lvcreate is atomic; a restore builds the new data beside the volume
(cimid-r-<id>) and swaps names, and a swap cut short is finished the next time the volume is looked at.
Every command goes through the pool's command runner (runner.py)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from cimid.errors import DriverError

from .runner import CommandRunner, LocalRunner, LvmCommands, percent

KB = 1024
TAG = "cimid"  # every LV cimid makes carries it
VOLUME, IMAGE, RESTORE = "cimid-v-", "cimid-i-", "cimid-r-"
OWN_PREFIXES = (VOLUME, IMAGE, RESTORE)
MAX_IMAGE_BYTES = 1 << 40


class LvmVolumes:
    name = "lvm"

    def __init__(self, config, pool: str, settings: dict, runner: CommandRunner | None = None,
                 devices: tuple[str, ...] = ()):
        self.pool = pool
        self.vg = settings.get("volume_group") or ""
        self.thin_pool = settings.get("thin_pool") or ""
        self.fill_limit = settings.get("thin_fill_limit", 90)
        self.shareable = settings.get("shareable", False)
        self.lvm = LvmCommands(runner or LocalRunner(), settings.get("lvm_config", ""), devices)
        self.scratch_dir = Path(config.state_dir) / "lvm-imports"  # downloads before they go onto an LV

    # ---------------------------------------------------------------- the group and its LVs

    async def open(self) -> None:
        """The volume group (and thin pool) exist; DriverError(unavailable) saying which is missing."""
        if not self.vg:
            raise DriverError(f"storage pool '{self.pool}': set volume_group", unavailable=True)
        try:
            await self.lvm.vg(self.vg)
            if self.thin_pool:
                found = (await self._lvs()).get(self.thin_pool)
                if found is None or not found["lv_attr"].startswith("t"):
                    raise DriverError(f"{self.vg}/{self.thin_pool} is not a thin pool")
        except DriverError as exc:
            raise DriverError(f"storage pool '{self.pool}': {exc}", unavailable=True) from None

    async def close(self) -> None:
        """Nothing held open."""

    async def _lvs(self) -> dict[str, dict[str, str]]:
        return {lv["lv_name"]: lv for lv in await self.lvm.lvs(self.vg)}

    @staticmethod
    def _own(lv: dict[str, str]) -> bool:
        return lv["lv_name"].startswith(OWN_PREFIXES) and TAG in lv["lv_tags"].split(",")

    async def _own_lvs(self) -> dict[str, dict[str, str]]:
        return {name: lv for name, lv in (await self._lvs()).items() if self._own(lv)}

    def _path(self, lv_name: str) -> str:
        return f"/dev/{self.vg}/{lv_name}"

    async def _remove_if_own(self, lv_name: str) -> None:
        lv = (await self._lvs()).get(lv_name)
        if lv is not None and self._own(lv):
            await self.lvm.remove(self.vg, lv_name)

    async def _settle(self, volume_id: str) -> dict[str, dict[str, str]]:
        """Finish a restore cut short between its two renames (the new data kept, under the volume's
        name), or drop the new data of one cut short before; the group's own LVs, settled."""
        lvs = await self._own_lvs()
        fresh = lvs.get(RESTORE + volume_id)
        if fresh is not None:
            if VOLUME + volume_id in lvs:
                await self.lvm.remove(self.vg, RESTORE + volume_id)
            else:
                await self.lvm.rename(self.vg, RESTORE + volume_id, VOLUME + volume_id)
            lvs = await self._own_lvs()
        return lvs

    async def _require(self, volume_id: str) -> dict[str, str]:
        lv = (await self._settle(volume_id)).get(VOLUME + volume_id)
        if lv is None:
            raise DriverError(f"pool '{self.pool}' has no volume {volume_id}")
        return lv

    # ---------------------------------------------------------------- space

    async def _thin_fill(self) -> tuple[int, float, float]:
        """The thin pool's size in bytes and its data and metadata fill in percent."""
        tp = (await self._lvs()).get(self.thin_pool)
        if tp is None:
            raise DriverError(f"thin pool {self.vg}/{self.thin_pool} not found")
        return int(tp["lv_size"]), percent(tp["data_percent"]), percent(tp["metadata_percent"])

    async def space(self) -> dict:
        vg = await self.lvm.vg(self.vg)
        if not self.thin_pool:
            return {"total_kb": int(vg["vg_size"]) // KB, "free_kb": int(vg["vg_free"]) // KB}
        size, data, _meta = await self._thin_fill()
        return {"total_kb": size // KB, "free_kb": int(size * (100 - data) / 100) // KB,
                "fill_percent": data, "fill_limit_percent": self.fill_limit}

    async def health(self) -> dict[str, str]:
        lvs = await self._own_lvs()
        volumes = sum(1 for name in lvs if name.startswith(VOLUME))
        images = sum(1 for name in lvs if name.startswith(IMAGE))
        facts = {"volume group": f"{self.vg}, {volumes} volumes and {images} images of cimid"}
        if self.thin_pool:
            size, data, meta = await self._thin_fill()
            facts["thin pool"] = (f"{self.thin_pool}: {size // KB} KiB, data {data:.1f}% full, metadata "
                                  f"{meta:.1f}% full (new volumes refused over {self.fill_limit}%)")
        return facts

    async def usage(self) -> dict[str, int]:
        """What each volume takes in the group now: a thin LV its data (size x data%), a thick LV its size.
        (The StorageDriver.usage() of the volume Meters, which another branch adds to the protocol.)"""
        taken = {}
        for name, lv in (await self._own_lvs()).items():
            if name.startswith(VOLUME):
                size = int(lv["lv_size"])
                used = size * percent(lv["data_percent"]) / 100 if lv["pool_lv"] else size
                taken[name[len(VOLUME):]] = int(used) // KB
        return taken

    # ---------------------------------------------------------------- start-up

    async def adopt(self, volumes: dict[str, int], images: dict[str, int]) -> None:
        """After a restart: remove this pool's own LVs that no stored Volume or VolumeImage has (what an
        interrupted create or snapshot left), finish interrupted restores. Others' LVs are left alone."""
        keep = {VOLUME + v for v in volumes} | {IMAGE + i for i in images}
        for volume_id in volumes:
            await self._settle(volume_id)
        for name in await self._own_lvs():
            if name not in keep:
                await self.lvm.remove(self.vg, name)

    # ---------------------------------------------------------------- volumes

    async def create_volume(self, volume_id: str, capacity_kb: int, image_id: str | None = None) -> None:
        name = VOLUME + volume_id
        lvs = await self._lvs()
        if name in lvs:
            raise DriverError(f"pool '{self.pool}' already has a volume {volume_id}")
        if image_id is not None and IMAGE + image_id not in lvs:
            raise DriverError(f"pool '{self.pool}' holds no image {image_id}")
        await self._make_from(name, capacity_kb, IMAGE + image_id if image_id else None)

    async def _make_from(self, name: str, capacity_kb: int, source: str | None) -> None:
        """The LV `name` of at least `capacity_kb`: empty, or with the data of the LV `source` (a thin
        snapshot of it, else a copy); removed again if any step fails."""
        try:
            if source is not None and self.thin_pool:
                await self.lvm.snapshot(self.vg, source, name, tag=TAG)
                lv = (await self._lvs())[name]
                if int(lv["lv_size"]) < capacity_kb * KB:
                    await self.lvm.extend(self.vg, name, capacity_kb)
            else:
                if source is not None:  # the copy needs room for all of the source's data
                    capacity_kb = max(capacity_kb, int((await self._lvs())[source]["lv_size"]) // KB)
                await self.lvm.create(self.vg, name, capacity_kb, thin_pool=self.thin_pool, tag=TAG)
                if source is not None:
                    await self.lvm.activate(self.vg, source)
                    await self.lvm.copy(self._path(source), self._path(name))
        except BaseException:
            await asyncio.shield(self._discard(name))
            raise

    async def _discard(self, name: str) -> None:
        try:
            await self._remove_if_own(name)
        except DriverError:
            pass  # the next start-up's adopt removes it

    async def volume(self, volume_id: str) -> dict | None:
        lv = (await self._settle(volume_id)).get(VOLUME + volume_id)
        return {"capacity_kb": int(lv["lv_size"]) // KB, "format": "raw"} if lv else None

    async def attachment(self, volume_id: str) -> dict:
        lv = await self._require(volume_id)
        if lv["lv_attr"][4] != "a":  # not active (its activation was skipped): a guest needs the device
            await self.lvm.activate(self.vg, VOLUME + volume_id)
        return {"kind": "block", "path": self._path(VOLUME + volume_id), "format": "raw"}

    async def grow_volume(self, volume_id: str, capacity_kb: int, attached_live: bool) -> None:
        """lvextend, also under a running guest (the block device grows first, then the guest is told)."""
        lv = await self._require(volume_id)
        if capacity_kb * KB < int(lv["lv_size"]):
            raise DriverError(f"volume {volume_id} is {int(lv['lv_size']) // KB} KiB; LVM volumes are not shrunk")
        if capacity_kb * KB > int(lv["lv_size"]):
            await self.lvm.extend(self.vg, VOLUME + volume_id, capacity_kb)

    async def snapshot_volume(self, volume_id: str, image_id: str) -> dict:
        lv = await self._require(volume_id)
        name = IMAGE + image_id
        if self.thin_pool:
            try:
                await self.lvm.snapshot(self.vg, VOLUME + volume_id, name, tag=TAG, read_only=True)
            except BaseException:
                await asyncio.shield(self._discard(name))
                raise
        else:
            await self._make_from(name, int(lv["lv_size"]) // KB, VOLUME + volume_id)
        return {"capacity_kb": int(lv["lv_size"]) // KB}

    async def restore_volume(self, volume_id: str, image_id: str) -> None:
        lv = await self._require(volume_id)
        if IMAGE + image_id not in await self._lvs():
            raise DriverError(f"pool '{self.pool}' holds no image {image_id}")
        fresh = RESTORE + volume_id
        await self._make_from(fresh, int(lv["lv_size"]) // KB, IMAGE + image_id)  # keeps a grown size
        # The swap: killed between these two, _settle finishes it (the new data under the volume's name).
        await self.lvm.remove(self.vg, VOLUME + volume_id)
        await self.lvm.rename(self.vg, fresh, VOLUME + volume_id)

    async def delete_volume(self, volume_id: str) -> None:
        for name in (RESTORE + volume_id, VOLUME + volume_id):
            await self._remove_if_own(name)

    # ---------------------------------------------------------------- images

    async def import_image(self, image_id: str, location: str, checksum: str | None, progress) -> dict:
        from cimid_dir import disks, download  # the dir driver's streamed download and qemu-img inspection

        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{image_id}.", dir=self.scratch_dir))
        try:
            scratch = work / "download"
            await download.fetch(location, scratch, checksum, progress, MAX_IMAGE_BYTES)
            info = await disks.inspect(scratch)  # raw or self-contained qcow2 only
            size_kb = -(-info["virtual_size"] // KB)
            await self._check_room(size_kb)
            name = IMAGE + image_id
            await self.lvm.create(self.vg, name, size_kb, thin_pool=self.thin_pool, tag=TAG)
            try:
                await self.lvm.copy(str(scratch), self._path(name), info["format"])
            except BaseException:
                await asyncio.shield(self._discard(name))
                raise
            return {"capacity_kb": size_kb}
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def _check_room(self, size_kb: int) -> None:
        space = await self.space()
        if size_kb > space["free_kb"]:
            raise DriverError(f"pool '{self.pool}' has {space['free_kb']} KiB free; the image needs {size_kb} KiB")

    async def delete_image(self, image_id: str) -> None:
        await self._remove_if_own(IMAGE + image_id)

    async def forget(self) -> None:
        for name in await self._own_lvs():
            await self.lvm.remove(self.vg, name)
