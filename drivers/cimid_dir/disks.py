"""Disk files for QEMU, through qemu-img: inspection, copy-on-write overlays, sparse disks, flattening;
and directories QEMU (running as its own user) can reach.

An image is inspected before anything boots it: only raw and qcow2 are accepted, and a qcow2 that
names a backing file or an external data file is refused, since it could make QEMU read host files.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

from cimid.errors import DriverError


async def run(*cmd: str) -> str:
    """Run a command; its stdout, or DriverError with what it printed."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DriverError(f"{cmd[0]} {cmd[1]} failed: {err.decode(errors='replace').strip()[:500]}")
    return out.decode()


async def inspect(path: Path) -> dict:
    """qemu-img's view of an image, refused unless it is a self-contained raw or qcow2 disk."""
    # -U: a base image is open read-only in running guests; reading its header beside them is safe.
    info = json.loads(await run("qemu-img", "info", "-U", "--output=json", str(path)))
    fmt = info.get("format")
    if fmt not in ("raw", "qcow2"):
        raise DriverError(f"the image is {fmt}, not raw or qcow2; convert it with qemu-img first")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise DriverError("the image is a qcow2 with a backing file; flatten it (qemu-img convert) first")
    data_file = info.get("format-specific", {}).get("data", {}).get("data-file")
    if data_file:
        raise DriverError("the image is a qcow2 with an external data file; that is refused")
    if fmt == "raw" and not _looks_like_raw_disk(path):
        raise DriverError("the file is not a disk image (not qcow2, and not a raw disk of whole sectors)")
    return {"format": fmt, "virtual_size": int(info["virtual-size"])}


async def info(path: Path) -> dict:
    """qemu-img's JSON description of a disk (format, virtual-size ...), read beside a running guest."""
    return json.loads(await run("qemu-img", "info", "-U", "--output=json", str(path)))


async def backing_file(path: Path) -> str | None:
    """The file a qcow2 overlay stands on (None for a standalone disk)."""
    info = json.loads(await run("qemu-img", "info", "-U", "--output=json", str(path)))
    return info.get("full-backing-filename") or info.get("backing-filename")


def _looks_like_raw_disk(path: Path) -> bool:
    """qemu-img calls any file raw; a disk is whole 512-byte sectors and does not start as text."""
    size = path.stat().st_size
    if size < 65536 or size % 512:
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        head.decode("utf-8")
        return not head.strip() or b"\0" in head  # readable text throughout: a page or a script
    except UnicodeDecodeError:
        return True


async def create_overlay(base: Path, base_format: str, dest: Path, size_bytes: int | None) -> None:
    """A qcow2 whose backing file is the cached image: costs the same for any image size."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(dest)]
    if size_bytes:
        cmd.append(str(size_bytes))
    await run(*cmd)


async def create_sparse(dest: Path, size_bytes: int) -> None:
    await run("qemu-img", "create", "-q", "-f", "qcow2", str(dest), str(size_bytes))


async def flatten(source: Path, dest: Path) -> None:
    """A standalone qcow2 copy of a disk and everything under it (no backing file left)."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        # -U: the disk may be open by its (paused) guest; the caller made sure nothing writes to it.
        await run("qemu-img", "convert", "-q", "-U", "-O", "qcow2", str(source), str(tmp))
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def make_reachable(directory: Path) -> None:
    """Create a directory QEMU, which runs as its own user, can reach; say so if a parent stops it."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    for parent in directory.parents:
        if not parent.stat().st_mode & 0o001:
            raise DriverError(f"QEMU cannot reach {directory}: {parent} is not searchable by other users; "
                              "put the state directory (or images.dir / compute.disk_dir) elsewhere, "
                              "e.g. under /var/lib")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
