"""The built-in libvirt compute drivers: "libvirt" runs real machines on QEMU (compute.LibvirtCompute),
"libvirt-test" the sandbox's on libvirt's in-process test driver (sandbox.SandboxCompute)."""

from cimid.hookspecs import hookimpl

from .compute import LibvirtCompute
from .sandbox import SandboxCompute

__all__ = ["LibvirtCompute", "SandboxCompute"]


@hookimpl
def cimid_compute_driver(config, images):
    driver = config["compute"]["driver"]
    if driver == "libvirt":
        return LibvirtCompute(config, images)
    if driver == "libvirt-test":
        return SandboxCompute(config)
    return None
