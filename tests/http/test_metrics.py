"""/metrics: Prometheus text that Prometheus's own parser reads, with the host's and each machine's latest
readings, Jobs by state and the requests served; served from the sampler's memory; readers and admins only
by default."""

from __future__ import annotations

import asyncio
import base64

from conftest import make_client
from prometheus_client.parser import text_string_to_metric_families

from cimid.http.auth import hash_password
from cimid.http.keys import PROVIDER
from cimid.store import consumers

PASSWORDS = {"root": "r00t", "alice": "a1ice", "carol": "car0l"}
ROLES = {"root": "admin", "alice": "user", "carol": "reader"}


def who(name: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()}


async def eventually(check, what: str, timeout: float = 20.0):
    """Poll `check()` until it returns something truthy; the deadline only bounds a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)
    return result


async def make_machine(client) -> str:
    r = await client.post("machines", {"machineTemplate": {"href": client.base + "machineTemplates/small-tiny-linux"}})
    await client.wait_job(r.headers["CIMI-Job-URI"])
    return r.headers["Location"]


async def scrape(client, headers=None) -> dict:
    async with client.client.get("/metrics", headers=headers or {}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_metrics_parse_and_carry_host_machine_job_and_request_figures(tmp_path):
    client = await make_client(tmp_path, {"meters": {"sampling": True, "default_sample_interval": 1}})
    try:
        machine = (await make_machine(client)).rsplit("/", 1)[1]
        sampler = client.app[PROVIDER].services["meters"].sampler

        async def both_measured():
            families = await scrape(client)
            cpu = families.get("cimid_machine_cpu_percent")
            if cpu and any(s.labels == {"machine": machine} for s in cpu.samples) and "cimid_host_cpu_percent" in families:
                return families
        families = await eventually(both_measured, "host and machine CPU in /metrics")
        memory = [s for s in families["cimid_machine_memory_used_bytes"].samples if s.labels["machine"] == machine]
        assert memory[0].value == 1024 * 1024 * 1024  # the small configuration's 1 GiB, in bytes
        assert 0 <= families["cimid_host_cpu_percent"].samples[0].value <= 100
        assert families["cimid_host_memory_used_bytes"].type == "gauge"
        jobs = {s.labels["state"]: s.value for s in families["cimid_jobs"].samples}
        assert jobs["SUCCESS"] >= 1 and set(jobs) == {"QUEUED", "RUNNING", "FAILED", "SUCCESS", "STOPPING", "STOPPED"}
        requests = families["cimid_http_requests"]  # the parser drops _total from a counter's family name
        assert requests.type == "counter"
        assert any(s.labels == {"method": "POST", "code": "202"} and s.value >= 1 for s in requests.samples)
        latency = families["cimid_http_request_duration_seconds"]
        count = next(s.value for s in latency.samples if s.name.endswith("_count"))
        inf = next(s.value for s in latency.samples if s.labels.get("le") == "+Inf")
        assert latency.type == "histogram" and count == inf >= 3

        # Served from memory: with the sampler stopped, scrapes still answer and no source is read.
        await sampler.stop()
        read_at = dict(sampler.latest.read_at)
        for _ in range(3):
            again = await scrape(client)
            assert "cimid_machine_cpu_percent" in again
        await asyncio.sleep(0)
        assert sampler.latest.read_at == read_at
        sources = {s.labels["source"] for s in again["cimid_meter_source_last_read_timestamp_seconds"].samples}
        assert sources == {"psutil", "libvirt-test-stats"}
    finally:
        await client.client.close()


async def test_metrics_are_for_admins_and_readers_unless_opened_to_users(tmp_path):
    for access, user_status in (("reader", 403), ("user", 200)):
        client = await make_client(tmp_path / access, {"meters": {"metrics_access": access}})
        try:
            store = client.app[PROVIDER].store
            for name, role in ROLES.items():
                await consumers.add(store, name, role, hash_password(PASSWORDS[name], 1000))
            for name, expected in (("root", 200), ("carol", 200), ("alice", user_status)):
                async with client.client.get("/metrics", headers=who(name)) as resp:
                    assert resp.status == expected, (access, name)
            async with client.client.get("/metrics") as resp:
                assert resp.status == 401
        finally:
            await client.client.close()
