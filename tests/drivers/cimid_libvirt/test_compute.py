"""The QEMU compute driver's wiring, without a hypervisor: it is made with the configured image store and
refuses to open without one (its machines run in the host tier, tests/host)."""

import pytest
from cimid_bridge import BridgeNetwork
from cimid_dir import DirImageStore, DirVolumes
from cimid_libvirt import LibvirtCompute, SandboxCompute
from cimid_memory import MemoryImageStore, MemoryNetwork, MemoryStorage

from cimid.config import load
from cimid.errors import DriverError
from cimid.plugins import Drivers, plugin_manager


def test_the_host_profile_gives_the_compute_driver_its_image_store(tmp_path):
    drivers = Drivers.load(plugin_manager(), load(profile="host", state_dir=tmp_path))
    assert isinstance(drivers.compute, LibvirtCompute) and isinstance(drivers.images, DirImageStore)
    assert drivers.compute.images is drivers.images
    assert isinstance(drivers.network, BridgeNetwork)
    pool = drivers.storage.pool(None)  # the default pool: qcow2 files under the state directory
    assert isinstance(pool, DirVolumes) and pool.path == tmp_path / "volumes"


def test_the_sandbox_profile_runs_on_the_twins(tmp_path):
    drivers = Drivers.load(plugin_manager(), load(profile="sandbox", state_dir=tmp_path))
    assert isinstance(drivers.compute, SandboxCompute)
    assert isinstance(drivers.images, MemoryImageStore) and not drivers.images.imports_images
    assert isinstance(drivers.storage.pool("default"), MemoryStorage) and isinstance(drivers.network, MemoryNetwork)


async def test_without_an_image_store_it_does_not_open(tmp_path):
    config = load(profile="host", state_dir=tmp_path, overrides={"images": {"driver": ""}})
    drivers = Drivers.load(plugin_manager(), config)
    assert drivers.images is None and drivers.compute.images is None
    with pytest.raises(DriverError, match="needs an image store") as refused:
        await drivers.open("compute")
    assert refused.value.unavailable
