"""Volumes on a real TCG guest beyond the dir pool's own test: an lvm volume hot-plugged into a running
guest as a block device (`<disk type='block'>`), with a loop device standing in for the LV's device node
(the host kernel has no device-mapper, so the LV itself exists as metadata only); and Machines that boot
from a Volume: a qcow2 overlay on a bootable VolumeImage of the test guest's disk (dir pool), and an LV
holding a copy of it (lvm pool, each LV's node a loop device the same way)."""

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cimid_lvm import runner as lvm_runner
from cimid_lvm import volumes as lvm_volumes
from conftest import assert_state, make_client

from .conftest import HOST_OVERRIDES, domain_names, fresh_dir, remove_domains
from .lvm_fixtures import NO_ACTIVATION, loop_device, volume_group
from .test_machines_qemu import console_until, import_image
from .test_volumes_qemu import WATCH_DISKS, done, partitions_until

MIB = 1 << 20


@pytest.fixture
def device():
    yield from loop_device(256 * MIB)


@pytest.fixture
def group(device):
    yield from volume_group(device)


def with_lvm_pool(group) -> dict:
    """A host-profile configuration with the default dir pool and an lvm pool (thick) on the loop VG."""
    return {**HOST_OVERRIDES, "storage": {"pools": {
        "default": {"driver": "dir", "path": ""},
        "lvm": {"driver": "lvm", "volume_group": group.vg, "lvm_config": NO_ACTIVATION}}}}


@pytest.fixture
async def client(libvirt_host, group):
    root = fresh_dir()
    client = await make_client(root, with_lvm_pool(group), profile="host")
    client.root = root
    try:
        yield client
    finally:
        await client.client.close()
        remove_domains(domain_names("cimid-", str(root) + "/"))
        shutil.rmtree(root, ignore_errors=True)


async def start_machine(client, guest_image) -> str:
    r, _ = await import_image(client, guest_image.as_uri())
    machine = await done(client, await client.post("machines", {"name": "lvm-user", "machineTemplate": {
        "machineImage": {"href": r.headers["Location"]}, "machineConfig": {"href": client.base + "machineConfigs/tiny"},
        "initialState": "STARTED", "userData": base64.b64encode(WATCH_DISKS).decode()}}))
    await console_until(client, machine, "HVTEST: ready", timeout=120)
    return machine


async def test_an_lvm_volume_is_hot_plugged_as_a_block_device(client, group, guest_image):
    machine = await start_machine(client, guest_image)
    volume = await done(client, await client.post("volumes", {"name": "lv", "volumeTemplate": {
        "volumeConfig": {"capacity": 8192, "type": "urn:x-cimid:pool:lvm"}}}))
    lv = f"cimid-v-{volume.rsplit('/', 1)[1]}"
    assert lv in group.lvs()
    # The stand-in: an 8 MiB loop device whose node is put where LVM would put the LV's.
    for stand_in in loop_device(8 * MIB):
        rdev = os.stat(stand_in).st_rdev
        node_dir = f"/dev/{group.vg}"
        os.makedirs(node_dir, exist_ok=True)
        try:
            os.mknod(f"{node_dir}/{lv}", 0o660 | 0o060000, rdev)  # a block special file
            attachment = await done(client, await client.post(machine + "/volumes", {
                "volume": {"href": volume}, "initialLocation": "vdb"}))
            assert "vdb=8192 " in await partitions_until(client, machine, lambda p: "vdb=" in p)
            xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml",
                                  f"cimid-{machine.rsplit('/', 1)[1]}"], capture_output=True, text=True).stdout
            assert f"<source dev='{node_dir}/{lv}'" in xml and "type='block'" in xml
            await done(client, await client.delete(attachment))
            await partitions_until(client, machine, lambda p: "vda=" in p and "vdb=" not in p)
        finally:
            shutil.rmtree(node_dir, ignore_errors=True)
    await done(client, await client.delete(machine))
    await done(client, await client.delete(volume))
    assert lv not in group.lvs()


async def test_a_machine_boots_from_a_volume_of_the_dir_pool(client, guest_image):
    r = await client.post("volumeImages", {"name": "root", "imageLocation": guest_image.as_uri(), "bootable": True})
    assert r.status == 202, r
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=120), "SUCCESS")
    image = r.headers["Location"]
    machine = await done(client, await client.post("machines", {"name": "from-volume", "machineTemplate": {
        "machineConfig": {"href": client.base + "machineConfigs/tiny"}, "initialState": "STARTED",
        "userData": base64.b64encode(WATCH_DISKS).decode(),
        "volumeTemplates": [{"volumeConfig": {"capacity": 131072}, "volumeImage": {"href": image}}]}}))
    await console_until(client, machine, "HVTEST: ready", timeout=120)
    # The guest's one disk is the volume: 128 MiB (the image is 64 MiB), and nothing else.
    report = await partitions_until(client, machine, lambda p: "vda=" in p)
    assert "vda=131072 " in report and "vdb=" not in report
    mv = (await client.get(machine + "/volumes")).json["machineVolumes"]
    assert [m["initialLocation"] for m in mv] == ["vda"]
    volume = mv[0]["volume"]["href"]
    file = client.state_dir / "volumes" / (volume.rsplit("/", 1)[1] + ".qcow2")
    backing = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(file)], capture_output=True,
                             text=True, check=True).stdout
    assert '"backing-filename"' in backing  # a copy-on-write overlay on the image
    own = client.state_dir / "disks" / machine.rsplit("/", 1)[1]
    assert (own / "seed.iso").exists() and not (own / "disk0.qcow2").exists()  # no disk of its own
    await done(client, await client.delete(machine))
    await client.assert_state(volume, "AVAILABLE")  # it outlives the machine
    await done(client, await client.delete(volume))


