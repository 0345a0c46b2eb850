"""The in-memory storage driver: volumes made, read back and removed within a pool of fixed size."""

import pytest
from cimid_memory import MemoryStorage

from cimid.errors import DriverError


async def test_a_volume_is_made_read_back_and_removed():
    storage = MemoryStorage(capacity_kb=1024)
    await storage.create_volume("v1", 256, "qcow2")
    assert await storage.volume("v1") == {"capacity_kb": 256, "format": "qcow2"}
    assert "256 of 1024 KiB used" in (await storage.health())["volumes"]
    await storage.delete_volume("v1")
    assert await storage.volume("v1") is None
    await storage.delete_volume("v1")  # an unknown id is not an error


@pytest.mark.parametrize("volume_id, capacity_kb, fmt, needle", [
    ("taken", 1, "raw", "already a volume"),
    ("v", 1, "vmdk", "not one of raw, qcow2"),
    ("v", 0, "raw", "positive capacity"),
    ("v", 2000, "raw", "no room"),
])
async def test_refused_volumes_change_nothing(volume_id, capacity_kb, fmt, needle):
    storage = MemoryStorage(capacity_kb=1024)
    await storage.create_volume("taken", 100, "raw")
    with pytest.raises(DriverError, match=needle):
        await storage.create_volume(volume_id, capacity_kb, fmt)
    assert await storage.volume("taken") == {"capacity_kb": 100, "format": "raw"}
    assert volume_id == "taken" or await storage.volume(volume_id) is None
    assert storage.used_kb == 100


async def test_space_freed_by_a_delete_can_be_used_again():
    storage = MemoryStorage(capacity_kb=1000)
    await storage.create_volume("a", 600, "raw")
    with pytest.raises(DriverError, match="400 of 1000 KiB free"):
        await storage.create_volume("b", 600, "raw")
    await storage.delete_volume("a")
    await storage.create_volume("b", 600, "raw")
    assert await storage.volume("b") == {"capacity_kb": 600, "format": "raw"}
