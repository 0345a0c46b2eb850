"""The directory pool on real files through qemu-img: sparse volumes, copy-on-write volumes from images,
grow, flattened snapshots, restore keeping the grown size, and nothing left behind on failure. Data is
written and checked with qemu-io, as a guest would see it."""

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cimid_dir import DirVolumes

from cimid.config import load
from cimid.errors import DriverError


@pytest.fixture
def reachable(tmp_path):
    """A directory whose parents others may search, as QEMU's user needs (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="cimid-volumes-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pool(reachable):
    config = load(profile="host", state_dir=reachable / "state")
    return DirVolumes(config, "default", {"driver": "dir", "path": str(reachable / "pool")})


def write_pattern(path, byte: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} 0 64k", str(path)], check=True,
                   capture_output=True)


def holds_pattern(path, byte: int) -> bool:
    """Whether the first 64 KiB are all `byte` (qemu-io -P verifies, and fails if not)."""
    run = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {byte} 0 64k", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 0 or "Pattern verification failed" in run.stdout, run
    return run.returncode == 0


async def test_volume_grow_snapshot_restore_and_copy(pool, reachable):
    await pool.create_volume("v", 1024)
    path = reachable / "pool" / "v.qcow2"
    assert await pool.volume("v") == {"capacity_kb": 1024, "format": "qcow2"}
    assert await pool.attachment("v") == {"kind": "file", "path": str(path), "format": "qcow2"}
    assert path.stat().st_blocks * 512 < 1024 * 1024  # sparse
    write_pattern(path, 0x5a)
    assert await pool.snapshot_volume("v", "img") == {"capacity_kb": 1024}
    write_pattern(path, 0x11)
    assert not holds_pattern(path, 0x5a)
    await pool.grow_volume("v", 4096, attached_live=False)
    assert (await pool.volume("v"))["capacity_kb"] == 4096
    await pool.restore_volume("v", "img")
    assert holds_pattern(path, 0x5a)
    assert (await pool.volume("v"))["capacity_kb"] == 4096  # the grown size stays
    await pool.create_volume("copy", 2048, "img")  # an overlay on the image
    assert holds_pattern(reachable / "pool" / "copy.qcow2", 0x5a)
    assert (await pool.volume("copy"))["capacity_kb"] == 2048
    space = await pool.space()
    assert 0 < space["free_kb"] <= space["total_kb"]
    await pool.delete_volume("copy")
    await pool.delete_volume("v")
    await pool.delete_image("img")
    assert sorted(p.name for p in (reachable / "pool").rglob("*") if p.is_file()) == []


async def test_failures_leave_nothing(pool, reachable):
    await pool.create_volume("v", 1024)
    with pytest.raises(DriverError, match="already has a volume"):
        await pool.create_volume("v", 1024)
    with pytest.raises(DriverError, match="holds no image"):
        await pool.create_volume("w", 1024, "nosuch")
    with pytest.raises(DriverError, match="failed"):
        await pool.create_volume("huge", 1 << 62)  # qemu-img refuses such a size
    assert sorted(p.name for p in (reachable / "pool").iterdir() if p.is_file()) == ["v.qcow2"]
    with pytest.raises(DriverError, match="has no volume"):
        await pool.grow_volume("nosuch", 10, attached_live=False)


async def test_import_refuses_a_disk_with_a_backing_file(pool, reachable, tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
                   check=True)

    async def progress(_percent):
        pass
    with pytest.raises(DriverError, match="backing file"):
        await pool.import_image("bad", overlay.as_uri(), None, progress)
    assert await pool.import_image("good", base.as_uri(), None, progress) == {"capacity_kb": 1024}
    assert sorted(p.name for p in (reachable / "pool" / "images").iterdir()) == ["good.qcow2"]


async def test_usage_is_what_each_volume_takes_on_disk(pool, reachable):
    assert await pool.usage() == {}  # no directory yet
    await pool.create_volume("v", 8 * 1024)
    empty = (await pool.usage())["v"]
    assert 0 < empty < 1024  # a sparse qcow2: its header, not its 8 MiB
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 2M", str(reachable / "pool" / "v.qcow2")],
                   check=True, capture_output=True)
    assert (await pool.usage())["v"] >= empty + 2048  # the 2 MiB written now take room
    await pool.snapshot_volume("v", "img")  # images are not volumes
    assert set(await pool.usage()) == {"v"}
    await pool.delete_volume("v")
    assert await pool.usage() == {}
