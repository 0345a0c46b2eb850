"""The built-in meter source of the host itself ("psutil"): CPU, memory, disk space of the state
directory's file system, disk I/O and network traffic, read with psutil."""

from cimid.hookspecs import hookimpl

from .host import HostStats

__all__ = ["HostStats"]


@hookimpl
def cimid_meter_sources(config):
    return [HostStats(config["meters"]["host_disk_path"] or str(config.state_dir))]
