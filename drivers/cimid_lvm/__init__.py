"""The built-in LVM storage pool driver ("lvm"): Volumes as logical volumes in a volume group, thick or
in a thin pool (volumes.py), every lvm command through a swappable command runner (runner.py)."""

import importlib

from cimid.hookspecs import hookimpl

__all__ = ["CommandRunner", "Completed", "LocalRunner", "LvmCommands", "LvmVolumes"]
# Loaded when asked for: every plugin is imported at start-up, and most hosts have no lvm pool.
_LAZY = {"CommandRunner": ".runner", "Completed": ".runner", "LocalRunner": ".runner", "LvmCommands": ".runner",
         "LvmVolumes": ".volumes"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in ("runner", "volumes"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)


@hookimpl
def cimid_storage_pool(config, name, settings):
    if settings["driver"] != "lvm":
        return None
    from .volumes import LvmVolumes
    return LvmVolumes(config, name, settings)
