"""Volume groups for the LVM tests on this host's own lvm, which has no device-mapper (hypervisor-ci.md
§4): a loop device over a sparse file under /var/lib/cimid-test, a volume group on it named for the test,
lvm run with `global{activation=0}` (LVs exist as metadata only, no /dev node). Always removed after.
(The helper guest for real LVM is in lvm_guest.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass

from .conftest import fresh_dir

NO_ACTIVATION = "global{activation=0}"


@dataclass
class LoopVG:
    vg: str
    device: str

    def lvm(self, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["lvm", command, "--config", NO_ACTIVATION, "--devices", self.device, *args],
                              capture_output=True, text=True, check=check,
                              env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"})

    def lvs(self) -> dict[str, dict]:
        out = self.lvm("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                       "-o", "lv_name,lv_size,lv_tags", self.vg).stdout
        return {lv["lv_name"]: lv for lv in json.loads(out)["report"][0]["lv"]}


def loop_device(size: int):
    """A loop device over a new sparse file; yields its path, then detaches it and removes the file."""
    root = fresh_dir("lvm")
    backing = root / "pv.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
        backing.unlink(missing_ok=True)
        root.rmdir()


def volume_group(device: str, *vgcreate_args: str):
    """A volume group on `device` (a name no other test uses); yields a LoopVG, then removes it all."""
    group = LoopVG(f"cimidtest{uuid.uuid4().hex[:8]}", device)
    group.lvm("pvcreate", "-q", device)
    try:
        group.lvm("vgcreate", "-q", *vgcreate_args, group.vg, device)
        yield group
    finally:
        group.lvm("vgremove", "-q", "-y", "-f", group.vg, check=False)
        group.lvm("pvremove", "-q", "-y", device, check=False)
