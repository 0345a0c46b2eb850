"""The built-in `bridge` network driver: Networks as Linux bridges on this host (pyroute2), DHCP from one
supervised dnsmasq per network, isolation, NAT and forwarding groups in cimid's own nftables table."""

from cimid.hookspecs import hookimpl

from .driver import BridgeNetwork

__all__ = ["BridgeNetwork"]


@hookimpl
def cimid_network_driver(config):
    return BridgeNetwork(config) if config["network"]["driver"] == "bridge" else None
