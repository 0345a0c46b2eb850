"""A family registered later is fuzzed without editing the suite: Volumes (the next family), declared here
as their model file and registration line would declare them, are found by the walk and driven by the same
drivers as every other family."""

from __future__ import annotations

import pytest
from conftest import make_client
from hypothesis import given
from hypothesis import strategies as st

from cimid.model import Attribute, Family, ResourceType, registry
from cimid.model.types import common_attributes, read_only

from . import properties
from .conftest import populate
from .targets import collections

# DSP8009 1.0.2's Volume, and MachineVolume (a Machine's attached Volumes), in the schema's element order.
Volume = ResourceType(
    "Volume",
    [*common_attributes(), read_only("state", "string", enum=("CREATING", "AVAILABLE", "ERROR")),
     Attribute("type", "URI", mutable=False), Attribute("capacity", "integer", consumer_mandatory=True, minimum=1),
     Attribute("bootable", "boolean")],
    collection="volumes", items="volumes", description="Storage a Machine can attach.",
)
MachineVolume = ResourceType(
    "MachineVolume",
    [*common_attributes(), Attribute("initialLocation", "string", consumer_mandatory=True, max_length=255),
     Attribute("volume", "ref", target="Volume", consumer_mandatory=True)],
    collection="volumes", items="machineVolumes", parent="Machine", editable=False,
)
VOLUMES = Family("volumes", (Volume, MachineVolume), service="resources:ResourceService")


@pytest.fixture
async def volumes_sandbox(tmp_path):
    """The sandbox with the volumes family registered, as its registration line would (every table the
    registry derives gets the new types)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "FAMILIES", (*registry.FAMILIES, VOLUMES))
        for rtype in VOLUMES.types:
            patch.setitem(registry.FAMILY_OF, rtype.name, VOLUMES)
            patch.setitem(registry.TYPES, rtype.name, rtype)
            patch.setitem(registry.REQUEST_ROOTS, rtype.name, rtype)
        patch.setitem(registry.TOP_LEVEL, Volume.collection, Volume)
        patch.setitem(registry.SUB_COLLECTIONS, "Machine",
                      {**registry.SUB_COLLECTIONS["Machine"], MachineVolume.collection: MachineVolume})
        client = await make_client(tmp_path)
        await populate(client)
        yield client
        await client.client.close()


@given(data=st.data())
async def test_a_family_registered_later_is_walked_and_fuzzed(volumes_sandbox, data):
    added = [c for c in collections() if c.rtype in VOLUMES.types]
    assert sorted(c.label for c in added) == ["machines/*/volumes", "volumes"]
    for coll in added:
        for mode in (properties.TYPED, properties.HOSTILE):
            await properties.post_to_collection(volumes_sandbox, coll, mode, data)
            await properties.put_to_resource(volumes_sandbox, coll, mode, data)
        await properties.query_collection(volumes_sandbox, coll, data)
        await properties.read_resource(volumes_sandbox, coll, data)
        await properties.strange_paths(volumes_sandbox, coll, data)
