"""Crash safety of Volumes (the dir pool on real QEMU): a host-profile cimid is killed with SIGKILL in the
middle of a volume create, a snapshot, a restore and a hot-plug attach, and restarted on the same state
directory. After every restart: every Job is SUCCESS or FAILED with a statusMessage; no volume or image
file lacks its Volume or VolumeImage and no scratch file is left; every Volume is AVAILABLE with its file,
every VolumeImage AVAILABLE with its file; the guest's disks are exactly its MachineVolumes."""

import asyncio
import re
import shutil

import libvirt
from conftest import assert_state

from .conftest import URI, domain_names, fresh_dir, remove_domains
from .test_crash_safety import CIMI, Daemon, big_image, check_consistent, kill_when, last


def guest_disks(machine: str, conn: libvirt.virConnect | None = None) -> set[str]:
    """The volume files the running domain has as disks (beyond its own), on `conn` or a new connection."""
    own = conn is None
    conn = conn or libvirt.open(URI)
    try:
        xml = conn.lookupByName(f"cimid-{last(machine)}").XMLDesc()
    finally:
        if own:
            conn.close()
    return set(re.findall(r"volumes/([0-9a-f-]+)\.qcow2", xml))


async def check_volumes(d: Daemon, machine: str) -> dict:
    seen = await check_consistent(d)  # Jobs ended with a reason, machines and images as the host says
    volumes = {last(v["id"]): v for v in (await d.get("volumes")).get("volumes", [])}
    images = {last(i["id"]): i for i in (await d.get("volumeImages")).get("volumeImages", [])}
    pool = d.state / "volumes"
    files = {p.name for p in pool.iterdir() if p.is_file()} if pool.exists() else set()
    assert {f for f in files if not re.fullmatch(r"[0-9a-f-]+\.qcow2", f)} == set(), f"scratch files: {files}"
    assert {f[:-6] for f in files} == set(volumes), f"files {files} against Volumes {set(volumes)}"
    image_files = {p.name for p in (pool / "images").iterdir()} if (pool / "images").exists() else set()
    assert {f for f in image_files if not re.fullmatch(r"[0-9a-f-]+\.(qcow2|raw)", f)} == set(), image_files
    assert {f.rsplit(".", 1)[0] for f in image_files} == set(images), (image_files, set(images))
    for volume in volumes.values():
        assert_state(volume, "AVAILABLE")
    for image in images.values():
        assert_state(image, "AVAILABLE")
    attached = {last(mv["volume"]["href"]) for mv in (await d.get(f"{machine}/volumes")).get("machineVolumes", [])}
    assert await asyncio.to_thread(guest_disks, machine) == attached
    return {**seen, "volumes": volumes, "volumeImages": images}


async def test_sigkill_in_volume_create_snapshot_restore_and_attach(libvirt_host, guest_image):
    root = fresh_dir("crash-volumes")
    d = Daemon(root)
    try:
        image_file = await asyncio.to_thread(big_image, guest_image, root)  # 256 MiB of data: slow to copy
        await d.start()
        job, image = await d.post("machineImages", {"name": "guest", "imageLocation": guest_image.as_uri()})
        assert_state(await d.wait_job(job), "SUCCESS")
        status, headers, body = await d.call("POST", "machineConfigs", {"name": "tiny", "cpu": 1,
                                                                        "memory": 256 * 1024})
        assert status == 201, body
        job, machine = await d.post("machines", {"name": "m", "machineTemplate": {
            "machineImage": {"href": image}, "machineConfig": {"href": headers["Location"]},
            "initialState": "STARTED"}})
        assert_state(await d.wait_job(job), "SUCCESS")
        job, big = await d.post("volumeImages", {"name": "big", "imageLocation": image_file.as_uri()})
        assert_state(await d.wait_job(job), "SUCCESS")
        pool = d.state / "volumes"

        # 1. A create killed while qemu-img writes the new volume's scratch file (interrupted: the Volume
        #    and its file go).
        create_job, lost = await d.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024}}})
        await kill_when(d, lambda: any(pool.glob("*.part")) or (pool / f"{last(lost)}.qcow2").exists(),
                        "the volume's file")
        await d.start()
        seen = await check_volumes(d, machine)
        assert_state(seen["jobs"][last(create_job)], "FAILED", "SUCCESS")
        if seen["jobs"][last(create_job)]["state"] == "FAILED":
            assert last(lost) not in seen["volumes"]

        # A volume holding the big image's data (an overlay on it) for the next steps.
        job, volume = await d.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024},
                                                                  "volumeImage": {"href": big}}})
        assert_state(await d.wait_job(job), "SUCCESS")

        # 2. A snapshot killed while the volume is flattened into the image (interrupted: the VolumeImage
        #    and its partial file go, the volume is AVAILABLE again).
        snap_job, snap = await d.post("volumeImages", {"name": "s", "imageLocation": volume})
        await kill_when(d, lambda: any((pool / "images").glob(f"{last(snap)}*")), "the snapshot's partial file")
        await d.start()
        seen = await check_volumes(d, machine)
        assert_state(seen["jobs"][last(snap_job)], "FAILED")
        assert "interrupted" in seen["jobs"][last(snap_job)]["statusMessage"]
        assert last(snap) not in seen["volumeImages"]

        # 3. A restore killed while the image is flattened beside the volume (interrupted: the volume
        #    keeps its data, the scratch copy goes).
        job, snap = await d.post("volumeImages", {"name": "s2", "imageLocation": volume})
        assert_state(await d.wait_job(job), "SUCCESS")
        restore_job, _ = await d.post(f"{volume}/restore", {"resourceURI": f"{CIMI}/Action",
                                                            "action": f"{CIMI}/action/restore", "image": {"href": snap}})
        await kill_when(d, lambda: any(pool.glob(f"{last(volume)}.qcow2.restore*")), "the restore's scratch file")
        await d.start()
        seen = await check_volumes(d, machine)
        assert_state(seen["jobs"][last(restore_job)], "FAILED")
        assert last(volume) in seen["volumes"]

        # 4. An attach killed once the hypervisor has the disk, in the few milliseconds before the Job's
        #    last commit or after it (one connection, polled without pause, so that the kill usually lands in
        #    the window). libvirt finishes the call without its client, and the restart reads the disk back
        #    from the domain's definition: SUCCESS either way, and the guest's disks are its MachineVolumes.
        conn = libvirt.open(URI)
        try:
            attach_job, _ = await d.post(f"{machine}/volumes", {"volume": {"href": volume}, "initialLocation": "vdb"})
            await kill_when(d, lambda: last(volume) in guest_disks(machine, conn), "the disk in the guest")
        finally:
            conn.close()
        await d.start()
        seen = await check_volumes(d, machine)
        assert_state(seen["jobs"][last(attach_job)], "SUCCESS")
    finally:
        await d.close()
        left = await asyncio.to_thread(domain_names, "cimid-", str(root) + "/")
        await asyncio.to_thread(remove_domains, left)
        shutil.rmtree(root, ignore_errors=True)
