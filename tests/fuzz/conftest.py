"""Hypothesis profiles and the sandbox the fuzz tests share across examples.

`fast` (the default): a bounded, derandomized run for the fast tier, no example database. `fuzz`
(CIMID_HYPOTHESIS_PROFILE=fuzz, `make fuzz`): many more examples, random, with an example database in the
temp dir so a failure found once is replayed first next time, without littering the checkout."""

from __future__ import annotations

import os

import pytest
from conftest import HYPOTHESIS_HOME, make_client
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from cimid.model import registry

from .targets import create_document_type, minimal_document, world

# The sandbox is shared by the examples of one test (so they meet each other's resources), and the
# machine is shared and noisy: no deadline, and no complaint about slow or function-scoped set-up.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                     HealthCheck.data_too_large, HealthCheck.large_base_example])
settings.register_profile("fast", max_examples=8, derandomize=True, database=None, **_COMMON)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("CIMID_FUZZ_EXAMPLES", "100")), derandomize=False,
    database=DirectoryBasedExampleDatabase(HYPOTHESIS_HOME / "examples"), **_COMMON)
settings.load_profile(os.environ.get("CIMID_HYPOTHESIS_PROFILE", "fast"))


async def populate(client) -> None:
    """One resource of every creatable top-level collection, from the smallest complete document, so that
    references, Jobs and the sub-collection items of what was made exist from the first example."""
    for rtype in registry.TOP_LEVEL.values():
        if rtype.creatable:
            await client.post(rtype.collection, minimal_document(create_document_type(rtype), await world(client)))


@pytest.fixture
async def sandbox(tmp_path):
    """One sandbox per test, shared by its examples (they meet what earlier ones made). Not wider: every
    accepted write adds a Job, and listings that grow without end would make each example slower."""
    client = await make_client(tmp_path)
    await populate(client)
    yield client
    await client.client.close()
