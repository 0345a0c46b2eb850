"""Machine network interfaces in the libvirt domain and in the cloud-init seed (the host tier boots
guests with them: tests/host/test_networks_guests.py)."""

import io
import json
from xml.etree import ElementTree

import pycdlib
from cimid_libvirt import seed
from cimid_libvirt.compute import interface_xml, tap_name

from cimid.hookspecs import InterfaceSpec


def test_an_interface_is_a_virtio_nic_on_its_bridge_with_its_mac_mtu_and_a_tap_named_after_the_mac():
    nic = ElementTree.fromstring(interface_xml(InterfaceSpec("52:54:00:AB:CD:EF", "cimid0123456789", mtu=1400)))
    assert nic.get("type") == "bridge"
    assert nic.find("mac").get("address") == "52:54:00:ab:cd:ef"
    assert nic.find("source").get("bridge") == "cimid0123456789"
    assert nic.find("target").get("dev") == "cv525400abcdef" == tap_name("52:54:00:ab:cd:ef")
    assert len(tap_name("52:54:00:ab:cd:ef")) <= 15
    assert nic.find("model").get("type") == "virtio" and nic.find("mtu").get("size") == "1400"
    assert ElementTree.fromstring(interface_xml(InterfaceSpec("52:54:00:00:00:01", "br"))).find("mtu") is None


def test_the_seed_gives_static_interfaces_their_address_and_the_others_dhcp(tmp_path):
    interfaces = [InterfaceSpec("52:54:00:00:00:01", "cimida", address="10.7.0.5/24", gateway="10.7.0.1",
                                dns=("192.0.2.53",), mtu=1400),
                  InterfaceSpec("52:54:00:00:00:02", "cimidb")]
    seed.build_seed(tmp_path / "seed.iso", instance_id="m1", hostname="m1", credential=None, user_data_b64=None,
                    interfaces=interfaces)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "seed.iso"))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path="/network-config")
    iso.close()
    config = json.loads(out.getvalue())
    assert config == {"version": 2, "ethernets": {
        "eth0": {"match": {"macaddress": "52:54:00:00:00:01"}, "set-name": "eth0", "addresses": ["10.7.0.5/24"],
                 "routes": [{"to": "0.0.0.0/0", "via": "10.7.0.1"}], "nameservers": {"addresses": ["192.0.2.53"]},
                 "mtu": 1400},
        "eth1": {"match": {"macaddress": "52:54:00:00:00:02"}, "set-name": "eth1", "dhcp4": True}}}


def test_without_interfaces_the_seed_asks_dhcp_on_every_nic():
    assert seed.network_config([]) == seed.NETWORK_CONFIG
