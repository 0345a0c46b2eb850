"""The in-memory storage pool: volumes made, grown, snapshotted, restored and removed within a pool of
fixed size."""

import pytest
from cimid_memory import MemoryStorage

from cimid.errors import DriverError


async def test_a_volume_is_made_read_back_and_removed():
    storage = MemoryStorage(capacity_kb=1024)
    await storage.create_volume("v1", 256)
    assert await storage.volume("v1") == {"capacity_kb": 256, "format": "raw"}
    assert await storage.space() == {"total_kb": 1024, "free_kb": 768}
    assert "256 of 1024 KiB used" in (await storage.health())["volumes"]
    assert await storage.usage() == {"v1": 256}  # a memory volume takes its whole capacity
    await storage.delete_volume("v1")
    assert await storage.volume("v1") is None
    assert await storage.usage() == {}
    await storage.delete_volume("v1")  # an unknown id is not an error


@pytest.mark.parametrize("volume_id, capacity_kb, needle", [
    ("taken", 1, "already a volume"),
    ("v", 0, "positive capacity"),
    ("v", 2000, "no room"),
])
async def test_refused_volumes_change_nothing(volume_id, capacity_kb, needle):
    storage = MemoryStorage(capacity_kb=1024)
    await storage.create_volume("taken", 100)
    with pytest.raises(DriverError, match=needle):
        await storage.create_volume(volume_id, capacity_kb)
    assert await storage.volume("taken") == {"capacity_kb": 100, "format": "raw"}
    assert volume_id == "taken" or await storage.volume(volume_id) is None
    assert storage.used_kb == 100


async def test_space_freed_by_a_delete_can_be_used_again():
    storage = MemoryStorage(capacity_kb=1000)
    await storage.create_volume("a", 600)
    with pytest.raises(DriverError, match="400 of 1000 KiB free"):
        await storage.create_volume("b", 600)
    await storage.delete_volume("a")
    await storage.create_volume("b", 600)
    assert await storage.volume("b") == {"capacity_kb": 600, "format": "raw"}


async def test_grow_snapshot_and_restore_bring_the_data_back():
    storage = MemoryStorage(capacity_kb=1000)
    await storage.create_volume("v", 100)
    storage.write("v", b"before")
    assert await storage.snapshot_volume("v", "img") == {"capacity_kb": 100}
    storage.write("v", b"after")
    await storage.grow_volume("v", 300, attached_live=False)
    await storage.restore_volume("v", "img")
    assert storage.read("v") == b"before" and (await storage.volume("v"))["capacity_kb"] == 300
    await storage.create_volume("copy", 100, "img")
    assert storage.read("copy") == b"before"
    with pytest.raises(DriverError, match="no room"):
        await storage.grow_volume("v", 1000, attached_live=False)
