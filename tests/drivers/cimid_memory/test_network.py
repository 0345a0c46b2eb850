"""The in-memory network driver: the whole NetworkDriver contract (networks, reservations and leases,
ports, forwarding groups, adopt, forget); clashes refused with nothing changed."""

import pytest
from cimid_memory import MemoryNetwork

from cimid.errors import DriverError
from cimid.hookspecs import NetworkSpec, Reservation


def spec(network_id="n1", cidr="10.0.7.0/24", **kw) -> NetworkSpec:
    return NetworkSpec(network_id=network_id, bridge="cimid" + network_id, cidr=cidr,
                       gateway=cidr and cidr.rsplit(".", 1)[0] + ".1", **kw)


async def test_a_network_is_made_started_stopped_and_removed():
    network = MemoryNetwork()
    await network.create_network(spec(mtu=1400))
    await network.create_network(spec("n2", None, network_type="PUBLIC"))
    assert await network.network("n1") == {"bridge": "present", "link": "down", "dhcp": "missing", "rules": "none"}
    await network.start_network("n1")
    assert await network.network("n1") == {"bridge": "present", "link": "up", "dhcp": "present", "rules": "none"}
    assert await network.network("n2") == {"bridge": "present", "link": "down", "dhcp": "off", "rules": "present"}
    assert (await network.health())["networks"] == "2 in memory"
    await network.stop_network("n1")
    assert (await network.network("n1"))["link"] == "down"
    await network.delete_network("n1")
    assert await network.network("n1") is None
    await network.delete_network("n1")  # an unknown id is not an error


@pytest.mark.parametrize("made, needle", [
    (spec("n1"), "already a network"),
    (spec("n2", "10.0.7.128/25"), "overlaps 10.0.7.0/24 of network n1"),
    (spec("n2", "10.0.0.0/8"), "overlaps"),
    (spec("n2", "10.0.8.1/24"), "host bits set"),
    (spec("n2", "10.0.9.0/24", mtu=67), "mtu must be from 68 to 65535"),
    (spec("n2", "10.0.9.0/24", mtu=65536), "mtu"),
    (NetworkSpec(network_id="n2", bridge="eth0"), "already has a link named eth0 that cimid did not make"),
    (NetworkSpec(network_id="n2", bridge="cimidn1"), "belongs to another network"),
    (NetworkSpec(network_id="n2", bridge="a-name-too-long-for-linux"), "not a valid link name"),
    (NetworkSpec(network_id="n2", bridge="cimidn2", cidr="10.0.9.0/24", gateway="10.0.10.1"), "outside"),
])
async def test_clashes_are_refused_and_change_nothing(made, needle):
    network = MemoryNetwork()
    await network.create_network(spec("n1"))
    with pytest.raises(DriverError, match=needle):
        await network.create_network(made)
    assert network.spec("n1") == spec("n1")
    assert made.network_id == "n1" or await network.network(made.network_id) is None


async def test_reservations_are_what_dhcp_hands_out():
    network = MemoryNetwork()
    await network.create_network(spec())
    await network.set_reservations("n1", (Reservation("52:54:00:00:00:01", "10.0.7.2", "a"),))
    assert network.lease("n1", "52:54:00:00:00:01") is None  # down: no DHCP server answers
    await network.start_network("n1")
    assert network.lease("n1", "52:54:00:00:00:01") == "10.0.7.2"
    assert network.lease("n1", "52:54:00:00:00:99") is None  # no reservation, no address
    assert await network.leases("n1") == {"52:54:00:00:00:01": "10.0.7.2"}
    await network.set_reservations("n1", ())
    assert await network.leases("n1") == {}


async def test_ports_groups_adopt_and_forget():
    network = MemoryNetwork()
    for n, cidr in (("a", "10.0.1.0/24"), ("b", "10.0.2.0/24"), ("c", "10.0.3.0/24")):
        await network.create_network(spec(n, cidr))
    assert (await network.create_port("a", "p1"))["peer"].startswith("cimidp")
    with pytest.raises(DriverError, match="no network"):
        await network.create_port("zz", "p2")
    await network.set_forwarding_group("g", ("a", "b"))
    assert network.routes("a", "b") and not network.routes("a", "c")
    with pytest.raises(DriverError, match="no network"):
        await network.set_forwarding_group("g", ("a", "zz"))
    assert network.routes("a", "b")  # a refused change leaves the group as it was
    await network.delete_network("b")  # its forward rules go with it
    assert not network.routes("a", "b")
    await network.delete_forwarding_group("g")
    await network.delete_forwarding_group("g")

    fresh = MemoryNetwork()  # a restart: the process remembers nothing
    await fresh.adopt([(spec("a", "10.0.1.0/24"), True), (spec("c", "10.0.3.0/24"), False)], {"p1": "a"},
                      {"g": ("a", "c")})
    assert (await fresh.network("a"))["link"] == "up" and (await fresh.network("c"))["link"] == "down"
    assert fresh.ports() == {"p1": "a"} and fresh.routes("a", "c")
    await fresh.adopt([(spec("a", "10.0.1.0/24"), True)], {}, {})  # again: nothing made twice
    await fresh.forget()
    assert await fresh.network("a") is None and fresh.ports() == {}


async def test_a_dead_dhcp_server_is_reported():
    network = MemoryNetwork()
    heard = []
    network.watch(lambda network_id, message: heard.append((network_id, message)))
    await network.create_network(spec())
    network.dhcp_died("n1")
    assert heard == [("n1", "dnsmasq died and was restarted")]
