"""The live Event stream through a front, with real processes (tests/front/test_front.py's federation: a
3-member etcd, three sandbox nodes, two fronts): Events of every node, with the front's hrefs; an id
that resumes every node through either front; `$filter`; bad requests; a node that dies drops out and
comes back when it registers again."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from conftest import NS, assert_valid_xml
from front.loopback import CIMI, _get, _live_nodes, _until, federation  # noqa: F401 (the fixture)

pytestmark = pytest.mark.federation

WAIT = 15.0


class Listener:
    """One SSE connection: (id, Event document or None for a position alone) as they come."""

    def __init__(self, response):
        self.response = response
        self.last_id = None

    async def message(self) -> tuple[str, dict | None]:
        event_id, data = None, None
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), WAIT)).decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and event_id is not None:
                self.last_id = event_id
                return event_id, data

    async def event(self) -> dict:
        while True:
            _id, doc = await self.message()
            if doc is not None:
                return doc

    async def events(self, count: int) -> list[dict]:
        return [await self.event() for _ in range(count)]

    async def positioned(self, nodes: int) -> str:
        """The id once it names the position of `nodes` nodes (each says where it starts)."""
        while self.last_id is None or self.last_id.count("=") < nodes:
            await self.message()
        return self.last_id

    def close(self) -> None:
        self.response.close()


async def listen(fed, front=None, last_id=None, **params) -> Listener:
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    response = await fed.session.get(f"{(front or fed.front).url}/cimi/eventStream", headers=headers, params=params)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return Listener(response)


async def make_config(fed, node: str, name: str) -> str:
    """A VolumeTemplate (kept by a node, unlike the global catalogue) made through the front on `node`: an
    access and a model Event there."""
    body = {"resourceURI": f"{CIMI}/VolumeTemplate", "name": name, "volumeConfig": {"capacity": 1024},
            "cimid:target": node}
    async with fed.session.post(f"{fed.front.url}/cimi/volumeTemplates", json=body) as reply:
        assert reply.status == 201, await reply.text()
        return reply.headers["Location"]


def _assert_front_only(fed, doc) -> None:
    text = json.dumps(doc)
    for node in fed.nodes:
        assert node.url not in text


async def test_every_nodes_events_come_through_the_front_with_its_hrefs(federation):
    fed = federation
    _s, cep, _h = await _get(fed, f"{fed.front.url}/cimi/cloudEntryPoint")
    assert {"rel": "urn:x-cimid:operation:eventStream", "href": f"{fed.front.url}/cimi/eventStream"} \
        in cep["operations"]
    listener = await listen(fed)
    try:
        position = await listener.positioned(3)
        assert sorted(dict(p.split("=") for p in position.split("&"))) == ["n1", "n2", "n3"]
        made = {node.name: await make_config(fed, node.name, f"streamed-{node.name}") for node in fed.nodes}
        got = await listener.events(6)  # an access and a model Event on each node
        changed = [e for e in got if e["type"] == f"{CIMI}/event/model"]
        assert sorted(e["content"]["resource"]["href"] for e in changed) == sorted(made.values())
        for event in got:
            _assert_front_only(fed, event)
            assert event["id"].startswith(f"{fed.front.url}/cimi/")
            status, again, _h = await _get(fed, event["id"])  # the very Event, by id through the front
            assert status == 200 and again == event
        # the last id holds every node's position, each past where it started
        final = dict(p.split("=") for p in listener.last_id.split("&"))
        start = dict(p.split("=") for p in position.split("&"))
        assert all(int(final[n]) > int(start[n]) for n in start)
    finally:
        listener.close()


async def test_a_client_that_reconnects_through_another_front_gets_exactly_what_it_missed(federation):
    fed = federation
    listener = await listen(fed)
    await listener.positioned(3)
    await make_config(fed, "n1", "before")
    await listener.events(2)
    resume = listener.last_id
    listener.close()
    missed = [await make_config(fed, node.name, f"missed-{node.name}-{i}") for i in range(2) for node in fed.nodes]
    listener = await listen(fed, front=fed.strict, last_id=resume)
    try:
        got = await listener.events(12)
        # the other front writes its own address: compare what follows it
        missed = [m.removeprefix(f"{fed.front.url}/cimi/") for m in missed]
        changed = [e["content"]["resource"]["href"].removeprefix(f"{fed.strict.url}/cimi/") for e in got
                   if e["content"].get("change")]
        assert sorted(changed) == sorted(missed)
        assert len({e["id"] for e in got}) == 12 and all(e["id"].startswith(fed.strict.url) for e in got)
        for i in range(3):  # each node's own order kept
            assert [c for c in changed if c in missed[i::3]] == missed[i::3]
        sentinel = await make_config(fed, "n2", "after")  # live again, with nothing extra before it
        nxt = await listener.events(2)
        assert [e["content"]["resource"]["href"].removeprefix(f"{fed.strict.url}/cimi/") for e in nxt
                if e["content"].get("change")] == [sentinel.removeprefix(f"{fed.front.url}/cimi/")]
    finally:
        listener.close()


async def test_the_filter_goes_to_the_nodes_and_bad_requests_change_nothing(federation):
    fed = federation
    model = f"type='{CIMI}/event/model'"
    listener = await listen(fed, **{"$filter": model})
    try:
        await listener.positioned(3)
        made = [await make_config(fed, n, f"filtered-{n}") for n in ("n3", "n1")]
        got = await listener.events(2)  # the access Events are not for this listener
        assert sorted(e["content"]["resource"]["href"] for e in got) == sorted(made)
        assert all(e["type"] == f"{CIMI}/event/model" for e in got)
    finally:
        listener.close()
    status, error, _h = await _get(fed, f"{fed.front.url}/cimi/eventStream", **{"$filter": "nosuch='x'"})
    assert status == 400 and "nosuch" in error["statusMessage"] and error["resourceURI"] == f"{CIMI}/Job"
    status, body, _h = await _get(fed, f"{fed.front.url}/cimi/eventStream", **{"$filter": "nosuch='x'",
                                                                               "$format": "xml"})
    assert status == 400 and b"nosuch" in body
    for bad in ("yesterday", "n1=x", "n1=1&=2", "n1=-3"):
        async with fed.session.get(f"{fed.front.url}/cimi/eventStream", headers={"Last-Event-ID": bad}) as reply:
            error = await reply.json()
            assert reply.status == 400 and "Last-Event-ID" in error["statusMessage"], bad
    async with fed.session.post(f"{fed.front.url}/cimi/eventStream", json={}) as reply:
        assert reply.status == 405
    async with fed.session.head(f"{fed.front.url}/cimi/eventStream") as reply:
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")


async def test_the_providers_log_is_every_nodes(federation):
    """Every node has an EventLog `provider`: through a front it is one log, counting every node's Events,
    listing them all (merged as any collection), and changed on every node at once."""
    fed = federation
    for node in fed.nodes:
        await make_config(fed, node.name, f"logged-{node.name}")
    front_log = f"{fed.front.url}/cimi/eventLogs/provider"
    direct = [(await _get(fed, f"{n.url}/cimi/eventLogs/provider"))[1] for n in fed.nodes]
    status, log, headers = await _get(fed, front_log)
    assert status == 200 and "Warning" not in headers and log["id"] == front_log
    assert log["summary"] == {k: sum(d["summary"][k] for d in direct) for k in direct[0]["summary"]}
    assert log["events"]["href"] == f"{front_log}/events"
    _assert_front_only(fed, log)
    status, body, _h = await _get(fed, front_log, **{"$format": "xml"})
    root = assert_valid_xml(body)
    assert root.findtext("c:id", namespaces=NS) == front_log
    counts = [(await _get(fed, f"{n.url}/cimi/eventLogs/provider/events"))[1]["count"] for n in fed.nodes]
    status, events, _h = await _get(fed, f"{front_log}/events", **{"$orderby": "timestamp:desc", "$last": 5})
    assert status == 200 and events["count"] == sum(counts) and len(events["events"]) == 5
    assert events["id"] == f"{front_log}/events"
    stamps = [e["timestamp"] for e in events["events"]]
    assert stamps == sorted(stamps, reverse=True)
    _assert_front_only(fed, events)
    status, error, _h = await _get(fed, f"{front_log}/events/00000000000000000000000000000000")
    assert status == 404 and error["resourceURI"] == f"{CIMI}/Job"
    edit = {"resourceURI": f"{CIMI}/EventLog", "persistence": "monthly"}
    async with fed.session.put(front_log, json={**log, **edit}) as reply:
        assert reply.status == 200, await reply.text()
    for node in fed.nodes:
        assert (await _get(fed, f"{node.url}/cimi/eventLogs/provider"))[1]["persistence"] == "monthly"
    async with fed.session.put(front_log, json={**log, "persistence": "forever"}) as reply:
        assert reply.status == 400
    for node in fed.nodes:  # a refused change changed nothing anywhere
        assert (await _get(fed, f"{node.url}/cimi/eventLogs/provider"))[1]["persistence"] == "monthly"


async def test_a_node_that_dies_drops_out_and_comes_back_when_it_registers_again(federation):
    fed = federation
    victim = fed.nodes[2]
    listener = await listen(fed)
    try:
        await listener.positioned(3)
        victim.signal(signal.SIGKILL)
        victim.popen.wait()
        alive = await make_config(fed, "n1", "while-n3-dies")
        got = await listener.events(2)
        assert [e["content"]["resource"]["href"] for e in got if e["content"].get("change")] == [alive]
        await asyncio.to_thread(victim.start)
        # made on n3's own API at once, before the front can have subscribed to it again: the front
        # resumes n3 from its position, so this Event still comes
        body = {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "n3-back", "cpu": 1, "memory": 1024}
        async with fed.session.post(f"{victim.url}/cimi/machineConfigs", json=body) as reply:
            assert reply.status == 201
            direct = reply.headers["Location"]
        got = await listener.events(2)
        changed = [e["content"]["resource"]["href"] for e in got if e["content"].get("change")]
        assert changed == [direct.replace(f"{victim.url}/cimi/", f"{fed.front.url}/cimi/")]
        _assert_front_only(fed, got)
    finally:
        listener.close()
    await _until(lambda: _live_nodes(fed, 3), seconds=20)


async def test_the_event_logs_list_the_providers_log_once(federation):
    fed = federation
    front = f"{fed.front.url}/cimi/"
    direct = [(await _get(fed, f"{n.url}/cimi/eventLogs"))[1] for n in fed.nodes]
    status, logs, headers = await _get(fed, f"{front}eventLogs", **{"$orderby": "name"})
    assert status == 200 and "Warning" not in headers
    ids = [log["id"] for log in logs.get("eventLogs", [])]
    assert ids.count(f"{front}eventLogs/provider") == 1 and len(ids) == len(set(ids))
    assert logs["count"] == sum(d["count"] for d in direct) - (len(fed.nodes) - 1)
    status, page, _h = await _get(fed, f"{front}eventLogs", **{"$orderby": "name", "$first": 1, "$last": 1})
    assert [log["id"] for log in page["eventLogs"]] == ids[:1] and page["count"] == logs["count"]
    status, body, _h = await _get(fed, f"{front}eventLogs", **{"$format": "xml"})
    assert status == 200
    assert_valid_xml(body)


async def test_a_front_that_stops_ends_its_streams_at_once(federation):
    fed = federation
    listener = await listen(fed, front=fed.strict)
    try:
        resume = await listener.positioned(3)
        started = asyncio.get_running_loop().time()
        await asyncio.to_thread(fed.strict.stop)
        assert await asyncio.wait_for(listener.response.content.read(), WAIT) == b""  # the stream ended
        assert asyncio.get_running_loop().time() - started < 10
        assert fed.strict.popen.returncode == 0
    finally:
        listener.close()
        await asyncio.to_thread(fed.strict.start)
    made = await make_config(fed, "n1", "after-the-front-stopped")
    listener = await listen(fed, last_id=resume)  # resumed through the other front: nothing lost
    try:
        got = await listener.events(2)
        assert [e["content"]["resource"]["href"] for e in got if e["content"].get("change")] == [made]
    finally:
        listener.close()
