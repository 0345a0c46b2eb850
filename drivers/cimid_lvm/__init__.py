"""The built-in LVM storage pool driver ("lvm"): Volumes as logical volumes in a volume group, thick or
in a thin pool (volumes.py), every lvm command through a swappable command runner (runner.py)."""

from cimid.hookspecs import hookimpl

from .runner import CommandRunner, Completed, LocalRunner, LvmCommands
from .volumes import LvmVolumes

__all__ = ["CommandRunner", "Completed", "LocalRunner", "LvmCommands", "LvmVolumes"]


@hookimpl
def cimid_storage_pool(config, name, settings):
    return LvmVolumes(config, name, settings) if settings["driver"] == "lvm" else None
