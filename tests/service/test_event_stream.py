"""The live stream of Events over HTTP (Server-Sent Events): listed on the CloudEntryPoint and in
ResourceMetadata, each Event as it is committed, $filter, resumption by Last-Event-ID with exactly the
missed Events, and each consumer's scope."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from conftest import who


CIMI = "http://schemas.dmtf.org/cimi/1"
STREAM = "urn:x-cimid:operation:eventStream"
WAIT = 10.0  # generous: an Event normally arrives within milliseconds



@pytest.fixture
def client(consumers_client):
    return consumers_client


class Listener:
    """One SSE connection: (id, Event document) as they come."""

    def __init__(self, response):
        self.response = response

    async def next(self) -> tuple[str, dict]:
        event_id, data = None, None
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), WAIT)).decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                return event_id, data

    def close(self) -> None:
        self.response.close()


async def listen(client, as_: str = "root", params=None, last_id: str | None = None) -> Listener:
    headers = {**who(as_), "Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    response = await client.client.get("/cimi/eventStream", headers=headers, params=params)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert (await asyncio.wait_for(response.content.readline(), WAIT)).startswith(b":")  # open
    return Listener(response)


async def make_config(client, name: str, as_: str = "root") -> str:
    r = await client.post("machineConfigs", {"name": name, "cpu": 1, "memory": 1024}, headers=who(as_))
    assert r.status == 201, r
    return r.headers["Location"]


async def test_the_stream_is_listed_on_the_entry_point_and_in_resource_metadata(client):
    cep = (await client.get("cloudEntryPoint")).json
    assert {"rel": STREAM, "href": client.base + "eventStream"} in cep["operations"]
    xml = (await client.get("cloudEntryPoint", fmt="xml")).xml  # validated against the XSD
    assert xml.find(f"{{{CIMI}}}operation[@rel='{STREAM}']").get("href") == client.base + "eventStream"
    meta = (await client.get("resourceMetadata/CloudEntryPoint")).json
    (action,) = [a for a in meta["actions"] if a["uri"] == STREAM]
    assert action["method"] == "GET" and action["outputMessage"] == "text/event-stream"
    assert (await client.post("eventStream", {})).status == 405
    head = await client.request("HEAD", "eventStream")
    assert head.status == 200 and head.headers["Content-Type"].startswith("text/event-stream") and not head.body


async def test_a_client_sees_each_event_as_it_is_committed(client):
    listener = await listen(client)
    try:
        config = await make_config(client, "streamed")
        first_id, access = await listener.next()
        second_id, model = await listener.next()
        assert access["type"] == f"{CIMI}/event/access" and access["content"]["initiator"] == "root"
        assert model["type"] == f"{CIMI}/event/model" and model["content"]["resource"] == {"href": config}
        assert int(second_id) > int(first_id)
        assert (await client.get(model["id"])).json == model  # the very Event, as stored
    finally:
        listener.close()


async def test_a_client_that_reconnects_gets_exactly_what_it_missed(client):
    listener = await listen(client)
    await make_config(client, "before")
    seen = [await listener.next(), await listener.next()]
    listener.close()
    provider_log = "eventLogs/provider/events"
    known = {e["id"] for e in (await client.get(provider_log)).json["events"]}
    missed_configs = [await make_config(client, f"missed-{i}") for i in range(3)]
    missed = [e["id"] for e in (await client.get(provider_log, params={"$orderby": "timestamp"})).json["events"]
              if e["id"] not in known]
    assert len(missed) == 6  # an access and a model Event each
    listener = await listen(client, last_id=seen[-1][0])
    try:
        got = [await listener.next() for _ in missed]
        assert [doc["id"] for _, doc in got] == missed
        assert [doc["content"]["resource"]["href"] for _, doc in got if doc["content"].get("change")] == missed_configs
        sentinel = await make_config(client, "after")  # and then the stream goes on live, with nothing extra
        _, next_one = await listener.next()
        assert next_one["content"]["resource"] == {"href": sentinel}
    finally:
        listener.close()


async def test_filter_on_the_stream_and_bad_requests(client):
    listener = await listen(client, params={"$filter": f"type='{CIMI}/event/model' and severity='medium'"})
    try:
        await make_config(client, "made")  # access and model (low): not for this listener
        doomed = await make_config(client, "deleted")
        assert (await client.delete(doomed)).status == 200
        _, deleted = await listener.next()
        assert deleted["content"]["change"] == "deleted" and deleted["content"]["resource"] == {"href": doomed}
    finally:
        listener.close()
    r = await client.get("eventStream", params={"$filter": "nosuch='x'"})
    assert r.status == 400 and "nosuch" in r.json["statusMessage"]
    r = await client.get("eventStream", headers={"Last-Event-ID": "yesterday"})
    assert r.status == 400 and "Last-Event-ID" in r.json["statusMessage"]


async def test_each_consumer_streams_only_its_own_events(client):
    bob = await listen(client, as_="bob")
    root = await listen(client, as_="root")
    try:
        alices = await make_config(client, "alices", as_="alice")
        bobs = await make_config(client, "bobs", as_="bob")
        got = [await bob.next(), await bob.next()]
        assert {doc["content"]["resource"]["href"] for _, doc in got} == {bobs}  # alice's came first, unseen
        everything = [await root.next() for _ in range(4)]  # an admin sees both
        assert {doc["content"]["resource"]["href"] for _, doc in everything} == {alices, bobs}
    finally:
        bob.close()
        root.close()
    r = await client.get("eventStream", headers={"Authorization": "Basic " + base64.b64encode(b"bob:wrong").decode()})
    assert r.status == 401


async def test_the_stream_says_where_it_starts_so_a_client_that_saw_nothing_can_resume(client):
    await make_config(client, "earlier")
    headers = {**who("root"), "Accept": "text/event-stream"}
    response = await client.client.get("/cimi/eventStream", headers=headers)
    try:
        assert (await asyncio.wait_for(response.content.readline(), WAIT)).startswith(b":")
        assert await response.content.readline() == b"\n"
        position = (await asyncio.wait_for(response.content.readline(), WAIT)).decode()
        assert position.startswith("id: ") and await response.content.readline() == b"\n"  # no data: no Event
    finally:
        response.close()
    missed = await make_config(client, "while-away")  # after the position, before the reconnect
    listener = await listen(client, last_id=position[4:].strip())
    try:
        got = [await listener.next(), await listener.next()]
        assert [doc["content"]["resource"] for _, doc in got] == [{"href": missed}] * 2
    finally:
        listener.close()
