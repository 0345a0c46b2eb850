"""The test-control extension (--test-api): off by default, reset, fault rules, determinism, who may use it."""

from __future__ import annotations

import asyncio
import base64
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import DATABASE, assert_state, make_client

from cimid.config import ConfigError
from cimid.http.auth import hash_password
from cimid.http.keys import PROVIDER
from cimid.model.registry import TOP_LEVEL
from cimid.service.events import FaultApplied

ACTION = "http://schemas.dmtf.org/cimi/1/action/"
TEMPLATE = "machineTemplates/small-tiny-linux"
CLOCK = "2030-01-01T00:00:00.000Z"


@pytest.fixture
async def control(tmp_path):
    client = await make_client(tmp_path, {"server": {"test_api": True}})
    yield client
    await client.client.close()


async def machine(client, name="m", initial="STOPPED") -> str:
    r = await client.post("machines", {"name": name, "machineTemplate": {"href": client.base + TEMPLATE,
                                                                         "initialState": initial}})
    assert r.status == 202, r
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    return r.headers["Location"]


async def act(client, url: str, action: str, body: dict | None = None) -> dict:
    r = await client.post(f"{url}/{action}", {"action": ACTION + action, **(body or {})})
    assert r.status == 202, r
    return await client.wait_job(r.headers["CIMI-Job-URI"])


async def rule(client, **attrs) -> dict:
    r = await client.post("testControl/faultRules", attrs)
    assert r.status == 201, r
    return r.json


async def host_state(client, url: str) -> str | None:
    return await client.app[PROVIDER].drivers.compute.state(url.rsplit("/", 1)[1])


async def snapshot(client) -> dict[str, dict]:
    """Every served collection, walked from the CloudEntryPoint (so families added later count too)."""
    entry = (await client.get("cloudEntryPoint")).json
    return {name: (await client.get(entry[name]["href"])).json for name in TOP_LEVEL if name in entry}


async def test_the_test_api_answers_404_when_it_is_not_enabled(app_client):
    for method, path in (("GET", "testControl"), ("POST", "testControl/reset"), ("GET", "testControl/faultRules"),
                         ("POST", "testControl/faultRules"), ("POST", "testControl/clock")):
        r = await app_client.request(method, path, {} if method == "POST" else None)
        assert r.status == 404, (method, path, r)
    assert "extensions" not in (await app_client.get("cloudEntryPoint")).json
    meta = (await app_client.get("resourceMetadata/CloudEntryPoint")).json
    assert not [a for a in meta.get("actions", ()) if "test-control" in a["uri"]]


async def test_it_is_listed_on_the_cloud_entry_point_and_documented_in_resource_metadata(control):
    entry = (await control.get("cloudEntryPoint")).json
    assert entry["extensions"]["testControl"] == {"uri": "urn:x-cimid:extension:test-control",
                                                  "href": control.base + "testControl"}
    await control.get("cloudEntryPoint", fmt="xml")  # validated against DSP8009 by the client
    meta = (await control.get("resourceMetadata/CloudEntryPoint")).json
    documented = {a["name"] for a in meta["actions"] if a["uri"].startswith("urn:x-cimid:extension:test-control")}
    assert documented == {"reset", "faultRules", "addFaultRule", "removeFaultRule", "clock"}
    await control.get("resourceMetadata/CloudEntryPoint", fmt="xml")
    doc = (await control.get("testControl")).json
    assert doc["faultRules"]["href"] == control.base + "testControl/faultRules"


