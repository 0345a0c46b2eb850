"""F8 of the design study's test plan, version skew: node n3 is started publishing api_level 1 (as a node
of the federation's first release would; cluster.api_level), while n1 and n2 speak level 2, which adds
the Networks family. The fronts never send n3 what level 1 does not serve: no Network create, no Machine
create whose template has network interfaces, no networks list; level-1 requests still reach it."""

from __future__ import annotations

import asyncio
import json

import pytest

from cimid.cluster.node import API_LEVEL
from federation.conftest import CIMI, until

pytestmark = pytest.mark.federation


def _network(name: str, **extra) -> dict:
    return {"resourceURI": f"{CIMI}/NetworkCreate", "name": name,
            "networkTemplate": {"networkConfig": {"networkType": "PRIVATE"}}, **extra}


async def _post(fed, url: str, body: dict) -> tuple[int, dict, dict]:
    async with fed.session.post(url, json=body) as reply:
        return reply.status, await reply.json(), dict(reply.headers)


async def test_f8_a_node_of_a_lower_api_level_never_receives_what_it_does_not_serve(fed):
    assert API_LEVEL == 2  # what this test is about: raise the levels below along with it
    await asyncio.to_thread(fed.nodes[2].stop)
    old = fed.node(3, api_level=1)
    fed.nodes[2] = old
    try:
        await asyncio.to_thread(old.start)
        await until(lambda: _published(fed, old.name, 1))
        await until(fed.ready)
        assert json.loads((await fed.entry(f"nodes/{fed.nodes[0].name}")).value)["api_level"] == 2

        # a Network: placed only on level-2 nodes; named on n3, refused, with nothing reserved there
        ledger = json.loads((await fed.entry(f"capacity/{old.name}")).value)
        status, error, headers = await _post(fed, f"{fed.front.url}/cimi/networks",
                                             _network("on-old", **{"cimid:target": old.name}))
        assert status == 503 and headers["Retry-After"] == "30"
        assert "api_level 2" in error["statusMessage"] and old.name in error["statusMessage"]
        made = []
        for i in range(3):
            status, doc, headers = await _post(fed, f"{fed.fronts[i % 2].url}/cimi/networks", _network(f"skew-{i}"))
            assert status == 202, doc.get("statusMessage")
            made.append(headers["Location"])
        status, direct, _h = await fed.get(f"{old.url}/cimi/networks")
        assert status == 200 and not [n for n in direct.get("networks", []) if n["name"].startswith("skew-")]
        # a list of networks does not ask n3: one made on n3 by its own clients is not in it, and the
        # list is not partial
        async with fed.session.post(f"{old.url}/cimi/networks", json=_network("local-on-old")) as reply:
            assert reply.status == 202
        status, listed, headers = await fed.get(f"{fed.front.url}/cimi/networks")
        assert status == 200 and "Warning" not in headers
        names = [n["name"] for n in listed.get("networks", [])]
        assert "local-on-old" not in names and {f"skew-{i}" for i in range(3)} <= set(names)

        # a Machine with network interfaces needs level 2 too; a plain one still goes to n3
        with_nic = {"machineTemplate": {"href": f"{fed.public}/cimi/machineTemplates/small-tiny-linux",
                                        "networkInterfaces": [{"network": {"href": made[0]}}]}}
        status, error, _h = await fed.create("nic-on-old", **with_nic, **{"cimid:target": old.name})
        assert status == 503 and "api_level 2" in error["statusMessage"]
        assert "nic-on-old" not in [m["name"] for m in await fed.machines_on(old)]
        assert json.loads((await fed.entry(f"capacity/{old.name}")).value)["inflight"] == ledger["inflight"] == {}
        status, doc, _h = await fed.create("plain-on-old", **{"cimid:target": old.name})
        assert status == 202, doc.get("statusMessage")
        assert "plain-on-old" in [m["name"] for m in await fed.machines_on(old)]
        # the fronts' entry point is a level-2 node's: it offers networks
        status, entry, _h = await fed.get(f"{fed.front.url}/cimi/cloudEntryPoint")
        assert status == 200 and entry["networks"]["href"] == f"{fed.public}/cimi/networks"
    finally:
        await asyncio.to_thread(old.stop)
        fed.nodes[2] = fed.node(3)
        await asyncio.to_thread(fed.nodes[2].start)
    await until(lambda: _published(fed, "n3", API_LEVEL))


async def _published(fed, name: str, level: int) -> bool:
    entry = await fed.entry(f"nodes/{name}")
    return entry is not None and json.loads(entry.value)["api_level"] == level
