"""The built-in directory image store ("dir"): MachineImages as qcow2/raw files QEMU boots from, with the
qemu-img helpers (disks.py) that machine disks are made with."""

from cimid.hookspecs import hookimpl

from .images import DirImageStore

__all__ = ["DirImageStore"]


@hookimpl
def cimid_image_store(config):
    return DirImageStore(config) if config["images"]["driver"] == "dir" else None
