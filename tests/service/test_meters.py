"""Meters on the sandbox: default Meters for every Machine and the host, samples recorded by the sampler,
stop and start, retention, $filter and paging on samples, XML, tenancy, and host samples against psutil."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

import psutil
import pytest
from conftest import NS, make_client

from cimid.http.auth import hash_password
from cimid.http.keys import PROVIDER
from cimid.store import consumers, samples

CIMI = "http://schemas.dmtf.org/cimi/1"
SAMPLING = {"meters": {"sampling": True, "default_sample_interval": 1}}
MACHINE_ASPECTS = {"cpu", "memory", "disk", "inputBandwidth", "outputBandwidth"}
PASSWORDS = {"root": "r00t", "alice": "a1ice", "bob": "b0b", "carol": "car0l"}
ROLES = {"root": "admin", "alice": "user", "bob": "user", "carol": "reader"}


def who(name: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()}


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.fixture
async def client(tmp_path):
    client = await make_client(tmp_path, SAMPLING)
    yield client
    await client.client.close()


def sampler(client):
    return client.app[PROVIDER].services["meters"].sampler


async def eventually(check, what: str, timeout: float = 20.0):
    """Poll `check()` until it returns something truthy; the deadline only bounds a hang, nothing is timed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


async def make_machine(client, headers=None) -> str:
    r = await client.post("machines", {"machineTemplate": {"href": client.base + "machineTemplates/small-tiny-linux"}},
                          headers=headers)
    assert r.status == 202, r
    await client.wait_job(r.headers["CIMI-Job-URI"])
    return r.headers["Location"]


async def meters_of(client, target: str, headers=None) -> dict[str, dict]:
    listing = (await client.get("meters", headers=headers)).json
    return {m["aspect"].rsplit("/", 1)[-1].rsplit(":", 1)[-1]: m for m in listing.get("meters", [])
            if m["targetResource"]["href"] == target}


async def sample_count(client, meter: dict) -> int:
    return (await client.get(meter["samples"]["href"])).json["count"]


async def rounds_pass(client, n: int) -> None:
    """Wait until the sampler has stored samples `n` more times."""
    start = sampler(client).rounds

    async def passed():
        return sampler(client).rounds >= start + n
    await eventually(passed, f"{n} sampling rounds")


async def test_every_machine_gets_default_meters_whose_samples_appear(client):
    machine = await make_machine(client)

    async def six():
        found = await meters_of(client, machine)
        return found if len(found) == 6 else None
    meters = await eventually(six, "the six default Meters of a new Machine")
    assert set(meters) == MACHINE_ASPECTS | {"diskIO"}
    cpu = meters["cpu"]
    assert cpu["units"] == "percent" and cpu["timeScope"] == "Interval" and cpu["intervalDuration"] == "PT1S"
    assert cpu["sampleInterval"] == 1 and cpu["isContinuous"] is True and cpu["minValue"] == "0"
    assert {"rel": f"{CIMI}/action/stop", "href": cpu["id"] + "/stop"} in cpu["operations"]

    async def cpu_sampled():
        return await sample_count(client, cpu) >= 2
    await eventually(cpu_sampled, "two CPU samples")
    values = [float(s["value"]) for s in (await client.get(cpu["samples"]["href"])).json["samples"]]
    assert all(0 <= v <= 100 for v in values)
    # The sandbox machine has the small configuration's 1 GiB: its memory samples say so, in KiB.
    memory = (await client.get(meters["memory"]["samples"]["href"])).json["samples"]
    assert memory and {s["value"] for s in memory} == {str(1024 * 1024)}
    r = await client.get(cpu["id"], fmt="xml")
    assert r.status == 200 and r.xml.find("c:samples", NS).get("href") == cpu["samples"]["href"]


