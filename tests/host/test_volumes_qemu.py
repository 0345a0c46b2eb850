"""Volumes in a `dir` pool on a real TCG guest: hot-plugged into the running guest (which sees /dev/vdb),
grown while attached (the guest sees the new size), detached (the guest loses it), snapshotted and
restored with the data written before the snapshot back; deleting the machine keeps the volume.

The guest reports its disks through its own user-data: a loop that prints /proc/partitions
("HVTEST: partitions vda=65536 ... vdb=1024", sizes in KiB) on the serial console whenever it changes.
Data is written onto the volume file with qemu-io while the volume is detached (the tiny guest has no
tools to write a pattern and read it back, and its console is the only channel out)."""

import asyncio
import base64
import re
import subprocess
from pathlib import Path

import libvirt
from conftest import assert_state

from cimid.http.keys import PROVIDER

from .conftest import URI
from .test_machines_qemu import console_until, import_image

WATCH_DISKS = b"""#!/bin/sh
( last=""; while true; do
    d=$(awk 'NR>2{printf "%s=%s ", $4, $3}' /proc/partitions)
    if [ "$d" != "$last" ]; then echo "HVTEST: partitions $d." > /dev/console; last="$d"; fi
    sleep 0.5
  done ) </dev/null >/dev/null 2>&1 &
echo watching disks
"""


async def partitions_until(client, machine, predicate, timeout=90.0) -> str:
    """The latest "HVTEST: partitions ..." report once `predicate(report)` holds for it."""
    report = ""
    for _ in range(int(timeout / 0.5)):
        text = (await client.get(f"{machine}/console")).body.decode(errors="replace")
        reports = re.findall(r"HVTEST: partitions ([^.]*)\.", text)
        report = reports[-1] if reports else ""
        if predicate(report):
            return report
        await asyncio.sleep(0.5)
    raise AssertionError(f"the guest's disks never matched; last report: {report!r}")


def write_pattern(path: Path, byte: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {byte} 0 64k", str(path)], check=True,
                   capture_output=True)


def holds_pattern(path: Path, byte: int) -> bool:
    """Whether the volume's first 64 KiB are all `byte` (qemu-io -P verifies, and fails if not)."""
    run = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {byte} 0 64k", str(path)],
                         capture_output=True, text=True)
    assert run.returncode == 0 or "Pattern verification failed" in run.stdout, run
    return run.returncode == 0


async def done(client, r, timeout=120):
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"], timeout=timeout)
    assert_state(job, "SUCCESS")
    return r.headers["Location"]


async def test_attach_grow_detach_snapshot_restore_on_a_running_guest(host_client, guest_image):
    client = host_client
    r, _ = await import_image(client, guest_image.as_uri())
    machine = await done(client, await client.post("machines", {"name": "vol", "machineTemplate": {
        "machineImage": {"href": r.headers["Location"]}, "machineConfig": {"href": client.base + "machineConfigs/tiny"},
        "initialState": "STARTED", "userData": base64.b64encode(WATCH_DISKS).decode()}}))
    await console_until(client, machine, "HVTEST: ready", timeout=120)
    before = await partitions_until(client, machine, lambda p: "vda=" in p)
    assert "vdb=" not in before

    volume = await done(client, await client.post("volumes", {"name": "data", "volumeTemplate": {
        "volumeConfig": {"capacity": 1024}}}))
    file = client.state_dir / "volumes" / (volume.rsplit("/", 1)[1] + ".qcow2")
    assert file.exists()

    # Hot-plug: the running guest sees a 1 MiB vdb.
    attachment = await done(client, await client.post(machine + "/volumes", {
        "volume": {"href": volume}, "initialLocation": "vdb"}))
    assert "vdb=1024 " in await partitions_until(client, machine, lambda p: "vdb=" in p)
    # Its Meters' source: the space it takes in the dir pool, and its I/O found among the guest's block
    # devices by the path the pool gave libvirt (a rate, so from the second reading on).
    (source,) = [s for s in client.app[PROVIDER].drivers.meters if s.kind == "volume"]
    volume_id = volume.rsplit("/", 1)[1]
    first = (await source.read())[volume_id]
    assert first["disk"] == file.stat().st_blocks * 512 // 1024 > 0 and "diskIO" not in first
    await asyncio.sleep(0.2)
    second = (await source.read())[volume_id]
    assert second["diskIO"] >= 0  # only there when the volume was found attached in both readings
    r = await client.delete(volume)
    assert r.status == 409 and "attached to Machine" in r.json["statusMessage"]

    # Grow while attached: the guest sees 2 MiB; shrinking is refused.
    await done(client, await client.put(volume, {"name": "data", "capacity": 2048}))
    assert "vdb=2048 " in await partitions_until(client, machine, lambda p: "vdb=2048 " in p)
    assert (await client.put(volume, {"name": "data", "capacity": 1024})).status == 400

    # Detach: the guest loses it.
    await done(client, await client.delete(attachment))
    await partitions_until(client, machine, lambda p: "vda=" in p and "vdb=" not in p)
    assert (await client.get(machine + "/volumes")).json["count"] == 0

    # A disk put on the guest by hand (not cimid's) at vdc: the POST is accepted (the store knows no vdc),
    # libvirt refuses the name in the Job, which fails; that disk stays and no MachineVolume is left.
    by_hand = client.state_dir / "by-hand.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(by_hand), "1M"], check=True)
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByName(f"cimid-{machine.rsplit('/', 1)[1]}")
        dom.attachDeviceFlags(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source "
                              f"file='{by_hand}'/><target dev='vdc' bus='virtio'/></disk>",
                              libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE)
        r = await client.post(machine + "/volumes", {"volume": {"href": volume}, "initialLocation": "vdc"})
        assert r.status == 202, r
        job = await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60)
        assert job["state"] == "FAILED" and "vdc" in job["statusMessage"], job
        assert str(by_hand) in dom.XMLDesc(0) and str(file) not in dom.XMLDesc(0)
        assert str(by_hand) in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert (await client.get(machine + "/volumes")).json["count"] == 0
        await client.assert_state(volume, "AVAILABLE")
        # Taken off again by hand (the guest names disks in the order they came: it would be its vdb).
        disk = re.search(r"<disk type='file' device='disk'>(?:(?!</disk>).)*by-hand(?:(?!</disk>).)*</disk>",
                         dom.XMLDesc(0), re.S).group(0)
        dom.detachDeviceFlags(disk, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE)
        await partitions_until(client, machine, lambda p: "vda=" in p and "vdb=" not in p)
    finally:
        conn.close()

    # Data written before the snapshot is back after a restore.
    write_pattern(file, 0x5a)
    image = await done(client, await client.post("volumeImages", {"name": "pre", "imageLocation": volume}))
    await client.assert_state(image, "AVAILABLE")
    write_pattern(file, 0x11)
    assert not holds_pattern(file, 0x5a)
    await done(client, await client.post(volume + "/restore", {
        "action": "http://schemas.dmtf.org/cimi/1/action/restore", "image": {"href": image}}))
    assert holds_pattern(file, 0x5a)
    assert (await client.get(volume)).json["capacity"] == 2048

    # Attached again, then the machine is deleted: the volume stays, detached.
    await done(client, await client.post(machine + "/volumes", {"volume": {"href": volume}}))
    await partitions_until(client, machine, lambda p: "vdb=2048 " in p)
    await done(client, await client.delete(machine))
    await client.assert_state(volume, "AVAILABLE")
    assert file.exists()
    await done(client, await client.delete(volume))
    assert not file.exists()


