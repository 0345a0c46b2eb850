"""Can libvirtd give each guest its own mount namespace? libvirt's QEMU driver does by default, and first
makes the root's propagation private, which fails where libvirtd's root is not a mount point (a chroot,
some containers): every guest then dies before QEMU starts with "Failed disable mount propagation out of
the root filesystem: Invalid argument"."""

from __future__ import annotations

import re
from pathlib import Path

LIBVIRTD_PID = Path("/run/libvirtd.pid")
FIX = ("libvirtd's root (/) is not a mount point (a chroot or container?), so libvirt cannot give QEMU a "
       "mount namespace and no guest will start. Fix: add `namespaces = []` to /etc/libvirt/qemu.conf and "
       "restart libvirtd, or make the root a mount point (for a chroot: `mount --bind DIR DIR` before "
       "entering it)")


class NamespaceProblem(Exception):
    pass


def libvirtd_proc(pid_file: Path = LIBVIRTD_PID) -> Path:
    """/proc/<pid> of the running libvirtd (its own view of the mounts), else /proc/self."""
    try:
        proc = Path("/proc") / pid_file.read_text().strip()
        if (proc / "comm").read_text().strip() == "libvirtd":
            return proc
    except OSError:
        pass
    return Path("/proc/self")


def guest_mount_namespaces(proc: Path) -> str:
    """What libvirtd (seen through /proc/<pid>) does with guest mount namespaces; NamespaceProblem with
    the way out if guests cannot start."""
    mount_points = {line.split()[4] for line in (proc / "mountinfo").read_text().splitlines()}
    if "/" in mount_points:
        return "per guest (libvirtd's root is a mount point)"
    try:
        conf = (proc / "root/etc/libvirt/qemu.conf").read_text()
    except OSError:  # absent, or not ours to read
        conf = ""
    if re.search(r"^\s*namespaces\s*=\s*\[\s*\]", conf, re.M):
        return "off (`namespaces = []` in qemu.conf; libvirtd's root is not a mount point)"
    raise NamespaceProblem(FIX)
