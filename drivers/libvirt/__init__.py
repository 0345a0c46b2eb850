"""The built-in libvirt compute driver: the sandbox (libvirt's test driver) and real QEMU machines."""

from cimid.hookspecs import hookimpl

from .compute import LibvirtCompute


@hookimpl
def cimid_compute_driver(config):
    if config["compute"]["driver"] == "libvirt":
        return LibvirtCompute(config)
    return None
