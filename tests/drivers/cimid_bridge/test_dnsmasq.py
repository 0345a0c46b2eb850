"""dnsmasq's configuration for a network, checked by dnsmasq itself (`--test`, which needs no root)."""

import subprocess
from pathlib import Path

from cimid_bridge import dnsmasq

from cimid.hookspecs import NetworkSpec, Reservation


def test_the_configuration_serves_only_reservations_and_dnsmasq_accepts_it(tmp_path):
    spec = NetworkSpec("n1", "cimidn1", "PUBLIC", "10.9.0.0/24", "10.9.0.1", dns=("192.0.2.53",), mtu=1400,
                       reservations=(Reservation("52:54:00:00:00:01", "10.9.0.10", "web"),
                                     Reservation("52:54:00:00:00:02", "10.9.0.11")))
    conf = dnsmasq.write_files(spec, tmp_path / "n1", [])
    text = conf.read_text().splitlines()
    assert "dhcp-range=10.9.0.0,static,255.255.255.0,1h" in text
    assert "dhcp-option=option:router,10.9.0.1" in text
    assert "dhcp-option=option:dns-server,192.0.2.53" in text and "dhcp-option=option:mtu,1400" in text
    assert (tmp_path / "n1" / "hosts").read_text() == "52:54:00:00:00:01,10.9.0.10,web\n52:54:00:00:00:02,10.9.0.11\n"
    checked = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_a_private_network_announces_no_route_and_its_dns_forwards_nowhere(tmp_path):
    spec = NetworkSpec("n2", "cimidn2", "PRIVATE", "10.8.0.0/24", "10.8.0.1")
    lines = dnsmasq.config_text(spec, Path("/nonexistent")).splitlines()
    assert "dhcp-option=option:router" in lines and not any(l.startswith("dhcp-option=option:router,") for l in lines)
    assert "no-resolv" in lines and "port=0" not in lines  # DNS on the gateway: the guests' names only
    conf = dnsmasq.write_files(spec, tmp_path / "n2", [])
    checked = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_a_forwarding_groups_subnets_are_announced_as_classless_static_routes(tmp_path):
    private = NetworkSpec("n4", "cimidn4", "PRIVATE", "10.4.0.0/24", "10.4.0.1")
    conf = dnsmasq.write_files(private, tmp_path / "n4", ["10.5.0.0/24", "10.6.0.0/16"])
    assert f"dhcp-optsfile={tmp_path / 'n4' / 'options'}" in conf.read_text().splitlines()
    assert (tmp_path / "n4" / "options").read_text() == \
        "option:classless-static-route,10.5.0.0/24,10.4.0.1,10.6.0.0/16,10.4.0.1\n"
    checked = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # A client taking option 121 ignores option 3: a PUBLIC network repeats its default route there.
    public = NetworkSpec("n5", "cimidn5", "PUBLIC", "10.5.0.0/24", "10.5.0.1")
    assert dnsmasq.options_text(public, ["10.4.0.0/24"]) == \
        "option:classless-static-route,0.0.0.0/0,10.5.0.1,10.4.0.0/24,10.5.0.1\n"
    assert dnsmasq.options_text(public, []) == ""  # no group: option 3 alone


def test_a_public_network_without_dns_servers_gets_dnsmasqs_forwarding_dns_on_its_gateway():
    lines = dnsmasq.config_text(NetworkSpec("n3", "cimidn3", "PUBLIC", "10.7.0.0/24", "10.7.0.1"),
                                Path("/nonexistent")).splitlines()
    assert "port=0" not in lines and "no-resolv" not in lines


def test_leases_are_read_from_dnsmasqs_lease_file(tmp_path):
    (tmp_path / "leases").write_text("1700000000 52:54:00:AA:00:01 10.9.0.10 web 01:52:54:00:aa:00:01\n"
                                     "1700000000 52:54:00:aa:00:02 10.9.0.11 * *\n")
    assert dnsmasq.leases(tmp_path) == {"52:54:00:aa:00:01": "10.9.0.10", "52:54:00:aa:00:02": "10.9.0.11"}
    assert dnsmasq.leases(tmp_path / "absent") == {}
