"""Volumes on the sandbox (the memory pool, libvirt's test driver): made from templates by value and by
reference with overrides, checked before any work, grown, snapshotted and restored, attached to and
detached from Machines. Every refused request changes nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import NS, make_client

from cimid.http.auth import hash_password
from cimid.http.keys import PROVIDER
from cimid.service.runner import set_job_state
from cimid.store import consumers

GIB_KB = 1024 * 1024


@pytest.fixture
async def client(tmp_path):
    # A 2 GiB pool, so running out of space is easy to show.
    client = await make_client(tmp_path, {"storage": {"pools": {
        "default": {"driver": "memory", "capacity_gb": 2},
        "shared": {"driver": "memory", "capacity_gb": 1, "shareable": True}}}})
    yield client
    await client.client.close()


async def make_volume(client, capacity=1024, **template) -> str:
    r = await client.post("volumes", {"name": "v", "volumeTemplate": {"volumeConfig": {"capacity": capacity},
                                                                       **template}})
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert job["state"] == "SUCCESS", job
    return r.headers["Location"]


async def make_machine(client, state="STARTED") -> str:
    r = await client.post("machines", {"machineTemplate": {"href": client.base + "machineTemplates/small-tiny-linux",
                                                           "initialState": state}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    return r.headers["Location"]


def pool(client, name="default"):
    return client.app[PROVIDER].drivers.storage.pool(name)


async def test_a_volume_by_value_and_by_reference_with_overrides(client):
    volume = await make_volume(client, 2048)
    doc = await client.assert_state(volume, "AVAILABLE")
    assert doc["capacity"] == 2048 and doc["bootable"] is False
    assert await pool(client).volume(volume.rsplit("/", 1)[1]) == {"capacity_kb": 2048, "format": "raw"}
    conf = (await client.post("volumeConfigs", {"name": "small", "capacity": 1000})).headers["Location"]
    tpl = (await client.post("volumeTemplates", {"name": "t", "volumeConfig": {"href": conf}})).headers["Location"]
    r = await client.post("volumes", {"volumeTemplate": {"href": tpl}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(r.headers["Location"])).json["capacity"] == 1000
    r = await client.post("volumes", {"volumeTemplate": {"href": tpl, "volumeConfig": {"href": conf,
                                                                                        "capacity": 3000}}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(r.headers["Location"])).json["capacity"] == 3000
    r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": {
        "capacity": 10, "type": "urn:x-cimid:pool:shared"}}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    assert await pool(client, "shared").volume(r.headers["Location"].rsplit("/", 1)[1]) is not None
    listed = (await client.get("volumes", params={"$filter": "capacity > 1500"})).json
    assert [v["capacity"] for v in listed["volumes"]] == [2048, 3000]
    assert (await client.get(volume, fmt="xml")).xml is not None


@pytest.mark.parametrize("config, status, needle", [
    ({"capacity": 0}, 400, "at least 1"),
    ({"capacity": -5}, 400, "at least 1"),
    ({"capacity": 1 << 50}, 400, "beyond any disk"),
    ({"capacity": "big"}, 400, "integer"),
    ({}, 400, "capacity"),
    ({"capacity": 10, "type": "urn:x-cimid:pool:nosuch"}, 400, "no storage pool 'nosuch'"),
    ({"href": "volumeConfigs/nosuch"}, 400, "does not name an existing VolumeConfiguration"),
    ({"capacity": 3 * GIB_KB}, 409, f"has {2 * GIB_KB} KB free; this needs {3 * GIB_KB} KB"),
])
async def test_bad_volumes_are_refused_before_any_work(client, config, status, needle):
    before = await client.rows()
    if "href" in config:
        config = {"href": client.base + config["href"]}
    r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": config}})
    assert r.status == status and needle in r.json["statusMessage"], r
    assert await client.rows() == before
    assert pool(client).used_kb == 0


async def test_an_unknown_pool_is_refused_in_configurations_too(client):
    before = await client.rows()
    r = await client.post("volumeConfigs", {"capacity": 1, "type": "urn:x-cimid:pool:nosuch"})
    assert r.status == 400 and "nosuch" in r.json["statusMessage"]
    assert await client.rows() == before


async def test_grow_and_refuse_to_shrink(client):
    volume = await make_volume(client, 1000)
    before = await client.rows()
    r = await client.put(volume, {"name": "v", "capacity": 500})
    assert r.status == 400 and "cannot shrink (from 1000 KB to 500 KB)" in r.json["statusMessage"]
    r = await client.put(volume, {"name": "v", "capacity": 3 * GIB_KB})
    assert r.status == 409 and "KB free; this needs" in r.json["statusMessage"]
    assert await client.rows() == before
    r = await client.put(volume, {"name": "bigger", "capacity": 4000})
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    doc = await client.assert_state(volume, "AVAILABLE")
    assert doc["capacity"] == 4000 and doc["name"] == "bigger"
    assert (await pool(client).volume(volume.rsplit("/", 1)[1]))["capacity_kb"] == 4000


async def test_snapshot_and_restore_bring_the_data_back(client):
    volume = await make_volume(client, 1000)
    vid = volume.rsplit("/", 1)[1]
    pool(client).write(vid, b"before the upgrade")
    r = await client.post("volumeImages", {"name": "pre-upgrade", "imageLocation": volume})
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    image = await client.assert_state(r.headers["Location"], "AVAILABLE")
    assert image["imageLocation"] == volume
    images = (await client.get((await client.get(volume)).json["images"]["href"])).json
    assert images["count"] == 1 and images["volumeVolumeImages"][0]["volumeImage"]["href"] == image["id"]
    assert (await client.get(volume + "/images", fmt="xml")).xml is not None
    pool(client).write(vid, b"broken by the upgrade")
    r = await client.post(volume + "/restore", {"action": "http://schemas.dmtf.org/cimi/1/action/restore",
                                                "image": {"href": image["id"]}})
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    await client.assert_state(volume, "AVAILABLE")
    assert pool(client).read(vid) == b"before the upgrade"
    # A new volume from the snapshot holds its data too.
    copy = await make_volume(client, 10, volumeImage={"href": image["id"]})
    assert pool(client).read(copy.rsplit("/", 1)[1]) == b"before the upgrade"
    assert (await client.get(copy)).json["capacity"] == 1000  # at least the image's size
    # The image is in use by the copy; the copy goes, then the image can.
    assert (await client.delete(image["id"])).status == 409
    # Restoring another volume from this image is refused, changing nothing.
    other = await make_volume(client, 1000)
    before = await client.rows()
    r = await client.post(other + "/restore", {"action": "http://schemas.dmtf.org/cimi/1/action/restore",
                                               "image": {"href": image["id"]}})
    assert r.status == 400 and "was not taken of Volume" in r.json["statusMessage"]
    assert await client.rows() == before
    r = await client.delete(copy)
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.delete(image["id"])).status == 200
    assert (await client.get(volume + "/images")).json["count"] == 0


async def test_attach_detach_and_their_refusals(client):
    machine = await make_machine(client)
    mid = machine.rsplit("/", 1)[1]
    volume = await make_volume(client)
    compute = client.app[PROVIDER].drivers.compute
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}, "initialLocation": "vdb"})
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    attachment = r.headers["Location"]
    assert attachment.startswith(machine + "/volumes/")
    listed = (await client.get(machine + "/volumes")).json
    assert listed["count"] == 1 and listed["machineVolumes"][0]["volume"]["href"] == volume
    assert list(compute.attached(mid)) == ["vdb"]
    assert (await client.get(machine + "/volumes", fmt="xml")).xml is not None

    other_machine = await make_machine(client, "STOPPED")
    second = await make_volume(client)
    before = await client.rows()
    for target, body, status, needle in [
        (other_machine, {"volume": {"href": volume}}, 409, f"in use by Machine '{mid}'"),
        (machine, {"volume": {"href": volume}}, 409, "already attached"),
        (machine, {"volume": {"href": second}, "initialLocation": "vdb"}, 409, "already has a disk 'vdb'"),
        (machine, {"volume": {"href": second}, "initialLocation": "sda"}, 400, "not a guest disk name"),
        (machine, {"volume": {"href": client.base + "volumes/nosuch"}}, 404, "no Volume"),
        (client.base + "machines/nosuch", {"volume": {"href": second}}, 404, "no Machine"),
    ]:
        r = await client.post(target + "/volumes", body)
        assert r.status == status and needle in r.json["statusMessage"], (body, r)
    r = await client.delete(volume)
    assert r.status == 409 and f"attached to Machine '{mid}'" in r.json["statusMessage"]
    r = await client.post("volumeImages", {"imageLocation": volume})  # a snapshot while attached is fine
    image = (await client.wait_job(r.headers["CIMI-Job-URI"]))["affectedResources"][1]["href"]
    before = await client.rows()
    r = await client.post(volume + "/restore", {"action": "http://schemas.dmtf.org/cimi/1/action/restore",
                                                "image": {"href": image}})
    assert r.status == 409 and "detach it before restoring" in r.json["statusMessage"]
    assert await client.rows() == before

    # A stopped machine gets it too (at its next start); the next free name is chosen.
    r = await client.post(other_machine + "/volumes", {"volume": {"href": second}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(r.headers["Location"])).json["initialLocation"] == "vdb"

    r = await client.delete(attachment)
    assert r.status == 202
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(attachment)).status == 404 and compute.attached(mid) == {}
    r = await client.delete(volume)
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(volume)).status == 404
    assert await pool(client).volume(volume.rsplit("/", 1)[1]) is None


async def test_an_attach_whose_last_commit_was_lost_is_settled_from_the_host(client):
    """A hot-plug's last commit is not flushed (the host keeps its outcome): after a power cut it may be
    lost, and the restart finds the Job unfinished. It reads the hypervisor's definition back: SUCCESS and the
    attachment kept where the disk is there, FAILED and the attachment gone where it is not."""
    machine = await make_machine(client)
    mid = machine.rsplit("/", 1)[1]
    first, second = await make_volume(client), await make_volume(client)
    provider = client.app[PROVIDER]
    compute, store = provider.drivers.compute, provider.store
    jobs = {}
    for volume, device in ((first, "vdb"), (second, "vdc")):
        r = await client.post(machine + "/volumes", {"volume": {"href": volume}, "initialLocation": device})
        assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
        jobs[device] = (r.headers["CIMI-Job-URI"], r.headers["Location"])
    await compute.detach_volume(mid, "vdc")  # this one never reached the host's definition
    async with store.write() as tx:  # the last commits lost: both Jobs begun, never ended
        for job_uri, _ in jobs.values():
            job = await tx.get("Job", job_uri.rsplit("/", 1)[1])
            set_job_state(job, "RUNNING")
            await tx.update(job)
    await provider.jobs.recover("volume")
    kept = await client.wait_job(jobs["vdb"][0])
    assert kept["state"] == "SUCCESS" and "found on the hypervisor after a restart" in kept["statusMessage"], kept
    assert (await client.get(jobs["vdb"][1])).status == 200
    lost = await client.wait_job(jobs["vdc"][0])
    assert lost["state"] == "FAILED", lost
    assert (await client.get(jobs["vdc"][1])).status == 404
    assert list(compute.attached(mid)) == ["vdb"]


async def test_a_machines_own_disks_are_taken_names(client):
    """The names of a machine's own disks come from the store, with no look at the host: a machine made with
    two disks has vda and vdb, so vdb is refused (409, nothing changed) and the next free name is vdc."""
    r = await client.post("machineConfigs", {"name": "two-disks", "cpu": 1, "memory": 65536, "disks": [
        {"capacity": 1024, "format": "qcow2"}, {"capacity": 2048, "format": "qcow2"}]})
    assert r.status == 201, r
    config = r.headers["Location"]
    r = await client.post("machines", {"machineTemplate": {
        "machineConfig": {"href": config}, "machineImage": {"href": client.base + "machineImages/tiny-linux"},
        "initialState": "STOPPED"}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    machine = r.headers["Location"]
    volume = await make_volume(client)
    before = await client.rows()
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}, "initialLocation": "vdb"})
    assert r.status == 409 and "already has a disk 'vdb'" in r.json["statusMessage"], r
    assert await client.rows() == before
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert (await client.get(r.headers["Location"])).json["initialLocation"] == "vdc"


async def test_a_name_taken_behind_cimids_back_fails_the_job_changing_nothing(client):
    """A disk cimid did not attach (put on the host by hand) is not in the store: the POST is accepted, and
    the hypervisor's refusal fails the Job; the other disk stays, no MachineVolume is left, the Volume is
    AVAILABLE and attachable elsewhere."""
    machine = await make_machine(client)
    mid = machine.rsplit("/", 1)[1]
    compute = client.app[PROVIDER].drivers.compute
    by_hand = {"kind": "file", "path": "/somewhere/else.qcow2", "format": "qcow2"}
    await compute.attach_volume(mid, "vdc", by_hand)
    volume = await make_volume(client)
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}, "initialLocation": "vdc"})
    assert r.status == 202, r
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert job["state"] == "FAILED" and "already has a disk vdc" in job["statusMessage"], job
    assert compute.attached(mid) == {"vdc": by_hand}
    assert (await client.get(r.headers["Location"])).status == 404
    assert (await client.get(machine + "/volumes")).json["count"] == 0
    await client.assert_state(volume, "AVAILABLE")
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    assert set(compute.attached(mid)) == {"vdb", "vdc"}


async def test_shareable_pools_allow_several_machines(client):
    volume = await make_volume(client, 10, volumeConfig={"capacity": 10, "type": "urn:x-cimid:pool:shared"})
    for machine in (await make_machine(client), await make_machine(client)):
        r = await client.post(machine + "/volumes", {"volume": {"href": volume}})
        assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"


async def test_deleting_a_machine_detaches_and_keeps_its_volumes(client):
    machine = await make_machine(client, "STOPPED")
    volume = await make_volume(client)
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    r = await client.delete(machine)
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    await client.assert_state(volume, "AVAILABLE")
    r = await client.delete(volume)  # no longer attached
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"


async def test_attach_to_a_deleted_machine_is_refused(client):
    machine = await make_machine(client, "STOPPED")
    r = await client.delete(machine)
    await client.wait_job(r.headers["CIMI-Job-URI"])
    volume = await make_volume(client)
    before = await client.rows()
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}})
    assert r.status == 404
    assert await client.rows() == before


@pytest.fixture
async def dir_client(tmp_path):
    """The sandbox with a real `dir` pool (qemu-img on real files) in a directory QEMU could reach."""
    path = Path(tempfile.mkdtemp(prefix="cimid-volumes-service-"))
    path.chmod(0o755)
    client = await make_client(tmp_path, {"storage": {"pools": {"default": {"driver": "dir", "path": str(path)}}}})
    client.pool_path = path
    yield client
    await client.client.close()
    shutil.rmtree(path, ignore_errors=True)


async def test_volume_images_are_imported_from_file_urls_checked_and_used(dir_client, tmp_path):
    client = dir_client
    source = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "2M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 4k", str(source)], check=True,
                   capture_output=True)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    r = await client.post("volumeImages", {"name": "bad sum", "imageLocation": source.as_uri(),
                                           "properties": {"checksum": "sha256:" + "0" * 64}})
    job = await client.wait_job(r.headers["CIMI-Job-URI"])
    assert job["state"] == "FAILED" and "checksum" in job["statusMessage"]
    assert (await client.get(r.headers["Location"])).status == 404
    assert not any((client.pool_path / "images").iterdir())  # nothing half-made
    r = await client.post("volumeImages", {"name": "data", "imageLocation": source.as_uri(),
                                           "properties": {"checksum": "sha256:" + digest}})
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    image = await client.assert_state(r.headers["Location"], "AVAILABLE")
    volume = await make_volume(client, 1024, volumeImage={"href": image["id"]})
    assert (await client.get(volume)).json["capacity"] == 2048  # the image's size, larger than asked
    file = client.pool_path / (volume.rsplit("/", 1)[1] + ".qcow2")
    run = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x42 0 4k", str(file)], capture_output=True)
    assert run.returncode == 0, run.stdout
    before = await client.rows()
    r = await client.post("volumeImages", {"imageLocation": "ftp://example.org/x.qcow2"})
    assert r.status == 400 and "neither a Volume" in r.json["statusMessage"]
    assert await client.rows() == before


async def test_a_volume_image_is_imported_over_http_with_progress(dir_client, tmp_path):
    """An http:// imageLocation (a server on loopback) is streamed like a MachineImage's: its checksum is
    checked and the Job reports progress while the data comes (the server holds back the second half
    until the test has seen a progress between 0 and 100)."""
    client = dir_client
    source = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=full", str(source), "8M"],
                   check=True)
    data = source.read_bytes()
    half_seen = asyncio.Event()

    async def serve(request):
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        await response.write(data[:len(data) // 2])
        await asyncio.wait_for(half_seen.wait(), 30)
        await response.write(data[len(data) // 2:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/data.qcow2", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        checksum = "sha256:" + hashlib.sha256(data).hexdigest()
        location = str(server.make_url("/data.qcow2"))
        r = await client.post("volumeImages", {"name": "over http", "imageLocation": location,
                                               "properties": {"checksum": checksum}})
        assert r.status == 202, r
        job_href = r.headers["CIMI-Job-URI"]
        for _ in range(300):
            progress = (await client.get(job_href)).json.get("progress", 0)
            if 0 < progress < 100:
                break
            await asyncio.sleep(0.05)
        assert 0 < progress < 100, progress
        half_seen.set()
        assert (await client.wait_job(job_href))["state"] == "SUCCESS"
    finally:
        await server.close()
    image = await client.assert_state(r.headers["Location"], "AVAILABLE")
    volume = await make_volume(client, 1024, volumeImage={"href": image["id"]})
    assert (await client.get(volume)).json["capacity"] == 8 * 1024  # the image's size


async def test_a_volume_image_names_its_pool_in_properties(tmp_path):
    """An import goes to the pool `properties.pool` names (the default one without it); volumes made from
    it live there; a pool that does not exist, or a snapshot asked into another pool, is a 400 changing
    nothing."""
    paths = {name: Path(tempfile.mkdtemp(prefix=f"cimid-volumes-{name}-")) for name in ("default", "other")}
    for path in paths.values():
        path.chmod(0o755)
    client = await make_client(tmp_path, {"storage": {"pools": {
        name: {"driver": "dir", "path": str(path)} for name, path in paths.items()}}})
    try:
        source = tmp_path / "data.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "1M"], check=True)
        r = await client.post("volumeImages", {"imageLocation": source.as_uri(), "properties": {"pool": "other"}})
        assert r.status == 202, r
        assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
        image = await client.assert_state(r.headers["Location"], "AVAILABLE")
        image_id = image["id"].rsplit("/", 1)[1]
        assert [p.name for p in (paths["other"] / "images").iterdir()] == [f"{image_id}.qcow2"]
        assert not (paths["default"] / "images").exists() or not any((paths["default"] / "images").iterdir())
        volume = await make_volume(client, 1024, volumeImage={"href": image["id"]},
                                   volumeConfig={"capacity": 1024, "type": "urn:x-cimid:pool:other"})
        assert (paths["other"] / (volume.rsplit("/", 1)[1] + ".qcow2")).exists()
        r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 1024},
                                                             "volumeImage": {"href": image["id"]}}})
        assert r.status == 400 and "kept in pool 'other'" in r.json["statusMessage"]
        before = await client.rows()
        for body, message in (
                ({"imageLocation": source.as_uri(), "properties": {"pool": "nosuch"}},
                 "there is no storage pool 'nosuch'; the pools are default, other"),
                ({"imageLocation": volume, "properties": {"pool": "default"}},
                 "is kept in its pool 'other', not in 'default'")):
            r = await client.post("volumeImages", body)
            assert r.status == 400 and message in r.json["statusMessage"], r
        assert await client.rows() == before
        assert [p.name for p in (paths["other"] / "images").iterdir()] == [f"{image_id}.qcow2"]
    finally:
        await client.client.close()
        for path in paths.values():
            shutil.rmtree(path, ignore_errors=True)


async def test_machine_templates_attach_volumes_and_make_new_ones(client):
    existing = await make_volume(client, 100)
    tpl = (await client.post("volumeTemplates", {"name": "scratch", "volumeConfig": {"capacity": 300}})).json["id"]
    body = {"name": "with volumes", "machineTemplate": {
        "href": client.base + "machineTemplates/small-tiny-linux", "initialState": "STARTED",
        "volumes": [{"href": existing, "initialLocation": "vdc"}],
        "volumeTemplates": [{"href": tpl, "volumeConfig": {"capacity": 500}},  # by reference, overridden
                            {"volumeConfig": {"capacity": 200}, "initialLocation": "vdd"}]}}  # by value
    r = await client.post("machines", body)
    assert r.status == 202, r
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    machine = await client.assert_state(r.headers["Location"], "STARTED")
    listed = (await client.get(machine["id"] + "/volumes")).json["machineVolumes"]
    by_device = {mv["initialLocation"]: mv["volume"]["href"] for mv in listed}
    assert sorted(by_device) == ["vdb", "vdc", "vdd"] and by_device["vdc"] == existing
    capacities = {d: (await client.assert_state(v, "AVAILABLE"))["capacity"] for d, v in by_device.items()}
    assert capacities == {"vdb": 500, "vdc": 100, "vdd": 200}
    compute = client.app[PROVIDER].drivers.compute
    assert sorted(compute.attached(machine["id"].rsplit("/", 1)[1])) == ["vdb", "vdc", "vdd"]
    assert (await client.get(machine["id"] + "/volumes", fmt="xml")).xml is not None
    # A MachineTemplate holding them, stored and read back in XML (<volume href=".." initialLocation=".."/>).
    r = await client.post("machineTemplates", {"name": "t", **{k: v for k, v in body["machineTemplate"].items()
                                                               if k not in ("href", "initialState")},
                                               "machineConfig": {"href": client.base + "machineConfigs/small"}})
    assert r.status == 201, r
    xml = (await client.get(r.headers["Location"], fmt="xml")).xml
    ns = {"c": "http://schemas.dmtf.org/cimi/1"}
    assert xml.find("c:volume", ns).get("initialLocation") == "vdc"
    assert xml.find("c:volumeTemplate/c:volumeConfig/c:capacity", ns).text == "500"
    # Deleting the machine detaches them all and keeps them.
    r = await client.delete(machine["id"])
    assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
    for volume in by_device.values():
        await client.assert_state(volume, "AVAILABLE")


@pytest.mark.parametrize("volumes, volume_templates, status, needle", [
    ([{"href": "volumes/nosuch"}], [], 400, "does not name a Volume of yours"),
    ([], [{"volumeConfig": {"capacity": 3 * GIB_KB}}], 409, "KB free; this needs"),
    ([], [{"volumeConfig": {"capacity": 1}, "initialLocation": "vdb"}] * 2, 400, "'vdb' is taken"),
    ([], [{"volumeConfig": {"capacity": 1}, "initialLocation": "sda"}], 400, "not a guest disk name"),
    ([], [{"initialLocation": "vdb"}], 400, "needs a volumeConfig"),
])
async def test_bad_machine_template_volumes_change_nothing(client, volumes, volume_templates, status, needle):
    before = await client.rows()
    volumes = [{**v, "href": client.base + v["href"]} for v in volumes]
    r = await client.post("machines", {"machineTemplate": {
        "href": client.base + "machineTemplates/small-tiny-linux", "volumes": volumes,
        "volumeTemplates": volume_templates}})
    assert r.status == status and needle in r.json["statusMessage"], r
    assert await client.rows() == before


async def test_a_volume_in_use_is_refused_to_a_new_machine(client):
    volume = await make_volume(client)
    machine = await make_machine(client)
    r = await client.post(machine + "/volumes", {"volume": {"href": volume}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    before = await client.rows()
    r = await client.post("machines", {"machineTemplate": {
        "href": client.base + "machineTemplates/small-tiny-linux", "volumes": [{"href": volume}]}})
    assert r.status == 409 and "in use by Machine" in r.json["statusMessage"]
    assert await client.rows() == before


async def test_volumes_survive_a_restart_of_the_sandbox(tmp_path):
    overrides = {"storage": {"pools": {"default": {"driver": "memory", "capacity_gb": 2}}}}
    client = await make_client(tmp_path, overrides)
    volume = await make_volume(client, 1000)
    await client.client.close()
    client = await make_client(tmp_path, overrides)  # the same state directory: a restarted cimid
    try:
        assert await pool(client).volume(volume.rsplit("/", 1)[1]) == {"capacity_kb": 1000, "format": "raw"}
        machine = await make_machine(client)
        r = await client.post(machine + "/volumes", {"volume": {"href": volume}})
        assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "SUCCESS"
        assert (await pool(client).space())["free_kb"] == 2 * GIB_KB - 1000
    finally:
        await client.client.close()


async def test_xml_bodies_create_volumes_and_templates_with_volumes(client):
    ns = 'xmlns="http://schemas.dmtf.org/cimi/1"'
    r = await client.post("volumes", f"<VolumeCreate {ns}><name>x</name><volumeTemplate><volumeConfig>"
                                     "<capacity>64</capacity></volumeConfig></volumeTemplate></VolumeCreate>")
    assert r.status == 202, r
    await client.wait_job(r.headers["CIMI-Job-URI"])
    volume = r.headers["Location"]
    assert (await client.get(volume)).json["capacity"] == 64
    r = await client.post("machineTemplates", f'<MachineTemplate {ns}><name>t</name>'
                          f'<machineConfig href="{client.base}machineConfigs/small"/>'
                          f'<volume href="{volume}" initialLocation="vdc"/>'
                          '<volumeTemplate initialLocation="vdd"><volumeConfig><capacity>32</capacity></volumeConfig>'
                          '</volumeTemplate></MachineTemplate>')
    assert r.status == 201, r
    doc = (await client.get(r.headers["Location"])).json
    assert doc["volumes"] == [{"href": volume, "initialLocation": "vdc"}]
    assert doc["volumeTemplates"] == [{"initialLocation": "vdd", "volumeConfig": {"capacity": 32}}]


async def test_the_volume_capacity_quota_is_checked_before_any_work(client):
    store = client.app[PROVIDER].store
    await consumers.add(store, "alice", "user", hash_password("alice-pw", 1000))
    await consumers.set_quotas(store, "alice", {"volume_capacity": 1500})
    client.default_headers = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw").decode()}
    volume = await make_volume(client, 1000)
    before = await client.rows()
    r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 600}}})
    assert r.status == 403 and r.json["statusMessage"] == (
        "quota volume_capacity exceeded: 'alice' may use 1500 and uses 1000; this request needs 600 more")
    r = await client.put(volume, {"name": "v", "capacity": 1600})  # growing counts too
    assert r.status == 403 and "needs 600 more" in r.json["statusMessage"]
    assert await client.rows() == before
    usage = (await client.get("cloudEntryPoint")).json["usage"]
    assert usage["volume_capacity"] == {"used": 1000, "limit": 1500}


async def test_failed_jobs_leave_no_volume_or_image_behind(tmp_path):
    client = await make_client(tmp_path, {"server": {"test_api": True}})
    try:
        r = await client.post("testControl/faultRules", {"resourceType": "Volume", "operationKinds": ["create"],
                                                         "message": "the pool broke"})
        assert r.status == 201, r
        r = await client.post("volumes", {"volumeTemplate": {"volumeConfig": {"capacity": 10}}})
        job = await client.wait_job(r.headers["CIMI-Job-URI"])
        assert job["state"] == "FAILED" and "the pool broke" in job["statusMessage"]
        assert (await client.get(r.headers["Location"])).status == 404
        assert pool(client).used_kb == 0
        volume = await make_volume(client, 10)
        r = await client.post("testControl/faultRules", {"resourceType": "Volume", "operationKinds": ["snapshot"]})
        assert r.status == 201, r
        r = await client.post("volumeImages", {"imageLocation": volume})
        assert (await client.wait_job(r.headers["CIMI-Job-URI"]))["state"] == "FAILED"
        assert (await client.get(r.headers["Location"])).status == 404
        assert (await client.get("volumeImages")).json["count"] == 0
        await client.assert_state(volume, "AVAILABLE")
        assert pool(client).used_kb == 10
    finally:
        await client.client.close()


async def test_without_a_storage_pool_volumes_are_not_served(tmp_path):
    client = await make_client(tmp_path, {"storage": {"pools": {}}})
    try:
        assert "volumes" not in (await client.get("cloudEntryPoint")).json
        machine = await make_machine(client, "STOPPED")
        assert (await client.get(machine + "/volumes")).status == 404
        r = await client.post("machines", {"machineTemplate": {
            "href": client.base + "machineTemplates/small-tiny-linux", "volumeTemplates": [
                {"volumeConfig": {"capacity": 1}}]}})
        assert r.status == 400 and "serves no Volumes" in r.json["statusMessage"]
    finally:
        await client.client.close()


async def test_a_volume_has_its_own_event_log(client):
    volume = await make_volume(client, 1024)
    doc = (await client.get(volume)).json
    log = doc["eventLog"]["href"]
    assert (await client.get(volume, fmt="xml")).xml.find("c:eventLog", NS).get("href") == log
    r = await client.put(volume, {"name": "v", "capacity": 2048})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    events = (await client.get(log + "/events")).json["events"]
    assert (await client.get(log)).json["targetResource"]["href"] == volume
    assert [e["content"]["change"] for e in events if e["name"] == "model"] == ["created", "changed"]
    states = [(e["content"]["previous"], e["content"]["state"]) for e in events if e["name"] == "state"]
    assert states == [("CREATING", "AVAILABLE")], states  # a grow keeps the volume AVAILABLE
    # none of them went to the provider's log
    provider = (await client.get("eventLogs/provider/events", params={"$filter": "name='state'"})).json
    assert all(e["content"]["resource"]["href"] != volume for e in provider.get("events", []))


async def test_every_volume_gets_a_disk_and_a_disk_io_meter(tmp_path):
    client = await make_client(tmp_path, {"meters": {"sampling": True, "default_sample_interval": 1},
                                          "storage": {"pools": {"default": {"driver": "memory", "capacity_gb": 2}}}})
    try:
        volume = await make_volume(client, 3000)
        listing = (await client.get(volume + "/meters")).json
        aspects = {m["aspect"].rsplit("/", 1)[-1].rsplit(":", 1)[-1]: m for m in listing["meters"]}
        assert set(aspects) == {"disk", "diskIO"} and listing["count"] == 2
        disk = aspects["disk"]
        assert disk["targetResource"]["href"] == volume and disk["units"] == "kilobyte"
        for _ in range(400):  # the sampler's first rounds: until the disk Meter has a sample
            samples = (await client.get(disk["samples"]["href"])).json
            if samples["count"]:
                break
            await asyncio.sleep(0.05)
        assert samples["samples"][0]["value"] == "3000"  # what it takes of the memory pool: its capacity
        r = await client.delete(volume)
        await client.wait_job(r.headers["CIMI-Job-URI"])
        assert (await client.get(disk["id"])).status == 404  # Meters go with their Volume
        assert (await client.get("meters", params={"$filter": "name='volumes'"})).json["count"] == 0
    finally:
        await client.client.close()


async def test_a_pool_fuller_than_the_mark_raises_one_alarm_until_it_drops_below(tmp_path):
    # A 2 GiB pool, the mark at 50 %, the periodic look far away: the looks after each Job are what counts.
    client = await make_client(tmp_path, {"storage": {
        "full_alarm_percent": 50, "space_check_seconds": 3600,
        "pools": {"default": {"driver": "memory", "capacity_gb": 2}}}})

    async def alarms() -> list[dict]:
        events = (await client.get("eventLogs/provider/events", params={"$filter": "name='alarm'"})).json
        return [e for e in events.get("events", []) if "storage pool 'default'" in e["content"]["detail"]]

    async def after_the_job(count: int) -> list[dict]:
        """The alarms once the look after the last Job has run: it raises the `count`-th by itself, and
        a look of our own (which waits for any look still going) proves nothing more comes."""
        for _ in range(400):
            if len(await alarms()) >= count:
                break
            await asyncio.sleep(0.02)
        await volumes.check_space()
        return await alarms()

    volumes = client.app[PROVIDER].services["volumes"]
    try:
        small = await make_volume(client, GIB_KB // 2)  # 25 %
        assert await after_the_job(0) == []
        big = await make_volume(client, GIB_KB // 2)  # 50 %: at the mark, not over it
        assert await after_the_job(0) == []
        await make_volume(client, 1024)  # just over
        (alarm,) = await after_the_job(1)
        assert alarm["severity"] == "high" and alarm["content"]["resource"]["href"] == client.base + "cloudEntryPoint"
        assert "is 50.0 % full" in alarm["content"]["detail"] and "(50" in alarm["content"]["detail"]
        await make_volume(client, 1024)  # fuller still: no second alarm, nor from the periodic look
        assert len(await after_the_job(1)) == 1
        r = await client.delete(big)  # below the mark: armed again
        await client.wait_job(r.headers["CIMI-Job-URI"])
        assert len(await after_the_job(1)) == 1
        await make_volume(client, GIB_KB // 2)  # over it once more
        assert len(await after_the_job(2)) == 2
        assert (await client.get(small)).json["state"] == "AVAILABLE"
    finally:
        await client.client.close()