async def test_the_host_is_metered_from_the_cloud_entry_point_and_matches_psutil(client):
    cep = client.base + "cloudEntryPoint"

    async def host_samples():
        found = await meters_of(client, cep)
        if len(found) == 6 and all([await sample_count(client, found[a]) for a in ("memory", "disk")]):
            return found
    meters = await eventually(host_samples, "host memory and disk samples")
    await sampler(client).stop()  # so that psutil is read right after the sampler's last reading
    memory = (await client.get(meters["memory"]["samples"]["href"])).json["samples"][-1]
    disk = (await client.get(meters["disk"]["samples"]["href"])).json["samples"][-1]
    own_memory = psutil.virtual_memory()
    own_disk = psutil.disk_usage(str(client.state_dir))
    # The same quantity of the same host in the same unit (KiB in use, total minus available): memory moves
    # by a little between the two reads, never by a tenth of the host, as it would for a wrong definition.
    assert abs(float(memory["value"]) - (own_memory.total - own_memory.available) / 1024) < own_memory.total / 1024 / 10
    assert abs(float(disk["value"]) - own_disk.used / 1024) < own_disk.total / 1024 / 100
    assert meters["memory"]["units"] == "kibibyte" and meters["disk"]["units"] == "kilobyte"


async def test_stop_halts_sampling_and_start_resumes_it(client):
    machine = await make_machine(client)

    async def have_memory():
        found = await meters_of(client, machine)
        return found.get("memory")
    meter = await eventually(have_memory, "a memory meter")
    r = await client.post(meter["id"] + "/stop")
    assert r.status == 200 and r.json["state"] == "SUCCESS", r
    stopped = (await client.get(meter["id"])).json
    assert stopped["stopTime"] and {"rel": f"{CIMI}/action/start", "href": meter["id"] + "/start"} in stopped["operations"]
    assert (await client.post(meter["id"] + "/stop")).status == 409
    count = await sample_count(client, meter)
    await rounds_pass(client, 3)  # the other Meters go on being sampled meanwhile
    assert await sample_count(client, meter) == count
    assert (await client.post(meter["id"] + "/start")).status == 200
    assert "stopTime" not in (await client.get(meter["id"])).json

    async def more():
        return await sample_count(client, meter) > count
    await eventually(more, "samples after start")


async def test_samples_filter_on_timestamp_and_page_with_first_and_last(client):
    machine = await make_machine(client)

    async def have_cpu():
        return (await meters_of(client, machine)).get("cpu")
    meter = await eventually(have_cpu, "a cpu meter")
    assert (await client.post(meter["id"] + "/stop")).status == 200
    meter_id = meter["id"].rsplit("/", 1)[1]
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    store = client.app[PROVIDER].store
    async with store.write() as tx:  # a known series: one a minute for 200 minutes, value = the minute
        await samples.add(tx, [(meter_id, stamp(start + dt.timedelta(minutes=m)), float(m)) for m in range(200)])
    href = meter["samples"]["href"]
    r = await client.get(href, params={"$filter": "timestamp >= 2020-01-01T01:40:00Z and timestamp < '2020-01-01T02:00:00Z'"})
    assert r.json["count"] == 20 and [s["value"] for s in r.json["samples"]] == [str(m) for m in range(100, 120)]
    r = await client.get(href, params={"$filter": "timestamp >= 2020-01-01T01:00:00Z", "$first": "3", "$last": "5"})
    assert r.json["count"] == 140 and [s["value"] for s in r.json["samples"]] == ["62", "63", "64"]
    r = await client.get(href, params={"$filter": "timestamp < 2020-01-01T12:00:00Z", "$orderby": "timestamp:desc",
                                       "$last": "2"})
    assert [s["value"] for s in r.json["samples"]] == ["199", "198"]
    r = await client.get(href, params={"$filter": "value > '197'"})  # a string in CIMI, compared as a number
    assert r.json["count"] == 2
    assert (await client.get(href, params={"$filter": "timestamp > 'soon'"})).status == 400
    assert (await client.get(href, params={"$filter": "color = 'red'"})).status == 400
    one = r.json["samples"][0]
    assert one["id"] == f"{href}/{one['timestamp']}"
    got = await client.get(one["id"])
    assert got.status == 200 and got.json == {"resourceURI": f"{CIMI}/Sample", **one}
    assert (await client.get(f"{href}/2019-01-01T00:00:00.000Z")).status == 404
    xml = await client.get(href, fmt="xml", params={"$last": "3"})
    assert xml.status == 200 and len(xml.xml.findall("c:Sample/c:sample", NS)) == 3
    item = await client.get(one["id"], fmt="xml")
    assert item.xml.find("c:sample", NS).get("value") == one["value"]


