"""The directory image store on real files and qemu-img: imports, captures through add_image, refusals
that leave nothing in the directory, and a directory QEMU could not reach."""

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cimid_dir import DirImageStore, disks

from cimid.config import load
from cimid.errors import DriverError


async def no_progress(percent: int) -> None:
    pass


def qemu_img(*args) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def reachable_dir():
    """A directory every parent of which others may search, as QEMU's user needs (pytest's tmp_path is
    under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="cimid-dir-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def store_in(directory: Path) -> DirImageStore:
    return DirImageStore(load(profile="host", state_dir=directory / "state",
                              overrides={"images": {"dir": str(directory / "images")}}))


async def test_an_imported_qcow2_is_a_file_qemu_can_read(reachable_dir):
    source = reachable_dir / "source.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(source), "8M")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store = store_in(reachable_dir)
    info = await store.import_image("i1", source.as_uri(), f"sha256:{digest}", no_progress)
    assert info == {"format": "qcow2", "virtual_size": 8 << 20}
    path = store.image_path("i1")
    assert path == reachable_dir / "images" / "i1.qcow2" and path.stat().st_mode & 0o777 == 0o644
    assert await store.image_info("i1") == info
    assert (await store.health())["images"] == "1"
    await store.delete_image("i1")
    assert store.image_path("i1") is None and await store.image_info("i1") is None
    await store.delete_image("i1")  # an unknown id is not an error


async def test_refused_imports_leave_nothing_in_the_directory(reachable_dir):
    base, overlay = reachable_dir / "base.qcow2", reachable_dir / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay))
    store = store_in(reachable_dir)
    for location, checksum, needle in ((overlay.as_uri(), None, "backing file"),
                                       (base.as_uri(), "sha256:" + "0" * 64, "checksum mismatch"),
                                       ((reachable_dir / "none").as_uri(), None, "cannot read")):
        with pytest.raises(DriverError, match=needle):
            await store.import_image("bad", location, checksum, no_progress)
        assert list((reachable_dir / "images").iterdir()) == []


async def test_add_image_flattens_a_disk_into_a_standalone_image(reachable_dir):
    base, disk = reachable_dir / "base.qcow2", reachable_dir / "disk0.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "4M")
    await disks.create_overlay(base, "qcow2", disk, 6 << 20)  # a machine's disk: an overlay, grown
    store = store_in(reachable_dir)
    info = await store.add_image("cap", lambda dest: disks.flatten(disk, dest))
    path = reachable_dir / "images" / "cap.qcow2"
    assert info == {"format": "qcow2", "virtual_size": 6 << 20, "location": path.as_uri()}
    assert await disks.inspect(path) == {"format": "qcow2", "virtual_size": 6 << 20}  # no backing file left


async def test_a_directory_qemu_cannot_reach_is_refused(tmp_path):
    store = store_in(tmp_path)  # under pytest's 0700 directory
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(range(256)) * 256)
    with pytest.raises(DriverError, match="not searchable by other users"):
        await store.import_image("i", source.as_uri(), None, no_progress)