async def test_reset_restores_exactly_the_seeded_catalogue(control):
    assert (await control.post("testControl/reset", {"clock": CLOCK})).status == 200
    seeded = await snapshot(control)
    assert seeded["machineConfigs"]["count"] == 4 and seeded["machines"]["count"] == 0
    # change everything there is to change: machines (on the host too), the catalogue, Jobs, rules
    started = await machine(control, "a", "STARTED")
    await machine(control, "b")
    assert (await control.delete("machineConfigs/tiny")).status == 200
    assert (await control.post("machineConfigs", {"name": "huge", "cpu": 64, "memory": 1024})).status == 201
    assert (await control.post("credentials", {"credentialTemplate": {"userName": "u", "password": "p"}})).status == 201
    template = (await control.get(TEMPLATE)).json
    assert (await control.put(TEMPLATE, {**template, "description": "changed"})).status == 200
    await rule(control, resourceType="Machine", operationKinds=["start"])
    assert await host_state(control, started) == "STARTED"
    db = sqlite3.connect(control.app[DATABASE])  # a sample of some Meter (the sampler is off here)
    db.execute("INSERT INTO samples (meter, ts, value) VALUES ('m', '2026-01-01T00:00:00.000Z', 1)")
    db.commit()
    db.close()
    assert (await control.post("testControl/reset", {"clock": CLOCK})).status == 200
    assert await snapshot(control) == seeded
    db = sqlite3.connect(control.app[DATABASE])
    assert db.execute("SELECT count(*) FROM samples").fetchone()[0] == 0  # samples go with their Meters
    db.close()
    assert (await control.get("jobs")).json["count"] == 0
    assert (await control.get("testControl/faultRules")).json["count"] == 0
    assert await host_state(control, started) is None  # gone from the (fake) host, not only from the store
    assert (await control.app[PROVIDER].drivers.compute.health())["domains"] == "0"
    # and the provider works as after a fresh start
    again = await machine(control, "c", "STARTED")
    await control.assert_state(again, "STARTED")


async def test_reset_ends_running_jobs(control):
    await rule(control, resourceType="Machine", operationKinds=["create"], effect="slow", seconds=3600)
    r = await control.post("machines", {"name": "slow", "machineTemplate": {"href": control.base + TEMPLATE}})
    job_url = r.headers["CIMI-Job-URI"]
    for _ in range(500):
        if (await control.get("testControl/faultRules")).json["faultRules"][0]["remaining"] == 0:
            break
        await asyncio.sleep(0.01)
    assert_state((await control.get(job_url)).json, "RUNNING")
    assert (await control.post("testControl/reset")).status == 200
    assert (await control.get(job_url)).status == 404
    assert not control.app[PROVIDER].jobs.tasks


# The machine lifecycle, every Job-run operation kind once or more, in an order each one allows.
# A restart is its own kind: a stop or start rule does not hit its steps.
LIFECYCLE = ["create", "start", "restart", "pause", "start", "suspend", "start", "stop", "capture", "snapshot",
             "restore", "delete"]


@pytest.mark.parametrize("kind", sorted(set(LIFECYCLE)))
async def test_a_fail_rule_fails_the_first_operation_of_its_kind_and_no_other(control, kind):
    events = []
    control.app[PROVIDER].store.subscribe(events.append)
    await rule(control, resourceType="Machine", operationKinds=[kind], message=f"no {kind} today")
    outcomes = []  # (kind, Job state, statusMessage)
    url = image = None
    for op in LIFECYCLE:
        for attempt in (1, 2):  # a failed operation is tried again: the rule hits only the first
            if op == "create":
                r = await control.post("machines", {"name": "m", "machineTemplate": {
                    "href": control.base + TEMPLATE, "initialState": "STOPPED"}})
                url, job = r.headers["Location"], await control.wait_job(r.headers["CIMI-Job-URI"])
            elif op == "delete":
                r = await control.delete(url)
                job = await control.wait_job(r.headers["CIMI-Job-URI"])
            else:
                body = {"image": {"href": image}} if op == "restore" else None
                r = await control.post(f"{url}/{op}", {"action": ACTION + op, **(body or {})})
                assert r.status == 202, (op, r)
                if op == "capture":
                    image = r.headers["Location"]
                if op == "snapshot":  # a snapshot is a MachineImage too: made, and only the capture restored
                    assert r.headers["Location"] != image
                job = await control.wait_job(r.headers["CIMI-Job-URI"])
            outcomes.append((op, job["state"], job.get("statusMessage", "")))
            if job["state"] == "SUCCESS":
                break
            if op == "create":  # the machine that failed to be made is deleted before the next try
                assert (await control.wait_job((await control.delete(url)).headers["CIMI-Job-URI"]))["state"] \
                    == "SUCCESS"
    failed = [o for o in outcomes if o[1] != "SUCCESS"]
    assert failed == [(kind, "FAILED", f"no {kind} today")], outcomes
    applied = [e for e in events if isinstance(e, FaultApplied)]
    assert [(e.type, e.operation, e.effect, e.message) for e in applied] == [("Machine", kind, "fail",
                                                                             f"no {kind} today")]
    (spent,) = (await control.get("testControl/faultRules")).json["faultRules"]
    assert spent["remaining"] == 0 and applied[0].rule == control.url(spent["id"])
    # and it is a CIMI Event: an alarm in the log of the machine it hit
    alarms = []
    for log in (await control.get("eventLogs")).json["eventLogs"]:
        alarms += (await control.get(log["id"] + "/events", params={"$filter": "name='alarm'"})).json.get(
            "events", [])
    assert [e["content"]["operation"] for e in alarms if e["content"].get("rule") == control.url(spent["id"])] \
        == [kind]


