"""`cimid:node` through a front, with real nodes and etcd on loopback: every resource a front serves from
a node names that node, in JSON and (as an attribute in cimid's namespace, valid DSP8009) in XML; the
front sorts on it in its merge and applies `$filter` terms on it by choosing the nodes it asks, and
refuses the forms it cannot evaluate with 400."""

from __future__ import annotations

import pytest

from conftest import assert_valid_xml
from front.loopback import CIMI, _get, federation  # noqa: F401 (the fixture)

pytestmark = pytest.mark.federation

EXT_NS = "urn:x-cimid:xml:1"


@pytest.fixture(scope="module")
async def placed(federation):
    """{machine id: node name} of four machines made through the front, two on n1."""
    fed = federation
    for i, target in enumerate(("n1", "n2", "n3", "n1")):
        body = {"resourceURI": f"{CIMI}/MachineCreate", "name": f"m{i}", "cimid:target": target,
                "machineTemplate": {"href": f"{fed.front.url}/cimi/machineTemplates/small-tiny-linux"}}
        async with fed.session.post(f"{fed.front.url}/cimi/machines", json=body) as reply:
            assert reply.status == 202, await reply.text()
    owners = {}
    for node in fed.nodes:  # asked directly: who really holds what
        status, doc, _ = await _get(fed, f"{node.url}/cimi/machines")
        owners.update({m["id"].rsplit("/", 1)[-1]: node.name for m in doc.get("machines", [])})
    assert sorted(owners.values()) == ["n1", "n1", "n2", "n3"]
    return owners


def _id(doc: dict) -> str:
    return doc["id"].rsplit("/", 1)[-1]


async def test_every_resource_names_its_node_in_json_and_xml(federation, placed):
    fed = federation
    status, doc, _ = await _get(fed, f"{fed.front.url}/cimi/machines")
    assert status == 200 and {_id(m): m["cimid:node"] for m in doc["machines"]} == placed
    one = next(m for m in doc["machines"] if m["cimid:node"] == "n2")
    status, single, _ = await _get(fed, one["id"])
    assert status == 200 and single["cimid:node"] == "n2"
    status, body, headers = await _get(fed, one["id"], **{"$format": "xml"})
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    root = assert_valid_xml(body)
    assert root.get(f"{{{EXT_NS}}}node") == "n2"
    status, body, _ = await _get(fed, f"{fed.front.url}/cimi/machines", **{"$format": "xml"})
    root = assert_valid_xml(body)
    items = root.findall(f"{{{CIMI}}}Machine")
    assert sorted(m.get(f"{{{EXT_NS}}}node") for m in items) == ["n1", "n1", "n2", "n3"]
    status, doc, _ = await _get(fed, f"{fed.front.url}/cimi/jobs", **{"$filter": "action='add'"})
    assert doc["count"] >= 4 and all(j["cimid:node"] in ("n1", "n2", "n3") for j in doc["jobs"])


async def test_filter_on_the_node_asks_only_the_nodes_it_admits(federation, placed):
    fed = federation
    url = f"{fed.front.url}/cimi/machines"
    on_n1 = sorted(id for id, node in placed.items() if node == "n1")
    for expression in ("cimid:node='n1'", "'n1' = cimid:node", 'cimid:node="n1" and name!=\'zzz\''):
        status, doc, _ = await _get(fed, url, **{"$filter": expression})
        assert status == 200 and doc["count"] == 2, (expression, doc)
        assert sorted(_id(m) for m in doc["machines"]) == on_n1
    status, doc, _ = await _get(fed, url, **{"$filter": "cimid:node!='n1' and name='m2'"})
    assert [(m["name"], m["cimid:node"]) for m in doc["machines"]] == [("m2", "n3")] and doc["count"] == 1
    status, doc, _ = await _get(fed, url, **{"$filter": "cimid:node='nowhere'"})
    assert status == 200 and doc["count"] == 0 and "machines" not in doc
    # two $filter values are ANDed, as on a node
    status, doc, _ = await _get(fed, f"{url}?$filter=cimid:node!='n2'&$filter=cimid:node!='n3'")
    assert sorted(_id(m) for m in doc["machines"]) == on_n1
    status, body, _ = await _get(fed, url, **{"$filter": "cimid:node='n3'", "$format": "xml"})
    root = assert_valid_xml(body)
    assert [m.get(f"{{{EXT_NS}}}node") for m in root.findall(f"{{{CIMI}}}Machine")] == ["n3"]


async def test_orderby_and_select_take_the_node_too(federation, placed):
    fed = federation
    url = f"{fed.front.url}/cimi/machines"
    status, doc, _ = await _get(fed, url, **{"$orderby": "cimid:node:desc,name"})
    got = [(m["cimid:node"], m["name"]) for m in doc["machines"]]
    assert status == 200 and got == sorted(got, key=lambda p: (-int(p[0][1:]), p[1])) and len(got) == 4
    status, doc, _ = await _get(fed, url, **{"$orderby": "cimid:node", "$first": "2", "$last": "3"})
    assert [m["cimid:node"] for m in doc["machines"]] == ["n1", "n2"] and doc["count"] == 4
    status, doc, _ = await _get(fed, url, **{"$select": "name,cimid:node"})
    assert status == 200 and all(set(m) - {"resourceURI"} == {"name", "cimid:node"} for m in doc["machines"]), doc
    status, doc, _ = await _get(fed, url, **{"$select": "name"})
    assert all("cimid:node" not in m for m in doc["machines"])
    one = doc["machines"][0]["name"]
    status, doc, _ = await _get(fed, url, **{"$filter": f"name='{one}'"})
    href = doc["machines"][0]["id"]
    status, single, _ = await _get(fed, href, **{"$select": "cimid:node"})
    assert status == 200 and single["cimid:node"] == placed[href.rsplit("/", 1)[-1]] and "name" not in single


async def test_what_the_front_cannot_evaluate_is_refused(federation, placed):
    fed = federation
    url = f"{fed.front.url}/cimi/machines"
    for expression in ("cimid:node='n1' or name='m1'", "(cimid:node='n1')", "cimid:node>'n1'",
                       "name='m1' and (cimid:node='n1' or cimid:node='n2')"):
        status, doc, _ = await _get(fed, url, **{"$filter": expression})
        assert status == 400 and "cimid:node" in doc["statusMessage"], (expression, doc)
    # a filter that only quotes the name is the nodes' to judge
    status, doc, _ = await _get(fed, url, **{"$filter": "name='cimid:node or x'"})
    assert status == 200 and doc["count"] == 0
    status, doc, _ = await _get(fed, url)
    assert doc["count"] == 4  # nothing changed