async def test_retention_drops_samples_by_age_and_by_database_size(tmp_path):
    client = await make_client(tmp_path, {"meters": {"sampling": False, "retention_hours": 1, "max_database_mb": 1}})
    try:
        store = client.app[PROVIDER].store
        service = client.app[PROVIDER].services["meters"]
        now = dt.datetime.now(dt.timezone.utc)
        async with store.write() as tx:
            await samples.add(tx, [("old", stamp(now - dt.timedelta(hours=2, seconds=s)), 1.0) for s in range(100)])
            await samples.add(tx, [(f"m{s % 50}", stamp(now - dt.timedelta(seconds=s)), 2.0) for s in range(60000)])
        assert await samples.used_bytes(store) > 2 * 2**20
        dropped = await service.sampler.trim()
        assert dropped > 100
        assert await samples.used_bytes(store) <= 2**20
        assert (await samples.page(store, "old"))[0] == 0
        # what is kept is the newest
        kept = [(await samples.page(store, f"m{m}"))[0] for m in range(50)]
        assert 0 < sum(kept) < 60000
        newest = stamp(now)
        count, rows = await samples.page(store, "m0", orderby=["timestamp:desc"], last=1)
        assert rows[0][0] == newest
    finally:
        await client.client.close()


async def test_meters_go_with_their_machine(client):
    machine = await make_machine(client)
    assert len(await meters_of(client, machine)) == 6  # made in the machine's own transaction

    async def six():
        found = await meters_of(client, machine)
        return found if len(found) == 6 and await sample_count(client, found["memory"]) else None
    meters = await eventually(six, "default meters with samples")
    r = await client.delete(machine)
    await client.wait_job(r.headers["CIMI-Job-URI"])

    assert not await meters_of(client, machine)  # removed in the transaction that deleted the machine
    assert (await client.get(meters["memory"]["samples"]["href"])).status == 404
    meter_id = meters["memory"]["id"].rsplit("/", 1)[1]
    assert (await samples.page(client.app[PROVIDER].store, meter_id))[0] == 0


async def test_meters_made_from_templates_and_refused_ones(client):
    base = client.base
    machine = await make_machine(client)
    r = await client.post("meterConfigs", {"name": "slow cpu", "aspect": f"{CIMI}/aspect/cpu", "sampleInterval": 60})
    assert r.status == 201 and r.json["units"] == "percent" and r.json["timeScope"] == "Interval", r
    config = r.headers["Location"]
    r = await client.post("meterTemplates", {"name": "t", "targetResource": {"href": machine},
                                             "meterConfig": {"href": config}})
    assert r.status == 201 and r.json["targetResource"]["href"] == machine, r
    r = await client.post("meters", {"name": "mine", "meterTemplate": {"href": r.headers["Location"]}}, fmt="xml")
    assert r.status == 201 and r.xml.find("c:sampleInterval", NS).text == "60", r
    meter = (await client.get(r.headers["Location"])).json
    assert meter["name"] == "mine" and meter["targetResource"]["href"] == machine
    r = await client.put(meter["id"], {**{k: v for k, v in meter.items() if k != "operations"}, "sampleInterval": 5,
                                       "expiresTime": "2100-01-01T00:00:00+02:00"})
    assert r.status == 200 and r.json["sampleInterval"] == 5 and r.json["expiresTime"] == "2099-12-31T22:00:00.000Z"
    assert r.json["aspect"] == f"{CIMI}/aspect/cpu"  # fixed once made
    refused = [
        {"aspect": f"{CIMI}/aspect/happiness"},
        {"aspect": f"{CIMI}/aspect/cpu", "units": "bits"},
        {"aspect": f"{CIMI}/aspect/memory", "timeScope": "Interval"},
    ]
    for body in refused:
        assert (await client.post("meterConfigs", body)).status == 400, body
    by_value = {"meterConfig": {"href": base + "meterConfigs/cpu"}}
    assert (await client.post("meters", {"meterTemplate": by_value})).status == 400  # no target
    assert (await client.post("meters", {"meterTemplate": {**by_value, "targetResource": {
        "href": base + "machines/nosuch"}}})).status == 400
    assert (await client.post("meters", {"meterTemplate": {**by_value, "targetResource": {
        "href": base + "machineConfigs/small"}}})).status == 400
    r = await client.post("meters", {"meterTemplate": {**by_value, "targetResource": {"href": base + "cloudEntryPoint"}}})
    assert r.status == 201 and r.json["targetResource"]["href"] == base + "cloudEntryPoint"
    r = await client.get("resourceMetadata/Meter")
    assert {c["name"] for c in r.json["capabilities"]} == {"MeterConfigByValue", "MeterTemplateByValue"}
    assert {a["name"] for a in r.json["actions"]} == {"start", "stop"}
    for collection in ("meters", "meterTemplates", "meterConfigs"):
        assert (await client.get(collection, fmt="xml", params={"$expand": "*"})).xml is not None


