"""The built-in `bridge` network driver: Networks as Linux bridges on this host (pyroute2), DHCP from one
supervised dnsmasq per network, isolation, NAT and forwarding groups in cimid's own nftables table."""

from cimid.hookspecs import hookimpl

from .driver import BridgeNetwork
from .stats import BridgeTraffic

__all__ = ["BridgeNetwork", "BridgeTraffic"]


@hookimpl
def cimid_network_driver(config):
    return BridgeNetwork(config) if config["network"]["driver"] == "bridge" else None


@hookimpl
def cimid_meter_sources(network):
    return [BridgeTraffic(network)] if isinstance(network, BridgeNetwork) else []
