"""`cimid check --profile host` sees whether libvirtd can give guests a mount namespace, from what libvirtd
itself sees (/proc/<pid>/mountinfo and its qemu.conf), here a directory laid out like /proc/<pid>."""

import pytest

from cimid_libvirt.namespaces import NamespaceProblem, guest_mount_namespaces

ROOT = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
PROC = "30 27 0:5 / /proc rw,nosuid - proc proc rw\n"


def fake_proc(tmp_path, mountinfo, qemu_conf=None):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "mountinfo").write_text(mountinfo)
    if qemu_conf is not None:
        conf = tmp_path / "root/etc/libvirt/qemu.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(qemu_conf)
    return tmp_path


def test_a_root_mount_point_allows_guest_namespaces(tmp_path):
    assert guest_mount_namespaces(fake_proc(tmp_path, ROOT + PROC)).startswith("per guest")


def test_a_chroot_without_the_setting_is_a_problem_with_its_fix(tmp_path):
    for conf in (None, "#namespaces = []\nuser = \"root\"\n"):
        with pytest.raises(NamespaceProblem, match=r"not a mount point.*namespaces = \[\].*qemu.conf"):
            guest_mount_namespaces(fake_proc(tmp_path / str(conf is None), PROC, conf))


def test_a_chroot_with_namespaces_off_is_fine(tmp_path):
    assert guest_mount_namespaces(fake_proc(tmp_path, PROC, "namespaces = [ ]\n")).startswith("off")

