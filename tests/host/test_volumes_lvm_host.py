"""The lvm pool on this host's own LVM (a loop device, `activation=0`: thick LVs as metadata only, since
the host kernel has no device-mapper): the driver's metadata flows, and Volumes through the API — create,
grow, refused shrink, the capacity check with both numbers, an lvcreate that fails half-way, delete —
with LVs cimid did not make never touched, and its own orphans removed at start-up."""

import json
import shutil
import subprocess
import sys

import pytest
from cimid_lvm import LocalRunner, LvmVolumes
from conftest import assert_error, assert_state, make_client

from cimid.config import load
from cimid.errors import DriverError

from .conftest import fresh_dir
from .lvm_fixtures import NO_ACTIVATION, loop_device, volume_group

MIB = 1 << 20


@pytest.fixture
def device():
    yield from loop_device(256 * MIB)


@pytest.fixture
def group(device):
    yield from volume_group(device)


def pool_settings(group, **extra):
    return {"driver": "lvm", "volume_group": group.vg, "lvm_config": NO_ACTIVATION, **extra}


async def test_thick_metadata_flows_through_the_driver(group, tmp_path):
    config = load(profile="host", state_dir=tmp_path / "state")
    pool = LvmVolumes(config, "loop", pool_settings(group), LocalRunner(), (group.device,))
    group.lvm("lvcreate", "-q", "-y", "-L", "8m", "-n", "theirs", group.vg)  # someone else's LV
    group.lvm("lvcreate", "-q", "-y", "-L", "8m", "-n", "cimid-v-untagged", group.vg)  # our prefix, not our tag
    await pool.open()
    before = await pool.space()
    await pool.create_volume("a", 10 * 1024)  # rounded up to whole 4 MiB extents
    assert await pool.volume("a") == {"capacity_kb": 12 * 1024, "format": "raw"}
    assert group.lvs()["cimid-v-a"]["lv_tags"] == "cimid"
    assert (await pool.space())["free_kb"] == before["free_kb"] - 12 * 1024
    await pool.grow_volume("a", 20 * 1024, attached_live=False)
    assert await pool.volume("a") == {"capacity_kb": 20 * 1024, "format": "raw"}
    with pytest.raises(DriverError, match="not shrunk"):
        await pool.grow_volume("a", 4 * 1024, attached_live=False)
    assert await pool.attachment("a") == {"kind": "block", "path": f"/dev/{group.vg}/cimid-v-a", "format": "raw"}
    with pytest.raises(DriverError, match="already has a volume a"):
        await pool.create_volume("a", 1024)
    with pytest.raises(DriverError, match="insufficient free space"):
        await pool.create_volume("huge", 1024 * 1024)
    assert "cimid-v-huge" not in group.lvs()
    await pool.create_volume("orphan", 4096)
    await pool.adopt({"a": 20 * 1024}, {})  # start-up: "orphan" has no row
    assert set(group.lvs()) == {"theirs", "cimid-v-untagged", "cimid-v-a"}
    await pool.forget()
    await pool.delete_volume("untagged")
    assert set(group.lvs()) == {"theirs", "cimid-v-untagged"}


async def test_a_missing_volume_group_makes_the_pool_unavailable(tmp_path):
    config = load(profile="host", state_dir=tmp_path / "state")
    pool = LvmVolumes(config, "gone", {"driver": "lvm", "volume_group": "cimidtest-none",
                                       "lvm_config": NO_ACTIVATION})
    with pytest.raises(DriverError, match="storage pool 'gone'") as caught:
        await pool.open()
    assert caught.value.unavailable


@pytest.fixture
async def lvm_client(libvirt_host, device):
    """A host-profile cimid whose default pool is an lvm pool on a group that holds at most 3 LVs (so an
    lvcreate can fail after the capacity check passed), with someone else's LV and a cimid orphan in it."""
    for group in volume_group(device, "--maxlogicalvolumes", "3"):
        group.lvm("lvcreate", "-q", "-y", "-L", "8m", "-n", "theirs", group.vg)
        group.lvm("lvcreate", "-q", "-y", "-L", "4m", "-n", "cimid-v-leftover", "--addtag", "cimid", group.vg)
        root = fresh_dir()
        client = await make_client(root, {"compute": {"uri": "qemu:///system", "virt_type": "qemu"},
                                          "storage": {"pools": {"default": pool_settings(group)}},
                                          "network": {"create_default": False}},
                                   profile="host")
        client.group = group
        try:
            yield client
        finally:
            await client.client.close()
            shutil.rmtree(root, ignore_errors=True)


