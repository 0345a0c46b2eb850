"""The built-in directory image store ("dir"): MachineImages as qcow2/raw files QEMU boots from, with the
qemu-img helpers (disks.py) that machine disks are made with; and storage pools of Volumes as qcow2 files
in a directory (volumes.py)."""

import importlib

from cimid.hookspecs import hookimpl

__all__ = ["DirImageStore", "DirVolumes"]
# Loaded when asked for: every plugin is imported at start-up, and a sandbox never uses these.
_LAZY = {"DirImageStore": ".images", "DirVolumes": ".volumes"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in ("disks", "download", "images", "volumes"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)


@hookimpl
def cimid_image_store(config):
    if config["images"]["driver"] != "dir":
        return None
    from .images import DirImageStore
    return DirImageStore(config)


@hookimpl
def cimid_storage_pool(config, name, settings):
    if settings["driver"] != "dir":
        return None
    from .volumes import DirVolumes
    return DirVolumes(config, name, settings)