async def test_a_machine_template_volume_is_there_at_first_boot(host_client, guest_image):
    client = host_client
    r, _ = await import_image(client, guest_image.as_uri())
    machine = await done(client, await client.post("machines", {"name": "born-with", "machineTemplate": {
        "machineImage": {"href": r.headers["Location"]}, "machineConfig": {"href": client.base + "machineConfigs/tiny"},
        "initialState": "STARTED", "userData": base64.b64encode(WATCH_DISKS).decode(),
        "volumeTemplates": [{"volumeConfig": {"capacity": 3072}, "initialLocation": "vdc"}]}}))
    # libvirt's target is vdc, but Linux names virtio disks in the order it finds them: the second is vdb.
    assert "vdb=3072 " in await partitions_until(client, machine, lambda p: "=3072 " in p)
    volume = (await client.get(machine + "/volumes")).json["machineVolumes"][0]["volume"]["href"]
    await client.assert_state(volume, "AVAILABLE")
    await done(client, await client.delete(machine))
    await done(client, await client.delete(volume))
    assert not any((client.state_dir / "volumes").glob("*.qcow2"))


async def test_an_attach_still_works_after_the_domain_was_redefined_behind_cimids_back(host_client, guest_image):
    """The compute driver keeps domain handles so that a hot-plug need not look its domain up; a handle
    made stale (the domain undefined and defined again, with a new UUID, behind cimid's back) is looked up
    afresh, not a failed attach."""
    client = host_client
    r, _ = await import_image(client, guest_image.as_uri())
    machine = await done(client, await client.post("machines", {"name": "redefined", "machineTemplate": {
        "machineImage": {"href": r.headers["Location"]}, "machineConfig": {"href": client.base + "machineConfigs/tiny"},
        "initialState": "STOPPED"}}))
    volume = await done(client, await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024}}}))
    name = "cimid-" + machine.rsplit("/", 1)[1]
    conn = libvirt.open(URI)
    try:
        def disks() -> list[str]:
            xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            return re.findall(r"<target dev='(vd[a-z])'", xml)

        attachment = await done(client, await client.post(machine + "/volumes", {"volume": {"href": volume},
                                                                                 "initialLocation": "vdb"}))
        assert "vdb" in disks()  # the driver holds the domain's handle now
        await done(client, await client.delete(attachment))
        assert "vdb" not in disks()
        dom = conn.lookupByName(name)
        old_uuid, xml = dom.UUIDString(), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.undefine()
        conn.defineXML(re.sub(r"<uuid>[^<]*</uuid>", "", xml))
        assert conn.lookupByName(name).UUIDString() != old_uuid
        await done(client, await client.post(machine + "/volumes", {"volume": {"href": volume},
                                                                    "initialLocation": "vdb"}))
        assert "vdb" in disks()
    finally:
        conn.close()
    await done(client, await client.delete(machine))
    await done(client, await client.delete(volume))
