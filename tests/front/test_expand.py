"""`$expand` through a front equals `$expand` on one node holding everything: the same resources are made
through a front onto three real nodes (tests/front/test_front.py's federation) and on one standalone
sandbox node, and every answer (single resources and collections, `$expand=*` and named attributes,
with `$select`, JSON and XML) is compared once ids, addresses and times are set aside."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from cluster.processes import CIMID, Process
from conftest import assert_valid_xml
from front.test_front import CIMI, _get, _until, federation  # noqa: F401 (the fixture)
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
    """(the front's URL, the single node's URL) once each holds the same machines, configurations and
    templates: on the federation, the machines spread over the nodes, and a template on another node than
    its configuration's... where the nodes allow it (they keep references on one node)."""
    fed = federation
    single = Single(tmp_path_factory.mktemp("single"))
    await asyncio.to_thread(single.process.start)
    try:
        for url, target in ((fed.front.url, {"cimid:target": "n2"}), (single.url, {})):
            made = []
            for i in range(3):
                body = {"resourceURI": f"{CIMI}/MachineCreate", "name": f"m-{i}",
                        "machineTemplate": {"href": f"{url}/cimi/machineTemplates/small-tiny-linux"}}
                async with fed.session.post(f"{url}/cimi/machines", json=body) as reply:
                    assert reply.status == 202, await reply.text()
                    made.append(reply.headers["Location"])
            config = {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "big", "cpu": 2, "memory": 2097152,
                      **target}
            async with fed.session.post(f"{url}/cimi/machineConfigs", json=config) as reply:
                assert reply.status == 201, await reply.text()
                config_href = reply.headers["Location"]
            template = {"resourceURI": f"{CIMI}/MachineTemplate", "name": "big-tiny", "machineConfig":
                        {"href": config_href}, "machineImage": {"href": f"{url}/cimi/machineImages/tiny-linux"},
                        **target}
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
            answers.append(_normal(body.decode() if "xml" in reply.content_type
                                   else json.dumps(json.loads(body), indent=1), url))
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
                    answers.append(_normal(body.decode() if fmt == "xml" else json.dumps(json.loads(body), indent=1),
                                           url))
            front, single = answers
            assert front == single
            assert ("cpu" in front) if which == 1 else ("persistence" in front)  # expanded on both


async def test_a_reference_to_another_nodes_resource_is_filled_in_from_that_node(federation):
    """Nodes keep every reference on one node today (each checks it against its own store), so no node
    answer names another node's resource yet; a global catalogue will (a template on one node naming a
    configuration of another). The front's completion is run here, in-process on a front made for the
    test over the same etcd and nodes, on a real template of n1 made to name a configuration of n3."""
    from aiohttp.test_utils import TestServer, make_mocked_request

    from cimid.config import load
    from cimid.front import expand
    from cimid.front.app import make_front_app
    from cimid.model.registry import collection_type

    fed = federation
    port = free_port()
    config = load(overrides={"cluster": {"endpoints": fed.etcd.endpoints, "etcd_timeout": 1.0},
                             "front": {"listen": f"127.0.0.1:{port}",
                                       "public_base_url": f"http://127.0.0.1:{port}"}})
    app = make_front_app(config)
    async with TestServer(app, host="127.0.0.1", port=port):
        base = f"http://127.0.0.1:{port}/cimi/"
        made = {}
        for node, collection, body in (
                ("n3", "machineConfigs", {"resourceURI": f"{CIMI}/MachineConfiguration", "name": "on-n3", "cpu": 3,
                                          "memory": 3145728}),
                ("n1", "machineTemplates", {"resourceURI": f"{CIMI}/MachineTemplate", "name": "on-n1",
                                            "machineConfig": {"href": f"{base}machineConfigs/small"},
                                            "machineImage": {"href": f"{base}machineImages/tiny-linux"}})):
            async with fed.session.post(f"{base}{collection}", json={**body, "cimid:target": node}) as reply:
                assert reply.status == 201, await reply.text()
                made[collection] = reply.headers["Location"]
        _s, template, _h = await _get(fed, made["machineTemplates"])
        _s, on_n3, _h = await _get(fed, made["machineConfigs"])
        assert made["machineConfigs"].startswith(base) and template["machineConfig"] == {"href": f"{base}machineConfigs/small"}
        template["machineConfig"] = {"href": made["machineConfigs"]}  # what a global catalogue makes
        gone = {**template, "machineConfig": {"href": f"{base}machineConfigs/{'0' * 32}"}}
        request = make_mocked_request("GET", "/cimi/machineTemplates", app=app,
                                      headers={"Host": f"127.0.0.1:{port}"})
        rtype = collection_type("machineTemplates")
        await expand.expand_all(request, [template, gone], rtype, {"machineConfig"})
        expected = {k: v for k, v in on_n3.items() if k not in ("id", "resourceURI", "operations")}
        assert template["machineConfig"] == {"href": made["machineConfigs"], **expected}
        assert template["machineConfig"]["cpu"] == 3
        assert template["machineImage"] == {"href": f"{base}machineImages/tiny-linux"}  # not named: not expanded
        assert gone["machineConfig"] == {"href": f"{base}machineConfigs/{'0' * 32}"}  # nothing there: an href
        provider_log = {"href": f"{base}eventLogs/provider"}  # a resource the front itself answers
        job = {"resourceURI": f"{CIMI}/Job", "id": f"{base}jobs/x", "targetResource": dict(provider_log)}
        await expand.expand_all(request, [job], collection_type("jobs"), {"*"})
        assert job["targetResource"]["href"] == provider_log["href"] and "summary" in job["targetResource"]
