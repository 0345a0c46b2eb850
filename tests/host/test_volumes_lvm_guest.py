"""The lvm pool on real LVM with device-mapper, inside the helper guest (hypervisor-ci.md §4): cimid's own
service and LVM driver, only the command runner pointed at the guest's shell. A thin pool: thin volumes
with device nodes, a thin snapshot, a restore that brings the data back, a grow, a volume made from the
snapshot, the fill limit refusing new volumes with both numbers, and LVs cimid did not make left alone.
Data is written and read in the guest with dd, as a machine using the volume would."""

import re
import shlex
import shutil

import pytest
from cimid_lvm import LvmVolumes
from conftest import assert_error, assert_state, make_client

from cimid.hookspecs import hookimpl
from cimid.http.keys import PROVIDER

from .conftest import fresh_dir
from .lvm_guest import helper_guest

MIB = 1 << 20
RESTORE = "http://schemas.dmtf.org/cimi/1/action/restore"


class GuestPool:
    """Registers pools of driver "lvm-in-guest": cimid's LvmVolumes with the guest's runner."""

    def __init__(self, runner):
        self.runner = runner

    @hookimpl
    def cimid_storage_pool(self, config, name, settings):
        if settings["driver"] != "lvm-in-guest":
            return None
        return LvmVolumes(config, name, {**settings, "driver": "lvm"}, self.runner)


@pytest.fixture
async def guest():
    async with helper_guest() as runner:
        print(f"helper guest shell up in {runner.boot_seconds:.1f}s")
        yield runner
        print("guest commands:", ", ".join(f"{c} {t:.2f}s" for c, t in runner.timings[:12]))


async def sh(guest, *argv) -> str:
    done = await guest.run(list(argv))
    assert done.returncode == 0, (argv, done)
    return done.stdout


async def job_done(client, r, outcome="SUCCESS"):
    assert r.status == 202, r
    return assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=120), outcome)


async def write(guest, device: str, text: str) -> None:
    await sh(guest, "sh", "-c", f"printf '%s' {shlex.quote(text)} | dd of={device} conv=fsync 2>/dev/null")


async def read(guest, device: str, size: int) -> str:
    return await sh(guest, "dd", f"if={device}", f"bs={size}", "count=1", "status=none")


