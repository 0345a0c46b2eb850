"""Every collection, sub-collection and operation the registry declares, fuzzed against the sandbox: the
three properties of properties.py hold for any body, query, header and id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cimid.model import registry

from . import properties, strategies as s
from .targets import collections, operations

COLLECTIONS = collections()
OPERATIONS = operations()
MODES = (properties.TYPED, properties.HOSTILE)
by_label = lambda target: target.label  # noqa: E731


def test_the_walk_finds_every_declared_target():
    """The registry is walked, not a list: every served type with a collection, every action and
    extension appear (so a family added later is fuzzed without editing this suite)."""
    nested = {t.name for t in registry.TYPES.values() if t.parent and registry.TYPES[t.parent].parent}
    assert nested == {"MachineNetworkInterfaceAddress"}  # read-only, two levels down: tests/service/test_networks.py
    assert {c.rtype.name for c in COLLECTIONS} == {t.name for t in registry.TYPES.values() if t.collection} - nested
    assert {(o.owner.name, o.name) for o in OPERATIONS} == {
        (t.name, name) for t in registry.TOP_LEVEL.values() for name in (*t.actions, *t.extensions)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("coll", COLLECTIONS, ids=by_label)
@given(data=st.data())
async def test_post_to_collection(sandbox, coll, mode, data):
    await properties.post_to_collection(sandbox, coll, mode, data)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("coll", COLLECTIONS, ids=by_label)
@given(data=st.data())
async def test_put_to_resource(sandbox, coll, mode, data):
    await properties.put_to_resource(sandbox, coll, mode, data)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", OPERATIONS, ids=by_label)
@given(data=st.data())
async def test_operation(sandbox, op, mode, data):
    await properties.use_operation(sandbox, op, mode, data)


@pytest.mark.parametrize("coll", COLLECTIONS, ids=by_label)
@given(data=st.data())
async def test_query_collection(sandbox, coll, data):
    await properties.query_collection(sandbox, coll, data)


@pytest.mark.parametrize("coll", COLLECTIONS, ids=by_label)
@given(data=st.data())
async def test_read_resource(sandbox, coll, data):
    await properties.read_resource(sandbox, coll, data)


@pytest.mark.parametrize("coll", COLLECTIONS, ids=by_label)
@given(data=st.data())
async def test_strange_paths_and_methods(sandbox, coll, data):
    await properties.strange_paths(sandbox, coll, data)


@given(data=st.data())
async def test_read_entry_point(sandbox, data):
    request = properties.Request("GET", "cloudEntryPoint", headers={"Accept": data.draw(s.accept())},
                                 params=data.draw(s.query(registry.CloudEntryPoint)))
    reply = await properties.exchange(sandbox, request)
    await properties.agree_across_formats(sandbox, request, reply)
