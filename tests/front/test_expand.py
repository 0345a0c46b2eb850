"""`$expand` through a front equals `$expand` on one node holding everything: the same resources are made
through a front onto three real nodes (tests/front/test_front.py's federation) and on one standalone
sandbox node, and every answer (single resources and collections, `$expand=*` and named attributes,
with `$select`, JSON and XML) is compared once ids, addresses and times are set aside. A global
MachineTemplate (answered by the front) names a global MachineConfiguration and a node's MachineImage:
both expand as on the single node."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from cluster.processes import CIMID, Process
from conftest import assert_valid_xml
from front.loopback import CIMI, _get, _until, federation  # noqa: F401 (the fixture)
from ports import free_port

pytestmark = pytest.mark.federation

_ID = re.compile(r"[0-9a-f]{32}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Single:
    """One standalone sandbox node: the oracle."""

    def __init__(self, base):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        state = base / "single"
        state.mkdir()
        config = state / "cimid.toml"
        config.write_text(f'profile = "sandbox"\n[server]\nlisten = "127.0.0.1:{port}"\nlog_requests = false\n'
                          '[meters]\nsampling = false\n')
        self.process = Process([*CIMID, "serve", "--config", str(config), "--state-dir", str(state)],
                               base / "single.log")


@pytest.fixture(scope="module")
async def both(federation, tmp_path_factory):
    """(the front's URL, the single node's URL) once each holds the same machines, configuration and
    template: on the federation the machines spread over the nodes, and the configuration and the template
    are global (in etcd, answered by the front), the template naming a node's MachineImage."""
    fed = federation
    single = Single(tmp_path_factory.mktemp("single"))
    await asyncio.to_thread(single.process.start)
    try:
        for url in (fed.front.url, single.url):
            made = []
            for i in range(3):
                body = {"resourceURI": f"{CIMI}/MachineCreate", "name": f"m-{i}",
                        "machineTemplate": {"href": f"{url}/cimi/machineTemplates/small-tiny-linux"}}
                async with fed.session.post(f"{url}/cimi/machines", json=body) as reply:
                    assert reply.status == 202, await reply.text()
                    made.append(reply.headers["Location"])
            config = {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "big", "cpu": 2, "memory": 2097152}
            async with fed.session.post(f"{url}/cimi/machineConfigs", json=config) as reply:
                assert reply.status == 201, await reply.text()
                config_href = reply.headers["Location"]
            template = {"resourceURI": f"{CIMI}/MachineTemplate", "name": "big-tiny", "machineConfig":
                        {"href": config_href}, "machineImage": {"href": f"{url}/cimi/machineImages/tiny-linux"}}
            async with fed.session.post(f"{url}/cimi/machineTemplates", json=template) as reply:
                assert reply.status == 201, await reply.text()
            for machine in made:
                await _until(lambda: _started(fed, machine))
        yield fed.front.url, single.url
    finally:
        await asyncio.to_thread(single.process.stop)


async def _started(fed, url) -> bool:
    status, doc, _h = await _get(fed, url)
    return status == 200 and doc["state"] == "STARTED"


def _normal(text: str, base: str) -> str:
    return _TIME.sub("<time>", _ID.sub("<id>", text.replace(f"{base}/cimi/", "<base>/")))


def _without_node(body: bytes, xml: bool) -> str:
    """An answer without the cimid:node a front adds (a single node has no such thing)."""
    if xml:
        return _NODE_XML.sub("", body.decode())
    return json.dumps(_drop_node(json.loads(body)), indent=1)


_NODE_XML = re.compile(r' (cimid:node="[^"]*"|xmlns:cimid="urn:x-cimid:xml:1")(?=[^<]*cimid:node=|[^<]*>)')


def _drop_node(value):
    if isinstance(value, dict):
        return {k: _drop_node(v) for k, v in value.items() if k != "cimid:node"}
    if isinstance(value, list):
        return [_drop_node(v) for v in value]
    return value


async def _both(fed, both, path: str, **params) -> tuple[str, str]:
    """The same request of the front and of the single node, each answer normalised."""
    answers = []
    for url in both:
        async with fed.session.get(f"{url}/cimi/{path}", params=params) as reply:
            body = await reply.read()
            assert reply.status == 200, body
            if "xml" in reply.content_type:
                assert_valid_xml(body)
            assert "Warning" not in reply.headers
            answers.append(_normal(_without_node(body, "xml" in reply.content_type), url))
    return answers[0], answers[1]


QUERIES = [
    {"$expand": "*"},
    {"$expand": "eventLog"},
    {"$expand": "eventLog", "$select": "name,eventLog"},
    {"$expand": "*", "$select": "name,eventLog,state", "$orderby": "name:desc", "$first": 2, "$last": 3},
    {"$expand": ""},
    {"$expand": "nosuch"},
]


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("params", QUERIES, ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()))
async def test_collections_expand_as_on_one_node(federation, both, params, fmt):
    front, single = await _both(federation, both, "machines", **{"$orderby": "name", **params, "$format": fmt})
    assert front == single
    assert ("persistence" in front) == (params["$expand"] != "nosuch")  # the machines' logs did expand


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_single_resources_and_templates_expand_as_on_one_node(federation, both, fmt):
    fed = federation
    ids = {}
    for url in both:
        _s, machines, _h = await _get(fed, f"{url}/cimi/machines", **{"$filter": "name='m-1'"})
        _s, templates, _h = await _get(fed, f"{url}/cimi/machineTemplates", **{"$filter": "name='big-tiny'"})
        ids[url] = (machines["machines"][0]["id"].removeprefix(f"{url}/cimi/"),
                    templates["machineTemplates"][0]["id"].removeprefix(f"{url}/cimi/"))
    for which in (0, 1):
        for params in ({"$expand": "*"}, {"$expand": "machineConfig,eventLog"},
                       {"$expand": "*", "$select": "name,machineConfig,eventLog"}):
            answers = []
            for url in both:
                async with fed.session.get(f"{url}/cimi/{ids[url][which]}",
                                           params={**params, "$format": fmt}) as reply:
                    body = await reply.read()
                    assert reply.status == 200, body
                    if fmt == "xml":
                        assert_valid_xml(body)
                    answers.append(_normal(_without_node(body, fmt == "xml"), url))
            front, single = answers
            assert front == single
            assert ("cpu" in front) if which == 1 else ("persistence" in front)  # expanded on both



@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_the_global_catalogue_expands_as_on_one_node(federation, both, fmt):
    params = {"$expand": "machineConfig,machineImage", "$filter": "name='big-tiny'", "$format": fmt}
    front, single = await _both(federation, both, "machineTemplates", **params)
    assert front == single and "tiny-linux" in front and "2097152" in front  # the image and the config
    # $select beside $expand, on the template itself (a global collection's $select keeps each item's id,
    # a node's does not: not a matter of $expand)
    fed, ids = federation, []
    for url in both:
        _s, found, _h = await _get(fed, f"{url}/cimi/machineTemplates", **{"$filter": "name='big-tiny'"})
        ids.append(found["machineTemplates"][0]["id"].removeprefix(f"{url}/cimi/"))
    assert ids[0] != ids[1]
    answers = []
    for url, id in zip(both, ids):
        async with fed.session.get(f"{url}/cimi/{id}", params={"$expand": "machineImage", "$format": fmt,
                                                                 "$select": "name,machineImage"}) as reply:
            body = await reply.read()
            assert reply.status == 200, body
            answers.append(_normal(body.decode().replace(id.rsplit("/", 1)[-1], "<id>"), url))
    assert answers[0] == answers[1] and "tiny-linux" in answers[0] and "2097152" not in answers[0]
