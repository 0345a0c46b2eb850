"""The live Event stream through a front over mutual TLS with tenants (tests/front/test_tenants.py's
federation): the front checks who listens and each node scopes the stream to that tenant (CIMID-User),
as a node does alone."""

from __future__ import annotations

import asyncio
import json

import pytest

from front.test_tenants import CIMI, _auth, fed  # noqa: F401 (the fixture)

pytestmark = pytest.mark.federation

WAIT = 15.0


async def _listen(fed, who: str):
    response = await fed.session.get(f"{fed.front.url}/cimi/eventStream",
                                     headers={"Accept": "text/event-stream", **_auth(who)})
    assert response.status == 200, await response.text()
    return response


async def _next_event(response) -> dict:
    while True:
        line = (await asyncio.wait_for(response.content.readline(), WAIT)).decode()
        assert line, "the stream ended"
        if line.startswith("data: "):
            return json.loads(line[6:])


async def _template(fed, who: str, node: str) -> str:
    body = {"resourceURI": f"{CIMI}/VolumeTemplate", "name": f"{who}s", "volumeConfig": {"capacity": 1024},
            "cimid:target": node}
    async with fed.session.post(f"{fed.front.url}/cimi/volumeTemplates", json=body, headers=_auth(who)) as reply:
        assert reply.status == 201, await reply.text()
        return reply.headers["Location"]


async def test_each_tenant_streams_only_its_own_events_through_the_front(fed):
    async with fed.session.get(f"{fed.front.url}/cimi/eventStream") as reply:
        assert reply.status == 401  # no credentials: refused at the front, no node asked
    # each answers once every node's stream is open, from where that node stands now
    alice, bob = await _listen(fed, "alice"), await _listen(fed, "bob")
    try:
        bobs = await _template(fed, "bob", "n2")
        alices = await _template(fed, "alice", "n1")
        got = [await _next_event(bob), await _next_event(bob)]
        assert {e["content"]["resource"]["href"] for e in got} == {bobs}
        first = await _next_event(alice)  # bob's Events, which came first, are not alice's
        assert first["content"]["resource"]["href"] == alices and first["content"]["initiator"] == "alice"
    finally:
        alice.close()
        bob.close()
