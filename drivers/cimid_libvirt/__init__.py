"""The built-in libvirt compute drivers: "libvirt" runs real machines on QEMU (compute.LibvirtCompute),
"libvirt-test" the sandbox's on libvirt's in-process test driver (sandbox.SandboxCompute); and the
statistics of their machines for Meters (stats)."""

from cimid.hookspecs import hookimpl

from .compute import LibvirtCompute
from .sandbox import SandboxCompute
from .stats import MachineStats, SandboxMachineStats, VolumeStats

__all__ = ["LibvirtCompute", "MachineStats", "SandboxCompute", "SandboxMachineStats", "VolumeStats"]


@hookimpl
def cimid_compute_driver(config, images):
    driver = config["compute"]["driver"]
    if driver == "libvirt":
        return LibvirtCompute(config, images)
    if driver == "libvirt-test":
        return SandboxCompute(config)
    return None


@hookimpl
def cimid_meter_sources(config, compute, pools):
    volumes = [VolumeStats(compute, pools)] if pools and isinstance(compute, (SandboxCompute, LibvirtCompute)) else []
    if isinstance(compute, SandboxCompute):
        return [SandboxMachineStats(compute), *volumes]
    if isinstance(compute, LibvirtCompute):
        return [MachineStats(compute), *volumes]
    return []
