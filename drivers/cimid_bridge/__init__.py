"""The built-in `bridge` network driver: Networks as Linux bridges on this host (pyroute2), DHCP from one
supervised dnsmasq per network, isolation, NAT and forwarding groups in cimid's own nftables table."""

import importlib

from cimid.hookspecs import hookimpl

__all__ = ["BridgeNetwork", "BridgeTraffic"]
# Loaded when asked for: every plugin is imported at start-up, and pyroute2 alone takes about 0.1 s to
# import, which a sandbox (or a host without networks) would pay for nothing.
_LAZY = {"BridgeNetwork": ".driver", "BridgeTraffic": ".stats"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in ("dnsmasq", "driver", "links", "rules", "stats"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)


@hookimpl
def cimid_network_driver(config):
    if config["network"]["driver"] != "bridge":
        return None
    from .driver import BridgeNetwork
    return BridgeNetwork(config)


@hookimpl
def cimid_meter_sources(network):
    if type(network).__module__ != f"{__name__}.driver":  # not ours (or none): nothing to import
        return []
    from .stats import BridgeTraffic
    return [BridgeTraffic(network)]