@pytest.fixture
async def importing(tmp_path):
    """A provider that imports images (the `dir` image store, qemu-img), and a small qcow2 to import."""
    directory = Path(tempfile.mkdtemp(prefix="cimid-fault-test-"))
    directory.chmod(0o755)  # as QEMU's user needs
    source = directory / "source.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "1M"], check=True)
    client = await make_client(tmp_path, {"server": {"test_api": True},
                                          "images": {"driver": "dir", "dir": str(directory / "images")}})
    yield client, source.as_uri()
    await client.client.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("kind", ["import", "delete"])
async def test_a_fail_rule_on_images_hits_its_kind_only(importing, kind):
    """An import is a Job; an image's delete is done at once (200, no Job) and fails all the same: 500 with
    the rule's message, the image still there."""
    control, location = importing
    await rule(control, resourceType="MachineImage", operationKinds=[kind], message=f"no {kind} today")
    outcomes = []
    for attempt in (1, 2):
        r = await control.post("machineImages", {"name": f"img{attempt}", "imageLocation": location})
        assert r.status == 202, r
        job = await control.wait_job(r.headers["CIMI-Job-URI"])
        outcomes.append(("import", job["state"], job.get("statusMessage", "")))
        if job["state"] == "SUCCESS":
            image = r.headers["Location"]
            break
        assert (await control.get(r.headers["Location"])).status == 404  # a failed import leaves nothing
    for attempt in (1, 2):
        before = await control.rows()
        r = await control.delete(image)
        # a 5xx's message ends with the request id it is logged under
        outcomes.append(("delete", r.status, r.json["statusMessage"].split(" (request id")[0] if r.status != 200
                         else ""))
        if r.status == 200:
            break
        spent = ("FaultRule", "Event", "EventLog")  # what the applied rule changes, and nothing else
        assert [row for row in await control.rows() if row[0] not in spent] == \
            [row for row in before if row[0] not in spent]
    assert (await control.get(image)).status == 404
    failed = [o for o in outcomes if o[1] not in ("SUCCESS", 200)]
    assert failed == [(kind, "FAILED" if kind == "import" else 500, f"no {kind} today")], outcomes


async def test_a_fail_rule_on_a_catalogue_create_answers_500_and_changes_nothing(control):
    await rule(control, resourceType="MachineConfiguration", operationKinds=["create"], message="catalogue down")
    body = {"name": "big", "cpu": 4, "memory": 4096000, "disks": [{"capacity": 1000000, "format": "qcow2"}]}
    r = await control.post("machineConfigs", {"name": "bad", "cpu": -1})
    assert r.status == 400  # bad input is refused first, and does not spend the rule
    before = (await control.get("machineConfigs")).json["count"]
    r = await control.post("machineConfigs", body)
    assert r.status == 500 and r.json["statusMessage"].startswith("catalogue down (request id ")
    assert (await control.get("machineConfigs")).json["count"] == before
    assert (await control.get("testControl/faultRules")).json["faultRules"][0]["remaining"] == 0
    r = await control.post("machineConfigs", body)  # spent: the next one is made
    assert r.status == 201, r
    # other kinds and types are not hit
    await rule(control, resourceType="MachineConfiguration", operationKinds=["delete"], count=5)
    r = await control.post("machineTemplates", {"name": "t", "machineConfig": {"href": r.headers["Location"]},
                                                "machineImage": {"href": control.base + "machineImages/tiny-linux"}})
    assert r.status == 201, r