class LoopNodes(lvm_runner.LocalRunner):
    """The host's lvm, plus what device-mapper would do and this host cannot: each thick LV the pool makes
    gets its block node /dev/<vg>/<lv>, a loop device over a sparse file of the LV's size, until the pool
    removes the LV. Every lvm command still runs for real (activation=0: metadata only)."""

    def __init__(self):
        super().__init__()
        self.root = fresh_dir("lv-nodes")
        self.loops: dict[str, str] = {}  # node path -> loop device

    async def run(self, argv):
        done = await super().run(argv)
        if done.returncode == 0 and argv[:2] == ["lvm", "lvcreate"]:
            node = f"/dev/{argv[-1]}/{argv[argv.index('-n') + 1]}"
            backing = self.root / Path(node).name
            with open(backing, "wb") as f:
                f.truncate(int(argv[argv.index("-L") + 1].rstrip("k")) * 1024)
            loop = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                                  check=True).stdout.strip()
            self.loops[node] = loop
            os.makedirs(os.path.dirname(node), exist_ok=True)
            os.mknod(node, 0o660 | 0o060000, os.stat(loop).st_rdev)
        elif done.returncode == 0 and argv[:2] == ["lvm", "lvremove"]:
            self.forget(f"/dev/{argv[-1]}")
        return done

    def forget(self, node: str) -> None:
        loop = self.loops.pop(node, None)
        if loop is not None:
            os.unlink(node)
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
            (self.root / Path(node).name).unlink(missing_ok=True)

    def close(self) -> None:
        for node in list(self.loops):
            self.forget(node)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
async def lv_client(libvirt_host, group, monkeypatch):
    """A host-profile cimid whose lvm pool (thick, on the loop VG) gets LV nodes from LoopNodes."""
    nodes = LoopNodes()
    monkeypatch.setattr(lvm_volumes, "LocalRunner", lambda: nodes)
    root = fresh_dir()
    client = await make_client(root, with_lvm_pool(group), profile="host")
    client.nodes = nodes
    try:
        yield client
    finally:
        await client.client.close()
        remove_domains(domain_names("cimid-", str(root) + "/"))
        nodes.close()
        shutil.rmtree(f"/dev/{group.vg}", ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


async def test_a_machine_boots_from_an_lv_of_the_lvm_pool(lv_client, group, guest_image):
    """Issue 10: with the lvm pool, a MachineTemplate's volumeTemplates with a bootable image gives a
    machine whose root disk is an LV. The image is imported onto an image LV (qemu-img onto its node), the
    volume is an LV copied from it (thick pool: dd between the nodes), and the guest boots from that LV as
    vda, a block device, and says so on its serial console."""
    client = lv_client
    r = await client.post("volumeImages", {"name": "root", "imageLocation": guest_image.as_uri(), "bootable": True,
                                           "properties": {"pool": "lvm"}})
    assert r.status == 202, r
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=120), "SUCCESS")
    image = r.headers["Location"]
    image_lv = f"cimid-i-{image.rsplit('/', 1)[1]}"
    assert image_lv in group.lvs()
    machine = await done(client, await client.post("machines", {"name": "from-lv", "machineTemplate": {
        "machineConfig": {"href": client.base + "machineConfigs/tiny"}, "initialState": "STARTED",
        "userData": base64.b64encode(WATCH_DISKS).decode(),
        "volumeTemplates": [{"volumeConfig": {"capacity": 131072, "type": "urn:x-cimid:pool:lvm"},
                             "volumeImage": {"href": image}}]}}))
    mv = (await client.get(machine + "/volumes")).json["machineVolumes"]
    assert [m["initialLocation"] for m in mv] == ["vda"]
    volume = mv[0]["volume"]["href"]
    lv = f"cimid-v-{volume.rsplit('/', 1)[1]}"
    assert int(group.lvs()[lv]["lv_size"]) == 131072 * 1024
    xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", f"cimid-{machine.rsplit('/', 1)[1]}"],
                         capture_output=True, text=True, check=True).stdout
    assert f"<source dev='/dev/{group.vg}/{lv}'" in xml and "<disk type='block' device='disk'>" in xml
    assert "<target dev='vda'" in xml and xml.count("device='disk'") == 1  # the LV is its only disk
    await console_until(client, machine, "HVTEST: ready", timeout=120)  # booted from the LV's data
    report = await partitions_until(client, machine, lambda p: "vda=" in p)
    assert "vda=131072 " in report and "vdb=" not in report
    await done(client, await client.delete(machine))
    await client.assert_state(volume, "AVAILABLE")  # the LV outlives the machine
    assert lv in group.lvs()
    await done(client, await client.delete(volume))
    assert lv not in group.lvs() and f"/dev/{group.vg}/{lv}" not in client.nodes.loops
    assert (await client.delete(image)).status == 200
    assert image_lv not in group.lvs()
