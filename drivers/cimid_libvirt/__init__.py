"""The built-in libvirt compute drivers: "libvirt" runs real machines on QEMU (compute.LibvirtCompute),
"libvirt-test" the sandbox's on libvirt's in-process test driver (sandbox.SandboxCompute); and the
statistics of their machines for Meters (stats)."""

from cimid.hookspecs import hookimpl

from .domains import LibvirtDomains
from .sandbox import SandboxCompute
from .stats import MachineStats, SandboxMachineStats, VolumeStats

__all__ = ["LibvirtCompute", "MachineStats", "SandboxCompute", "SandboxMachineStats", "VolumeStats"]


def __getattr__(name: str):
    """LibvirtCompute (and the disk, seed and namespace helpers it brings) is loaded when asked for: the
    sandbox, whose start-up testers wait on, never needs it."""
    if name == "LibvirtCompute":
        from .compute import LibvirtCompute
        return LibvirtCompute
    raise AttributeError(name)


@hookimpl
def cimid_compute_driver(config, images):
    driver = config["compute"]["driver"]
    if driver == "libvirt":
        from .compute import LibvirtCompute
        return LibvirtCompute(config, images)
    if driver == "libvirt-test":
        return SandboxCompute(config)
    return None


@hookimpl
def cimid_meter_sources(config, compute, pools):
    if not isinstance(compute, LibvirtDomains):
        return []
    volumes = [VolumeStats(compute, pools)] if pools else []
    if isinstance(compute, SandboxCompute):
        return [SandboxMachineStats(compute), *volumes]
    return [MachineStats(compute), *volumes]
