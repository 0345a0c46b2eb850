"""Owned sub-collections are generic: a family that declares one under any parent gets GET, POST (add,
how attachments are made) and DELETE (detach) on /{collection}/{id}/{sub}[/{item}], from its declaration
and one registration, with the generic service and no code of its own."""

from __future__ import annotations

import pytest
from conftest import make_client

from cimid.model import Attribute, Family, ResourceType, registry
from cimid.model.types import common_attributes

Note = ResourceType(
    "MachineConfigurationNote",
    [*common_attributes(), Attribute("text", "string", consumer_mandatory=True)],
    collection="notes", items="notes", parent="MachineConfiguration", editable=False,
)
NOTES = Family("notes", (Note,), service="resources:ResourceService")


@pytest.fixture
async def client(tmp_path, monkeypatch):
    """The sandbox with the notes family registered, as its one registration line would."""
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, NOTES))
    monkeypatch.setitem(registry.FAMILY_OF, Note.name, NOTES)
    monkeypatch.setitem(registry.TYPES, Note.name, Note)
    monkeypatch.setitem(registry.SUB_COLLECTIONS, "MachineConfiguration", {"notes": Note})
    client = await make_client(tmp_path)
    yield client
    await client.client.close()


async def test_add_list_read_and_detach_items_of_a_sub_collection(client):
    notes = "machineConfigs/small/notes"
    assert (await client.get(notes)).json["count"] == 0
    r = await client.post(notes, {"name": "n1", "text": "for the web tier"})
    assert r.status == 201, r
    item = r.headers["Location"]
    assert item.startswith(client.base + notes + "/") and r.json["id"] == item
    listed = (await client.get(notes)).json
    assert listed["count"] == 1 and listed["notes"][0]["text"] == "for the web tier"
    assert {"rel": "add", "href": client.base + notes} in listed["operations"]
    assert (await client.get(item)).json["name"] == "n1"
    assert (await client.get("resourceMetadata/MachineConfigurationNote")).status == 200
    assert "notes" not in (await client.get("cloudEntryPoint")).json  # only under its parent
    r = await client.delete(item)
    assert r.status == 200 and r.json["state"] == "SUCCESS"
    assert (await client.get(item)).status == 404
    assert (await client.get(notes)).json["count"] == 0


async def test_bad_requests_on_a_sub_collection_change_nothing(client):
    before = await client.rows()
    assert (await client.post("machineConfigs/nosuch/notes", {"text": "x"})).status == 404
    assert (await client.post("machineConfigs/small/notes", {"name": "no text"})).status == 400
    assert (await client.put("machineConfigs/small/notes/x", {"text": "x"})).status == 405
    assert (await client.post("machineConfigs/small/nosuch")).status == 404
    assert (await client.post("machineConfigs/small/notes/x/y", {"text": "x"})).status == 404
    assert await client.rows() == before
    r = await client.post("machineConfigs/small/notes", {"text": "x"})
    other = await client.post("machineConfigs", {"name": "o", "cpu": 1, "memory": 1})
    elsewhere = other.headers["Location"] + "/notes/" + r.headers["Location"].rsplit("/", 1)[1]
    assert (await client.get(elsewhere)).status == 404  # an item is found only under its own parent
    assert (await client.delete(elsewhere)).status == 404


async def test_items_go_with_their_parent(client):
    r = await client.post("machineConfigs", {"name": "o", "cpu": 1, "memory": 1})
    note = await client.post(r.headers["Location"] + "/notes", {"text": "x"})
    assert (await client.delete(r.headers["Location"])).status == 200
    assert (await client.get(note.headers["Location"])).status == 404