async def test_a_fail_rule_leaves_the_host_untouched(control):
    url = await machine(control)
    await rule(control, resourceType="Machine", operationKinds=["start", "delete"], count=2, message="nope")
    job = await act(control, url, "start")
    assert_state(job, "FAILED")
    assert await host_state(control, url) == "STOPPED"
    await control.assert_state(url, "STOPPED")
    job = await control.wait_job((await control.delete(url)).headers["CIMI-Job-URI"])
    assert_state(job, "FAILED")
    assert await host_state(control, url) == "STOPPED"
    assert (await control.get("testControl/faultRules")).json["faultRules"][0]["remaining"] == 0
    assert_state(await act(control, url, "start"), "SUCCESS")  # the rule is spent


async def test_an_error_rule_leaves_the_resource_in_error(control):
    url = await machine(control, initial="STARTED")
    await rule(control, resourceType="Machine", operationKinds=["stop"], effect="error", message="disk on fire")
    job = await act(control, url, "stop")
    assert_state(job, "FAILED")
    assert job["statusMessage"] == "disk on fire"
    await control.assert_state(url, "ERROR")
    assert await host_state(control, url) == "STARTED"  # the host was not asked: the rule says ERROR


async def test_a_slow_rule_holds_the_operation_back_before_it_reaches_the_host(control):
    url = await machine(control)
    await rule(control, resourceType="Machine", operationKinds=["start"], effect="slow", seconds=3600)
    r = await control.post(f"{url}/start", {"action": ACTION + "start"})
    for _ in range(500):  # until the rule was applied: the step is waiting
        if (await control.get("testControl/faultRules")).json["faultRules"][0]["remaining"] == 0:
            break
        await asyncio.sleep(0.01)
    assert_state((await control.get(r.headers["CIMI-Job-URI"])).json, "RUNNING")
    await control.assert_state(url, "STARTING")
    assert await host_state(control, url) == "STOPPED"  # not yet done on the host
    # seconds=0: applied, and the operation then runs as usual
    assert (await control.post("testControl/reset")).status == 200
    url = await machine(control)
    await rule(control, resourceType="Machine", operationKinds=["start"], effect="slow", seconds=0)
    assert_state(await act(control, url, "start"), "SUCCESS")
    assert await host_state(control, url) == "STARTED"


async def test_a_rule_with_a_filter_hits_only_matching_resources(control):
    a, b = await machine(control, "a"), await machine(control, "b")
    await rule(control, resourceType="Machine", operationKinds=["start"], filter="name='b'", count=5)
    assert_state(await act(control, a, "start"), "SUCCESS")
    assert_state(await act(control, b, "start"), "FAILED")
    remaining = (await control.get("testControl/faultRules")).json["faultRules"][0]["remaining"]
    assert remaining == 4


async def test_rules_are_listed_read_and_removed_like_resources(control):
    first = await rule(control, resourceType="Machine", operationKinds=["start"], name="first")
    second = await rule(control, resourceType="Machine", operationKinds="stop", effect="slow", seconds=1.5)
    listed = (await control.get("testControl/faultRules")).json
    assert listed["count"] == 2 and [r["id"] for r in listed["faultRules"]] == [first["id"], second["id"]]
    assert (await control.get(first["id"])).json == first
    assert second["operationKinds"] == ["stop"] and second["seconds"] == 1.5 and second["count"] == 1
    assert (await control.delete(first["id"])).status == 200
    assert (await control.get(first["id"])).status == 404
    assert (await control.delete(first["id"])).status == 404
    assert (await control.get("testControl/faultRules")).json["count"] == 1
    url = await machine(control)
    assert_state(await act(control, url, "start"), "SUCCESS")  # the removed rule no longer applies


