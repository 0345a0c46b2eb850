"""A loopback federation for the tests of what a front serves (test_events, test_expand, test_operations):
a 3-member etcd, three sandbox nodes and two fronts (one strict), as real processes on 127.0.0.1. The
failure cases run on the namespaced topology instead (tests/federation)."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from cluster.etcd_harness import EtcdCluster
from cluster.processes import Front, Node


CIMI = "http://schemas.dmtf.org/cimi/1"
TTL = 4


class Federation:
    def __init__(self, base):
        self.etcd = EtcdCluster(base / "etcd")
        self.etcd.base.mkdir()
        self.nodes = [Node(base, f"n{i}", self.etcd.endpoints, lease_ttl=TTL) for i in (1, 2, 3)]
        self.front = Front(base, "front", self.etcd.endpoints)
        self.strict = Front(base, "strict", self.etcd.endpoints, strict=True)

    def start(self):
        self.etcd.start()
        for process in (*self.nodes, self.front, self.strict):
            process.start()

    def stop(self):
        for process in (self.front, self.strict, *self.nodes):
            process.stop()
        self.etcd.stop()


@pytest.fixture(scope="module")
async def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"))
    try:
        await asyncio.to_thread(fed.start)
        async with aiohttp.ClientSession() as session:
            fed.session = session
            await _until(lambda: _live_nodes(fed, 3))
            yield fed
    finally:
        await asyncio.to_thread(fed.stop)


async def _until(check, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {seconds} s")


async def _live_nodes(fed, expected: int) -> bool:
    status, doc, _ = await _get(fed, f"{fed.front.url}/cimi/machines")
    return status == 200 and not _.get("Warning") and await _registered(fed) == expected


async def _registered(fed) -> int:
    count = 0
    for node in fed.nodes:
        async with fed.session.get(f"{node.url}/cimi/cloudEntryPoint") as reply:
            count += reply.status == 200
    return count


async def _get(fed, url, **params):
    async with fed.session.get(url, params=params) as reply:
        body = await reply.read()
        return reply.status, (json.loads(body) if body and "json" in reply.content_type else body), reply.headers
