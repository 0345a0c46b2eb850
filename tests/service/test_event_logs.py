"""EventLogs and Events on the sandbox: a state Event with its previous state when the host changes a
machine by itself and when a Job does, an alarm when a Job fails, model and access Events for what
consumers create and delete, summaries, retention, tenancy; written with the change or not at all."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from conftest import assert_state, make_client, who
from test_plugins import RefusingPlugin

from cimid.http.keys import PROVIDER
from cimid.service.events import ModelChanged

CIMI = "http://schemas.dmtf.org/cimi/1"
EVENT = f"{CIMI}/event/"



@pytest.fixture
def client(consumers_client):
    return consumers_client


async def make_machine(client, name: str = "web", as_: str = "root", template: str = "small-tiny-linux") -> dict:
    r = await client.post("machines", {"name": name, "machineTemplate": {
        "href": client.base + f"machineTemplates/{template}"}}, headers=who(as_))
    assert r.status == 202, r
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS", "FAILED")
    return (await client.get(r.headers["Location"])).json


async def events_of(client, log_href: str, kind: str | None = None, as_: str = "root") -> list[dict]:
    params = {"$orderby": "timestamp"}
    if kind:
        params["$filter"] = f"type='{EVENT}{kind}'"
    r = await client.get(log_href + "/events", params=params, headers=who(as_))
    assert r.status == 200, r
    return r.json.get("events", [])


async def test_a_machine_stopped_behind_cimids_back_leaves_a_state_event_in_its_log(client):
    machine = await make_machine(client)
    log = machine["eventLog"]["href"]
    driver = client.app[PROVIDER].drivers.compute
    await driver._call(lambda: driver._require(machine["id"].rsplit("/", 1)[1]).destroy())  # behind cimid's back
    for _ in range(250):
        if (await client.get(machine["id"])).json["state"] == "STOPPED":
            break
        await asyncio.sleep(0.02)
    await client.assert_state(machine["id"], "STOPPED")
    state = await events_of(client, log, "state")
    last = state[-1]
    assert last["content"] == {"resName": "web", "resource": {"href": machine["id"]}, "resType": f"{CIMI}/Machine",
                               "state": "STOPPED", "previous": "STARTED"}
    assert last["severity"] == "low" and last["outcome"] == "Status" and "contact" not in last  # nobody asked
    assert "the machine was powered off" in last["description"]
    # the Job-driven transitions before it are there too, each with its previous state, and who asked
    assert [(e["content"]["previous"], e["content"]["state"]) for e in state] == [
        ("CREATING", "STARTING"), ("STARTING", "STARTED"), ("STARTED", "STOPPED")]
    assert state[0]["contact"] == "root"
    # the log, its events and one Event validate in XML (the client checks every XML body against the XSD)
    doc = await client.get(log, fmt="xml")
    assert doc.xml.findtext(f"{{{CIMI}}}summary/{{{CIMI}}}low") == str(len(await events_of(client, log)))
    assert (await client.get(log + "/events", fmt="xml")).xml is not None
    one = await client.get(last["id"], fmt="xml")
    assert one.xml.findtext(f"{{{CIMI}}}content/{{{CIMI}}}previous") == "STARTED"
    assert one.xml.find(f"{{{CIMI}}}content/{{{CIMI}}}resource").get("href") == machine["id"]
    assert (await client.get(machine["id"], fmt="xml")).xml.find(f"{{{CIMI}}}eventLog").get("href") == log


async def test_a_failed_job_raises_an_alarm_on_its_machine(tmp_path):
    client = await make_client(tmp_path, {"compute": {"driver": "refusing"}}, extra_plugins=(RefusingPlugin(),))
    try:
        r = await client.post("machines", {"name": "doomed", "machineTemplate": {
            "href": client.base + "machineTemplates/small-tiny-linux"}})
        job = assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "FAILED")
        machine = (await client.get(r.headers["Location"])).json
        (alarm,) = await events_of(client, machine["eventLog"]["href"], "alarm")
        assert alarm["severity"] == "high" and alarm["outcome"] == "Failure"
        assert alarm["content"]["resource"] == {"href": machine["id"]} and alarm["content"]["resName"] == "doomed"
        assert alarm["content"]["code"] == job["returnCode"] != 0 and "no room" in alarm["content"]["detail"]
        states = await events_of(client, machine["eventLog"]["href"], "state")
        assert states[-1]["content"]["state"] == "ERROR" and states[-1]["severity"] == "critical"
        summary = (await client.get(machine["eventLog"]["href"])).json["summary"]
        assert summary["high"] == 1 and summary["critical"] == 1
    finally:
        await client.client.close()


async def test_create_and_delete_are_model_events_with_who_asked_and_the_log_outlives_its_machine(client):
    machine = await make_machine(client, "short-lived", as_="alice")
    log = machine["eventLog"]["href"]
    r = await client.delete(machine["id"], headers=who("alice"))
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    assert (await client.get(machine["id"])).status == 404
    model = await events_of(client, log, "model", as_="alice")
    assert [(e["content"]["change"], e["contact"]) for e in model] == [("created", "alice"), ("deleted", "alice")]
    assert model[1]["severity"] == "medium"
    access = await events_of(client, log, "access", as_="alice")
    assert [(e["content"]["operation"], e["content"]["initiator"]) for e in access] == [
        ("add", "alice"), ("delete", "alice")]
    assert all(e["content"]["resource"] == {"href": machine["id"]} for e in access)
    doc = (await client.get(log, headers=who("alice"))).json
    assert doc["targetResource"] == {"href": machine["id"]}
    # a catalogue entry has no log of its own: its Events go to the provider's
    r = await client.post("machineConfigs", {"name": "mine", "cpu": 1, "memory": 1024}, headers=who("alice"))
    provider = await events_of(client, "eventLogs/provider", "model", as_="alice")
    assert provider[-1]["content"]["resource"] == {"href": r.headers["Location"]}


async def test_the_summary_counts_what_the_log_holds_by_severity(client):
    machine = await make_machine(client)
    for action in ("stop", "start"):
        r = await client.post(f"{machine['id']}/{action}", {"action": f"{CIMI}/action/{action}"})
        assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    events = await events_of(client, machine["eventLog"]["href"])
    counted = {severity: sum(e["severity"] == severity for e in events) for severity in ("low", "medium", "high",
                                                                                           "critical")}
    assert (await client.get(machine["eventLog"]["href"])).json["summary"] == counted
    assert counted["low"] == len(events) > 6
    listed = (await client.get("eventLogs")).json["eventLogs"]
    assert next(log for log in listed if log["id"] == machine["eventLog"]["href"])["summary"] == counted


async def test_retention_honours_each_logs_persistence(client):
    machine = await make_machine(client)
    log = machine["eventLog"]["href"]
    doc = (await client.get(log)).json
    assert doc["persistence"] == "weekly"  # events.persistence
    r = await client.put(log, {"name": doc["name"], "persistence": "daily"})
    assert r.status == 200, r
    events = client.app[PROVIDER].services["events"]
    provider_count = len(await events_of(client, "eventLogs/provider"))
    await events.sweep(at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    assert len(await events_of(client, log)) > 0  # younger than a day
    await events.sweep(at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    assert await events_of(client, log) == []
    assert (await client.get(log)).json["summary"] == {"low": 0, "medium": 0, "high": 0, "critical": 0}
    assert len(await events_of(client, "eventLogs/provider")) >= provider_count  # weekly: all kept
    # a log whose machine is gone goes with its last Event
    r = await client.delete(machine["id"])
    assert_state(await client.wait_job(r.headers["CIMI-Job-URI"]), "SUCCESS")
    await events.sweep(at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    assert (await client.get(log)).status == 404
    await events.sweep(at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400))
    assert (await client.get("eventLogs/provider")).status == 200  # the provider's own log stays


async def test_a_machine_template_s_event_log_template_sets_the_persistence(client):
    r = await client.post("eventLogTemplates", {"name": "a month", "persistence": "monthly"})
    assert r.status == 201, r
    r = await client.post("machineTemplates", {
        "name": "kept a month", "machineConfig": {"href": client.base + "machineConfigs/small"},
        "machineImage": {"href": client.base + "machineImages/tiny-linux"},
        "eventLogTemplate": {"href": r.headers["Location"]}})
    assert r.status == 201, r
    machine = await make_machine(client, template=r.headers["Location"].rsplit("/", 1)[1])
    assert (await client.get(machine["eventLog"]["href"])).json["persistence"] == "monthly"
    assert (await client.post("eventLogTemplates", {"persistence": "forever"})).status == 400


async def test_another_consumer_sees_none_of_them(client):
    machine = await make_machine(client, "alices", as_="alice")
    log = machine["eventLog"]["href"]
    mine = await events_of(client, log, as_="alice")
    assert mine and all(e["id"].startswith(log + "/events/") for e in mine)
    assert (await client.get(log, headers=who("bob"))).status == 404
    assert (await client.get(log + "/events", headers=who("bob"))).status == 404
    assert (await client.get(mine[0]["id"], headers=who("bob"))).status == 404
    assert (await client.put(log, {"persistence": "daily"}, headers=who("bob"))).status == 404
    listed = (await client.get("eventLogs", headers=who("bob"))).json
    assert [item["id"] for item in listed.get("eventLogs", ())] == [client.base + "eventLogs/provider"]
    # the provider's log is everyone's; in it each consumer sees its own Events only
    await client.post("machineConfigs", {"name": "alice-conf", "cpu": 1, "memory": 1}, headers=who("alice"))
    assert any(e["content"].get("resName") == "alice-conf"
               for e in await events_of(client, "eventLogs/provider", as_="alice"))
    assert await events_of(client, "eventLogs/provider", as_="bob") == []
    assert (await client.get("eventLogs/provider", headers=who("bob"))).json["summary"] == {
        "low": 0, "medium": 0, "high": 0, "critical": 0}
    filtered = await client.get("eventLogs/provider/events", params={"$filter": "severity='low'"}, headers=who("bob"))
    assert filtered.json["count"] == 0
    assert len(await events_of(client, log, as_="root")) == len(mine)  # an admin sees everything


async def test_a_change_that_rolls_back_leaves_no_event(client):
    store = client.app[PROVIDER].store
    before = await client.rows()
    published = []
    store.subscribe(published.append)
    with pytest.raises(RuntimeError):
        async with store.write() as tx:
            tx.emit(ModelChanged("MachineConfiguration", "machineConfigs/small", "changed", "no"))
            raise RuntimeError("the change fails after recording it")
    assert await client.rows() == before and published == []
    # a refused request is no change either: nothing recorded
    r = await client.post("machines/nosuch/stop", {"action": f"{CIMI}/action/stop"})
    assert r.status == 404 and await client.rows() == before
    async with store.write() as tx:  # and one that commits writes its Event in the same transaction
        tx.emit(ModelChanged("MachineConfiguration", "machineConfigs/small", "changed", "yes"))
    after = await client.rows()
    assert [row[0] for row in after[len(before):]] == ["Event"]
    assert any(e.__class__.__name__ == "EventStored" for e in published)