async def test_volumes_on_lvm_through_the_api(lvm_client):
    client, group = lvm_client, lvm_client.group
    await client.get("cloudEntryPoint")
    assert set(group.lvs()) == {"theirs"}  # the start-up removed only cimid's own orphan

    r = await client.post("volumes", {"name": "data", "volumeTemplate": {"volumeConfig": {"capacity": 10240}}})
    assert r.status == 202, r
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")
    volume = r.headers["Location"]
    doc = await client.assert_state(volume, "AVAILABLE")
    volume_id = volume.rsplit("/", 1)[1]
    assert doc["capacity"] == 12288  # what the LV has: whole extents
    assert int(group.lvs()[f"cimid-v-{volume_id}"]["lv_size"]) == 12 * MIB

    r = await client.put(volume, {"capacity": 20480})
    assert r.status in (200, 202), r
    if r.status == 202:
        assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")
    assert (await client.assert_state(volume, "AVAILABLE"))["capacity"] == 20480
    assert int(group.lvs()[f"cimid-v-{volume_id}"]["lv_size"]) == 20 * MIB

    # Bad input: each a clear error, nothing changed in the store or the group.
    rows, lvs = await client.rows(), group.lvs()
    vg = json.loads(group.lvm("vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_free",
                              group.vg).stdout)["report"][0]["vg"][0]
    free_kb = int(vg["vg_free"]) // 1024
    for template, status, words in [
            ({"capacity": 0}, 400, "at least 1"), ({"capacity": -5}, 400, "at least 1"),
            ({"capacity": 1 << 50}, 400, "beyond any disk"),
            ({"capacity": 10, "type": "urn:x-cimid:pool:nosuch"}, 400, "no storage pool 'nosuch'"),
            ({"capacity": 1 << 30}, 409, f"storage pool 'default' has {free_kb} KB free; this needs 1073741824 KB")]:
        r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": template}})
        assert words in assert_error(r, status)
    r = await client.put(volume, {"capacity": 1024})
    assert "shrink" in assert_error(r, 400).lower()
    assert await client.rows() == rows and group.lvs() == lvs

    # The group holds at most 3 LVs: the capacity check passes, lvcreate fails, nothing is left.
    r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 4096}}})
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60)
    assert_state(job, "SUCCESS")  # the third LV fits
    r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 4096}}})
    job = await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60)
    assert_state(job, "FAILED")
    assert "lvcreate" in job["statusMessage"] and "aximum number of logical volumes" in job["statusMessage"]
    assert (await client.get(r.headers["Location"])).status == 404
    assert len(group.lvs()) == 3

    r = await client.delete(volume)
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")
    assert f"cimid-v-{volume_id}" not in group.lvs() and "theirs" in group.lvs()


def test_cimid_check_reports_the_lvm_pool(group, tmp_path):
    group.lvm("lvcreate", "-q", "-y", "-L", "8m", "-n", "cimid-v-x", "--addtag", "cimid", group.vg)
    conf = tmp_path / "cimid.toml"
    conf.write_text(f'[storage]\ndefault_pool = "loop"\n[storage.pools.loop]\ndriver = "lvm"\n'
                    f'volume_group = "{group.vg}"\nlvm_config = "{NO_ACTIVATION}"\n')
    r = subprocess.run([sys.executable, "-m", "cimid.cli", "check", "--config", str(conf), "--state-dir",
                        str(tmp_path / "state")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "storage: lvm: ok" in r.stdout
    vg = json.loads(group.lvm("vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                              "vg_size,vg_free", group.vg).stdout)["report"][0]["vg"][0]
    total, free = int(vg["vg_size"]) // 1024, int(vg["vg_free"]) // 1024
    assert f"pool loop: driver lvm (default), {free} KiB free, {total - free} KiB used of {total} KiB" in r.stdout
    assert f"pool loop volume group: {group.vg}, 1 volumes and 0 images of cimid" in r.stdout