async def test_a_consumer_sees_only_the_meters_of_its_own_machines(client):
    store = client.app[PROVIDER].store
    for name, role in ROLES.items():
        await consumers.add(store, name, role, hash_password(PASSWORDS[name], 1000))
    client.default_headers = who("root")
    mine = await make_machine(client, headers=who("alice"))
    theirs = await make_machine(client, headers=who("bob"))

    async def both():
        return len(await meters_of(client, mine)) == 6 and len(await meters_of(client, theirs)) == 6
    await eventually(both, "default meters for both machines")
    alice = who("alice")
    listing = (await client.get("meters", headers=alice)).json
    assert listing["count"] == 6 and {m["targetResource"]["href"] for m in listing["meters"]} == {mine}
    other = (await meters_of(client, theirs))["memory"]
    assert (await client.get(other["id"], headers=alice)).status == 404
    assert (await client.get(other["samples"]["href"], headers=alice)).status == 404
    assert (await client.post(other["id"] + "/stop", headers=alice)).status == 404
    by_value = {"meterConfig": {"href": client.base + "meterConfigs/cpu"}}
    assert (await client.post("meters", {"meterTemplate": {**by_value, "targetResource": {"href": theirs}}},
                              headers=alice)).status == 400
    assert (await client.post("meters", {"meterTemplate": {**by_value, "targetResource": {
        "href": client.base + "cloudEntryPoint"}}}, headers=alice)).status == 403
    assert (await client.get("meters", headers=who("carol"))).json["count"] == 18  # two machines and the host
    assert (await client.get("meters", headers=alice, params={"$filter": "units = 'percent'"})).json["count"] == 1
    own = (await meters_of(client, mine, headers=alice))["cpu"]
    assert (await client.post(own["id"] + "/stop", headers=alice)).status == 200


async def test_a_machine_lists_its_meters_at_its_meters_link(client):
    machine, other = await make_machine(client), await make_machine(client)
    doc = (await client.get(machine)).json
    assert doc["meters"] == {"href": machine + "/meters"}
    listing = (await client.get(doc["meters"]["href"])).json
    assert listing["id"] == machine + "/meters" and listing["count"] == 6
    assert {m["id"] for m in listing["meters"]} == {m["id"] for m in (await meters_of(client, machine)).values()}
    assert "operations" not in listing  # made at /meters, not here
    percent = await client.get(doc["meters"]["href"], params={"$filter": "units = 'percent'", "$select": "aspect"})
    assert percent.json["count"] == 1 and set(percent.json["meters"][0]) == {"resourceURI", "aspect"}
    r = await client.get(doc["meters"]["href"], fmt="xml")  # validated against DSP8009 by the client
    assert r.status == 200 and len(r.xml.findall("c:Meter", NS)) == 6
    assert (await client.get(machine, fmt="xml")).xml.find("c:meters", NS).get("href") == machine + "/meters"
    before = await client.rows()
    r = await client.post(doc["meters"]["href"], {"meterTemplate": {"href": client.base + "meterTemplates/host-cpu"}})
    assert r.status == 405 and r.headers["Allow"] == "GET"
    assert await client.rows() == before
    assert (await client.get(client.base + "machines/nothing/meters")).status == 404
    assert (await client.get(other + "/meters")).json["count"] == 6
