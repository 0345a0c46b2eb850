"""The built-in directory image store ("dir"): MachineImages as qcow2/raw files QEMU boots from, with the
qemu-img helpers (disks.py) that machine disks are made with; and storage pools of Volumes as qcow2 files
in a directory (volumes.py)."""

from cimid.hookspecs import hookimpl

from .images import DirImageStore
from .volumes import DirVolumes

__all__ = ["DirImageStore", "DirVolumes"]


@hookimpl
def cimid_image_store(config):
    return DirImageStore(config) if config["images"]["driver"] == "dir" else None


@hookimpl
def cimid_storage_pool(config, name, settings):
    return DirVolumes(config, name, settings) if settings["driver"] == "dir" else None
