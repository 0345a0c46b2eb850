"""The built-in in-memory twins ("memory") of the image store, storage and network drivers, for the
sandbox profile and the fast test tier: real implementations of their contracts that keep everything
in this process. (The sandbox's compute twin runs on libvirt's test driver: cimid_libvirt.sandbox.)"""

from cimid.hookspecs import hookimpl

from .images import MemoryImageStore
from .network import MemoryNetwork, MemoryTraffic
from .storage import MemoryStorage

__all__ = ["MemoryImageStore", "MemoryNetwork", "MemoryStorage", "MemoryTraffic"]


@hookimpl
def cimid_image_store(config):
    return MemoryImageStore() if config["images"]["driver"] == "memory" else None


@hookimpl
def cimid_storage_pool(config, name, settings):
    if settings["driver"] == "memory":
        return MemoryStorage(settings.get("capacity_gb", 100) * 1024 * 1024, settings.get("shareable", False))
    return None


@hookimpl
def cimid_network_driver(config):
    return MemoryNetwork() if config["network"]["driver"] == "memory" else None


@hookimpl
def cimid_meter_sources(network):
    return [MemoryTraffic(network)] if isinstance(network, MemoryNetwork) else []
