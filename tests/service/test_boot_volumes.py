"""A Machine that boots from a Volume (sandbox: memory pool, libvirt's test driver): a machineTemplate
without a machineImage whose volumeTemplates (or volumes) name a bootable one. That volume is the
machine's vda; it cannot be detached while the machine lives, the machine is not captured or restored
through its own disk, and the volume outlives the machine. Refused requests change nothing."""

from __future__ import annotations

import pytest
from conftest import assert_error, assert_state, make_client

from cimid.http.keys import PROVIDER

from test_volumes import make_volume

CAPTURE = "http://schemas.dmtf.org/cimi/1/action/capture"


@pytest.fixture
async def client(tmp_path):
    client = await make_client(tmp_path)
    yield client
    await client.client.close()


async def bootable_image(client, bootable=True) -> str:
    volume = await make_volume(client, 4096)
    r = await client.post("volumeImages", {"name": "root", "imageLocation": volume, "bootable": bootable})
    assert r.status == 202, r
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    return r.headers["Location"]


def template(client, **extra):
    return {"machineTemplate": {"machineConfig": {"href": client.base + "machineConfigs/small"},
                                "initialState": "STARTED", **extra}}


async def test_a_machine_boots_from_a_volume_made_from_a_bootable_image(client):
    image = await bootable_image(client)
    r = await client.post("machines", template(client, volumeTemplates=[
        {"volumeConfig": {"capacity": 8192}, "volumeImage": {"href": image}},
        {"volumeConfig": {"capacity": 1024}}]))
    assert r.status == 202, r
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    machine = r.headers["Location"]
    await client.assert_state(machine, "STARTED")
    attached = {mv["initialLocation"]: mv for mv in (await client.get(machine + "/volumes")).json["machineVolumes"]}
    assert set(attached) == {"vda", "vdb"}
    boot = (await client.get(attached["vda"]["volume"]["href"])).json
    assert boot["bootable"] is True and boot["capacity"] == 8192 and boot["state"] == "AVAILABLE"
    machine_id = machine.rsplit("/", 1)[1]
    assert set(client.app[PROVIDER].drivers.compute.attached(machine_id)) == {"vda", "vdb"}

    rows = await client.rows()
    message = assert_error(await client.delete(attached["vda"]["id"]), 409)
    assert "boot disk" in message
    message = assert_error(await client.post(machine + "/capture", {"action": CAPTURE}), 409)
    assert "boots from a Volume" in message
    assert await client.rows() == rows

    r = await client.delete(machine)
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    await client.assert_state(boot["id"], "AVAILABLE")  # the volume outlives its machine


async def test_an_existing_bootable_volume_boots_a_machine(client):
    image = await bootable_image(client)
    volume = await make_volume(client, 4096, volumeImage={"href": image})
    r = await client.post("machines", template(client, volumes=[{"href": volume}]))
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    attached = (await client.get(r.headers["Location"] + "/volumes")).json["machineVolumes"]
    assert [(mv["initialLocation"], mv["volume"]["href"]) for mv in attached] == [("vda", volume)]


@pytest.mark.parametrize("extra, words", [
    ({}, "needs a machineImage, or a bootable volume"),
    ({"volumeTemplates": [{"volumeConfig": {"capacity": 1024}}]}, "none of its volumes is bootable"),
])
async def test_without_an_image_or_a_bootable_volume_nothing_is_made(client, extra, words):
    await bootable_image(client, bootable=False)
    rows = await client.rows()
    assert words in assert_error(await client.post("machines", template(client, **extra)), 400)
    assert await client.rows() == rows


async def test_a_snapshot_that_is_not_bootable_boots_nothing(client):
    image = await bootable_image(client, bootable=False)
    rows = await client.rows()
    message = assert_error(await client.post("machines", template(client, volumeTemplates=[
        {"volumeConfig": {"capacity": 4096}, "volumeImage": {"href": image}}])), 400)
    assert "none of its volumes is bootable" in message
    assert await client.rows() == rows
