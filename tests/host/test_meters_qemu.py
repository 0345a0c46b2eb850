"""Meters of a real guest on qemu:///system: its default Meters sample CPU, memory and disk from libvirt's
bulk statistics, and its CPU time rises while it runs."""

import asyncio
import copy
import shutil

import libvirt
import pytest
from conftest import assert_state, make_client

from .conftest import HOST_OVERRIDES, URI, domain_names, fresh_dir, remove_domains


@pytest.fixture
async def metered_client(libvirt_host):
    """host_client with the sampler on, every second."""
    root = fresh_dir()
    overrides = {**copy.deepcopy(HOST_OVERRIDES), "meters": {"sampling": True, "default_sample_interval": 1}}
    client = await make_client(root, overrides, profile="host")
    try:
        yield client
    finally:
        await client.client.close()
        left = await asyncio.to_thread(domain_names, "cimid-", str(root) + "/")
        await asyncio.to_thread(remove_domains, left)
        shutil.rmtree(root, ignore_errors=True)


def cpu_time(machine_id: str) -> int:
    conn = libvirt.open(URI)
    try:
        return conn.lookupByName(f"cimid-{machine_id}").getCPUStats(True)[0]["cpu_time"]
    finally:
        conn.close()


async def test_a_running_guest_is_metered_and_its_cpu_time_rises(metered_client, guest_image):
    client = metered_client
    r = await client.post("machineImages", {"name": "guest", "imageLocation": guest_image.as_uri()})
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=60), "SUCCESS")
    r = await client.post("machines", {"name": "metered", "machineTemplate": {
        "machineImage": {"href": r.headers["Location"]}, "machineConfig": {"href": client.base + "machineConfigs/tiny"}}})
    machine = r.headers["Location"]
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"], timeout=90), "SUCCESS")
    before = await asyncio.to_thread(cpu_time, machine.rsplit("/", 1)[1])

    meters = {}
    for _ in range(600):  # until the guest's CPU, memory and disk Meters hold samples (a hang is bounded)
        listing = (await client.get("meters")).json.get("meters", [])
        meters = {m["aspect"].rsplit("/", 1)[-1]: m for m in listing if m["targetResource"]["href"] == machine}
        counts = {a: (await client.get(meters[a]["samples"]["href"])).json["count"]
                  for a in ("cpu", "memory", "disk") if a in meters}
        if len(counts) == 3 and counts["cpu"] >= 3 and counts["memory"] and counts["disk"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the guest's meters never got samples: {sorted(meters)}")
    after = await asyncio.to_thread(cpu_time, machine.rsplit("/", 1)[1])
    assert after > before  # libvirt's own counter, beside the samples

    cpu = [float(s["value"]) for s in (await client.get(meters["cpu"]["samples"]["href"])).json["samples"]]
    assert all(0 <= v <= 100 for v in cpu) and max(cpu) > 0, cpu  # a booting guest under TCG is busy
    memory = [float(s["value"]) for s in (await client.get(meters["memory"]["samples"]["href"])).json["samples"]]
    assert all(v > 0 for v in memory), memory  # the QEMU process's resident memory, KiB
    disk = (await client.get(meters["disk"]["samples"]["href"])).json["samples"]
    assert float(disk[-1]["value"]) > 0  # what the copy-on-write overlay has allocated

    async with client.client.get("/metrics") as resp:
        text = await resp.text()
    assert f'cimid_machine_cpu_percent{{machine="{machine.rsplit("/", 1)[1]}"}}' in text