@pytest.mark.parametrize("body, says", [
    ({"resourceType": "Nothing", "operationKinds": ["start"]}, "resourceType"),
    ({"resourceType": "Machine", "operationKinds": ["fly"]}, "no operation fly"),
    ({"resourceType": "Machine", "operationKinds": []}, "operationKinds"),
    ({"resourceType": "Machine", "operationKinds": ["start"], "effect": "explode"}, "effect"),
    ({"resourceType": "Machine", "operationKinds": ["start"], "effect": "slow"}, "seconds"),
    ({"resourceType": "Machine", "operationKinds": ["start"], "count": 0}, "count"),
    ({"resourceType": "Machine", "operationKinds": ["start"], "filter": "name=="}, "filter"),
    ({"resourceType": "MachineConfiguration", "operationKinds": ["create"], "effect": "error"}, "ERROR"),
    ({"resourceType": "Machine", "operationKinds": ["start"], "colour": "red"}, "colour"),
])
async def test_a_bad_rule_is_refused(control, body, says):
    r = await control.post("testControl/faultRules", body)
    assert r.status == 400 and says in r.json["statusMessage"], r
    assert (await control.get("testControl/faultRules")).json["count"] == 0


async def test_the_deterministic_mode_gives_the_same_ids_twice(control):
    async def run() -> list:
        assert (await control.post("testControl/reset", {"idSeed": "golden", "clock": CLOCK})).status == 200
        config = (await control.post("machineConfigs", {"name": "c", "cpu": 1, "memory": 1024})).json
        url = await machine(control, initial="STARTED")
        await control.post("testControl/clock", {"advance": 90})
        stopped = await act(control, url, "stop")
        jobs = (await control.get("jobs", params={"$orderby": "created"})).json["jobs"]
        doc = (await control.get(url)).json
        return [config["id"], config["created"], url, doc["created"], doc["updated"], stopped["id"],
                stopped["timeOfStatusChange"], sorted(j["id"] for j in jobs)]

    first, second = await run(), await run()
    assert first == second
    assert first[1] == CLOCK and first[6] == "2030-01-01T00:01:30.000Z"
    assert (await control.post("testControl/reset", {"idSeed": "other"})).status == 200
    other = (await control.post("machineConfigs", {"name": "c", "cpu": 1, "memory": 1024})).json
    assert other["id"] != first[0] and len(other["id"].rsplit("/", 1)[1]) == 32
    # without a seed and a clock: random ids and the system clock again
    assert (await control.post("testControl/reset")).status == 200
    clock = (await control.get("testControl/clock")).json
    assert clock["fixed"] is False and not clock["time"].startswith("2030")
    assert (await control.post("testControl/clock", {"advance": 5})).status == 409


async def test_the_clock_can_be_fixed_and_stepped_without_a_reset(control):
    assert (await control.post("testControl/clock", {"time": "2031-05-01T12:00:00Z"})).json == {
        "time": "2031-05-01T12:00:00.000Z", "fixed": True}
    assert (await control.post("testControl/clock", {"advance": 0.5})).json["time"] == "2031-05-01T12:00:00.500Z"
    assert (await control.post("machineConfigs", {"name": "c", "cpu": 1, "memory": 1})).json["created"] \
        == "2031-05-01T12:00:00.500Z"
    assert (await control.post("testControl/clock", {"advance": -1})).status == 400


async def test_the_test_api_is_refused_beyond_loopback_without_authentication(tmp_path):
    with pytest.raises(ConfigError, match="test-control"):
        await make_client(tmp_path / "open", {"server": {"test_api": True, "listen": "0.0.0.0:8080",
                                                         "insecure": True}})
    users = [{"name": "alice", "role": "admin", "password_hash": hash_password("wonderland", 1000)},
             {"name": "rita", "role": "reader", "password_hash": hash_password("reads", 1000)}]
    client = await make_client(tmp_path / "users", {"server": {"test_api": True, "listen": "0.0.0.0:8080",
                                                              "insecure": True}, "auth": {"users": users}})
    try:
        def basic(name, password):
            return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}
        assert (await client.post("testControl/reset")).status == 401
        assert (await client.post("testControl/reset", headers=basic("rita", "reads"))).status == 403
        assert (await client.post("testControl/reset", headers=basic("alice", "wonderland"))).status == 200
    finally:
        await client.client.close()
