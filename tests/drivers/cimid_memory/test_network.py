"""The in-memory network driver: networks made, read back and removed; subnets and MTUs checked."""

import pytest
from cimid_memory import MemoryNetwork

from cimid.errors import DriverError


async def test_a_network_is_made_read_back_and_removed():
    network = MemoryNetwork()
    await network.create_network("n1", {"cidr": "10.0.7.0/24", "mtu": 1400})
    await network.create_network("n2", {})
    assert await network.network("n1") == {"cidr": "10.0.7.0/24", "mtu": 1400}
    assert await network.network("n2") == {"cidr": None, "mtu": None}
    assert (await network.health())["networks"] == "2 in memory"
    await network.delete_network("n1")
    assert await network.network("n1") is None
    await network.delete_network("n1")  # an unknown id is not an error


@pytest.mark.parametrize("network_id, options, needle", [
    ("taken", {}, "already a network"),
    ("n", {"cidr": "10.0.7.128/25"}, "overlaps 10.0.7.0/24 of network taken"),
    ("n", {"cidr": "10.0.0.0/8"}, "overlaps"),
    ("n", {"cidr": "10.0.8.1/24"}, "host bits set"),
    ("n", {"cidr": "not-a-subnet"}, "cidr"),
    ("n", {"mtu": 67}, "mtu must be an integer from 68 to 65535"),
    ("n", {"mtu": "1500"}, "mtu"),
    ("n", {"vlan": 5}, "unknown network option"),
])
async def test_refused_networks_change_nothing(network_id, options, needle):
    network = MemoryNetwork()
    await network.create_network("taken", {"cidr": "10.0.7.0/24"})
    with pytest.raises(DriverError, match=needle):
        await network.create_network(network_id, options)
    assert await network.network("taken") == {"cidr": "10.0.7.0/24", "mtu": None}
    assert network_id == "taken" or await network.network(network_id) is None


async def test_subnets_of_other_families_or_freed_ones_do_not_collide():
    network = MemoryNetwork()
    await network.create_network("v4", {"cidr": "10.0.0.0/16"})
    await network.create_network("v6", {"cidr": "fd00::/64"})
    await network.delete_network("v4")
    await network.create_network("again", {"cidr": "10.0.1.0/24"})
    assert await network.network("again") == {"cidr": "10.0.1.0/24", "mtu": None}