async def test_thin_volumes_snapshot_restore_grow_in_the_helper_guest(guest):
    await sh(guest, "lvm", "pvcreate", "-q", "/dev/vda")
    await sh(guest, "lvm", "vgcreate", "-q", "gvg", "/dev/vda")
    await sh(guest, "lvm", "lvcreate", "-q", "-y", "--type", "thin-pool", "-L", "256m", "-n", "tp", "gvg")
    await sh(guest, "lvm", "lvcreate", "-q", "-y", "-V", "16m", "--thinpool", "gvg/tp", "-n", "theirs")
    await sh(guest, "lvm", "lvcreate", "-q", "-y", "-V", "8m", "--thinpool", "gvg/tp", "-n", "cimid-v-stale",
             "--addtag", "cimid")  # an orphan of a previous run: removed at start-up
    root = fresh_dir()
    client = await make_client(root, {
        "compute": {"uri": "qemu:///system", "virt_type": "qemu"},
        "storage": {"pools": {"default": {"driver": "lvm-in-guest", "volume_group": "gvg", "thin_pool": "tp",
                                          "thin_fill_limit": 40}}},
        "network": {"create_default": False}},
        extra_plugins=(GuestPool(guest),), profile="host")
    try:
        await client.get("cloudEntryPoint")
        lvs = await sh(guest, "lvm", "lvs", "--noheadings", "-o", "lv_name", "gvg")
        assert "cimid-v-stale" not in lvs and "theirs" in lvs

        r = await client.post("volumes", {"name": "data", "volumeTemplate": {"volumeConfig": {"capacity": 65536}}})
        await job_done(client, r)
        volume = r.headers["Location"]
        dev = f"/dev/gvg/cimid-v-{volume.rsplit('/', 1)[1]}"
        assert (await client.assert_state(volume, "AVAILABLE"))["capacity"] == 65536
        await sh(guest, "test", "-b", dev)  # a real device node
        assert (await sh(guest, "blockdev", "--getsize64", dev)).strip() == str(64 * MIB)
        attrs = await sh(guest, "lvm", "lvs", "--noheadings", "-o", "lv_attr,pool_lv", dev)
        assert attrs.split()[0].startswith("V") and attrs.split()[1] == "tp"  # thin, in the thin pool

        await write(guest, dev, "before-snapshot")
        r = await client.post("volumeImages", {"name": "pre", "imageLocation": volume})
        await job_done(client, r)
        image = r.headers["Location"]
        image_lv = f"gvg/cimid-i-{image.rsplit('/', 1)[1]}"
        assert (await sh(guest, "lvm", "lvs", "--noheadings", "-o", "origin,lv_attr", image_lv)).split()[1][1] == "r"

        await write(guest, dev, "after--snapshot")
        assert await read(guest, dev, 15) == "after--snapshot"
        r = await client.put(volume, {"name": "data", "capacity": 131072})  # grow
        await job_done(client, r)
        assert (await sh(guest, "blockdev", "--getsize64", dev)).strip() == str(128 * MIB)
        assert "shrink" in assert_error(await client.put(volume, {"name": "data", "capacity": 65536}), 400).lower()

        r = await client.post(volume + "/restore", {"action": RESTORE, "image": {"href": image}})
        await job_done(client, r)
        assert await read(guest, dev, 15) == "before-snapshot"
        assert (await sh(guest, "blockdev", "--getsize64", dev)).strip() == str(128 * MIB)  # the grown size stays
        assert (await client.assert_state(volume, "AVAILABLE"))["capacity"] == 131072

        # A volume from the snapshot: a thin snapshot of it, grown to the capacity asked.
        r = await client.post("volumes", {"name": "copy", "volumeTemplate": {
            "volumeConfig": {"capacity": 98304}, "volumeImage": {"href": image}}})
        await job_done(client, r)
        copy_dev = f"/dev/gvg/cimid-v-{r.headers['Location'].rsplit('/', 1)[1]}"
        assert await read(guest, copy_dev, 15) == "before-snapshot"
        assert (await sh(guest, "blockdev", "--getsize64", copy_dev)).strip() == str(96 * MIB)
        await write(guest, copy_dev, "copy-owns-this!")
        assert await read(guest, dev, 15) == "before-snapshot"  # copy-on-write: the volume keeps its data

        # Fill the thin pool past its 40 % limit: a new volume is refused with both numbers, nothing made.
        await sh(guest, "dd", "if=/dev/zero", f"of={dev}", "bs=1M", "count=112", "conv=fsync")
        before, rows = await sh(guest, "lvm", "lvs", "--noheadings", "-o", "lv_name", "gvg"), await client.rows()
        message = assert_error(await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024}}}),
                               409)
        assert "full, over its limit of 40%" in message, message
        assert await sh(guest, "lvm", "lvs", "--noheadings", "-o", "lv_name", "gvg") == before
        assert await client.rows() == rows
        facts = await client.app[PROVIDER].drivers.storage.health()  # what `cimid check` prints
        assert re.fullmatch(r"tp: 262144 KiB, data \d+\.\d% full, metadata \d+\.\d% full \(new volumes "
                            r"refused over 40%\)", facts["pool default thin pool"]), facts

        for doomed in (volume, r.headers["Location"]):
            await job_done(client, await client.delete(doomed))
        assert (await client.delete(image)).status == 200
        lvs = await sh(guest, "lvm", "lvs", "--noheadings", "-o", "lv_name", "gvg")
        assert "cimid-" not in lvs and "theirs" in lvs and "tp" in lvs
    finally:
        await client.client.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_thick_volumes_copy_their_data_in_the_helper_guest(guest, tmp_path):
    """Without a thin pool: snapshots, restores and volumes from images are copies (dd on the devices)."""
    from cimid.config import load
    await sh(guest, "lvm", "pvcreate", "-q", "/dev/vda")
    await sh(guest, "lvm", "vgcreate", "-q", "kvg", "/dev/vda")
    pool = LvmVolumes(load(profile="host", state_dir=tmp_path / "state"), "thick",
                      {"driver": "lvm", "volume_group": "kvg"}, guest)
    await pool.open()
    await pool.create_volume("k1", 8192)
    dev = "/dev/kvg/cimid-v-k1"
    attrs = (await sh(guest, "lvm", "lvs", "--noheadings", "-o", "lv_attr", dev)).split()[0]
    assert attrs.startswith("-wi-a")  # thick, active: a device node
    await write(guest, dev, "thick-before---")
    assert await pool.snapshot_volume("k1", "s1") == {"capacity_kb": 8192}
    await write(guest, dev, "thick-after----")
    await pool.restore_volume("k1", "s1")
    assert await read(guest, dev, 15) == "thick-before---"
    await pool.create_volume("k2", 4096, "s1")  # at least the image's size
    assert await pool.volume("k2") == {"capacity_kb": 8192, "format": "raw"}
    assert await read(guest, "/dev/kvg/cimid-v-k2", 15) == "thick-before---"
    await pool.grow_volume("k1", 16384, attached_live=False)
    assert (await sh(guest, "blockdev", "--getsize64", dev)).strip() == str(16 * MIB)
    await pool.forget()
    assert "cimid-" not in await sh(guest, "lvm", "lvs", "--noheadings", "-o", "lv_name", "kvg")
