"""The federation of the design study's test plan (§6.1), built once for this package: three host
namespaces, each with one etcd member and one sandbox cimid node, and a hub namespace with two fronts
behind one name. The tests' own requests leave from the hub too (each test's thread runs inside it), so
every address any of them uses exists only inside namespaces made here. Teardown stops every process by
PID, then removes the namespaces.

Each test may break things (kill, stop, partition); `healthy` puts back whatever is down before the
next one starts, and waits until both fronts see three live nodes."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import time
from dataclasses import dataclass

import aiohttp
import pytest

from cimid.cluster.node import FRONT_HEADER
from cluster.etcd_harness import EtcdCluster
from cluster.namespaces import Topology, in_netns, inside
from cluster.processes import Front, Node

CIMI = "http://schemas.dmtf.org/cimi/1"
TTL = 4  # the nodes' lease; they fence after 2/3 of it without an acknowledged keepalive
FRONT_TTL = 3  # the fronts' lease (the reconciler's election)
RECONCILE_SECONDS = 1.0
RESERVATION_SECONDS = 8.0


@dataclass
class Entry:
    key: str
    value: bytes
    lease: int
    mod_revision: int


class Federation:
    def __init__(self, base):
        self.base = base
        self.net = Topology()
        self.etcd = EtcdCluster(base / "etcd", network=self.net)
        self.nodes = [self.node(i) for i in (1, 2, 3)]
        self.public = f"http://{Topology.HUB_ADDRESS}:8081"  # both fronts answer with f1's address
        self.fronts = [Front(base, f"f{i}", self.etcd.endpoints, netns=self.net.hub, host=Topology.HUB_ADDRESS,
                             port=8080 + i, public_base_url=self.public, reconcile_seconds=RECONCILE_SECONDS,
                             lease_ttl=FRONT_TTL, reservation_seconds=RESERVATION_SECONDS) for i in (1, 2)]
        self.session: aiohttp.ClientSession | None = None

    def node(self, i: int, api_level: int = 0) -> Node:
        """Node n<i> on host i; it lists its own host's member first, as a node would (the member a
        channel that sticks to one member would use)."""
        own = self.etcd.names[i - 1]
        endpoints = [self.etcd.endpoint(own)] + [self.etcd.endpoint(n) for n in self.etcd.names if n != own]
        return Node(self.base, f"n{i}", endpoints, lease_ttl=TTL, netns=self.net.host(i),
                    host=Topology.client_address(i), api_level=api_level)

    @property
    def front(self) -> Front:
        return self.fronts[0]

    def start(self) -> None:
        self.net.up()
        self.etcd.base.mkdir()
        self.etcd.start()
        for process in (*self.nodes, *self.fronts):
            process.start()

    def stop(self) -> None:
        try:
            for process in (*self.fronts, *self.nodes):
                process.stop()
            self.etcd.stop()
        finally:
            self.net.down()

    def revive(self) -> None:
        """Start again whatever a test left dead (data kept), and undo network faults."""
        for i in (1, 2, 3):
            self.net.link_up(i)
            self.net.heal_peers(i)
        for name in self.etcd.names:
            process = self.etcd.processes.get(name)
            if process is None or process.poll() is not None:
                self.etcd.restart(name)
        for process in (*self.nodes, *self.fronts):
            if process.popen is not None and process.popen.poll() is None:
                process.signal(signal.SIGCONT)  # a stopped one goes on
            else:
                if process.popen is not None:
                    process.popen.stdout.close()
                process.start()

    # ------------------------------------------------------------------ etcd, as the hub sees it

    async def etcdctl(self, *args: str, endpoints: list[str] | None = None) -> subprocess.CompletedProcess:
        command = in_netns(self.net.hub, ["etcdctl", "--endpoints", ",".join(endpoints or self.etcd.endpoints),
                                          "--command-timeout=2s", *args])
        process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                       env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        out, err = await process.communicate()
        return subprocess.CompletedProcess(command, process.returncode, out.decode(), err.decode())

    async def entries(self, prefix: str, endpoints: list[str] | None = None) -> list[Entry] | None:
        """Every key under /cimid/v1/<prefix>; None when etcd does not answer."""
        done = await self.etcdctl("get", "--prefix", f"/cimid/v1/{prefix}", "-w", "json", endpoints=endpoints)
        if done.returncode != 0:
            return None
        return [Entry(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                      kv.get("lease", 0), kv["mod_revision"]) for kv in json.loads(done.stdout).get("kvs", [])]

    async def entry(self, key: str, endpoints: list[str] | None = None) -> Entry | None:
        found = await self.entries(key, endpoints)
        return next((e for e in found or [] if e.key == f"/cimid/v1/{key}"), None)

    async def index(self, collection: str = "machines") -> dict[str, str] | None:
        """id -> node of the front's index."""
        found = await self.entries(f"index/{collection}/")
        return None if found is None else {e.key.rsplit("/", 1)[-1]: e.value.decode() for e in found}

    # ------------------------------------------------------------------ HTTP from the hub

    async def get(self, url: str, **params) -> tuple[int, object, dict]:
        async with self.session.get(url, params=params) as reply:
            body = await reply.read()
            doc = json.loads(body) if body and "json" in reply.content_type else body
            return reply.status, doc, dict(reply.headers)

    async def create(self, name: str, front: Front | None = None, headers: dict | None = None,
                     **extra) -> tuple[int, dict, dict]:
        """A MachineCreate from the seeded template, through a front (f1 by default)."""
        body = {"resourceURI": f"{CIMI}/MachineCreate", "name": name,
                "machineTemplate": {"href": f"{self.public}/cimi/machineTemplates/small-tiny-linux"}, **extra}
        async with self.session.post(f"{(front or self.front).url}/cimi/machines", json=body,
                                     headers=headers or {}) as reply:
            text = await reply.text()
            return reply.status, (json.loads(text) if text and "json" in reply.content_type else {}), \
                dict(reply.headers)

    async def machines_on(self, node: Node) -> list[dict]:
        """The machines a node holds, asked directly."""
        status, doc, _h = await self.get(f"{node.url}/cimi/machines")
        assert status == 200, doc
        return doc.get("machines", [])

    def front_url(self, node: Node, url: str) -> str:
        return url.replace(f"{node.url}/cimi/", f"{self.public}/cimi/")

    async def takes_a_fronts_change(self, node: Node) -> bool:
        """The node is not fenced: a front's DELETE of nothing gets its 404, not the fence's 503."""
        async with self.session.delete(f"{node.url}/cimi/machineConfigs/nothing-{time.monotonic_ns()}",
                                       headers={FRONT_HEADER: "test"}) as reply:
            return reply.status == 404

    async def ready(self) -> bool:
        """Both fronts list from three live nodes, etcd holds three registrations, no node is fenced."""
        for front in self.fronts:
            try:
                status, _doc, headers = await self.get(f"{front.url}/cimi/machines")
            except aiohttp.ClientError:
                return False
            if status != 200 or "Warning" in headers:
                return False
        registered = await self.entries("nodes/")
        if registered is None or len(registered) != 3:
            return False
        for node in self.nodes:
            if not await self.takes_a_fronts_change(node):
                return False
        return True


async def until(check, seconds: float = 30.0, step: float = 0.1):
    """The first true value of `check()` within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError(f"not true after {seconds} s: {check}")


@pytest.fixture(scope="package")
async def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"))
    try:
        await asyncio.to_thread(fed.start)
        async with aiohttp.ClientSession() as session:
            fed.session = session
            yield fed
    finally:
        await asyncio.to_thread(fed.stop)


@pytest.fixture
def in_hub(federation):
    """This test's requests leave from the hub (the loop runs in this thread)."""
    with inside(federation.net.hub):
        yield


@pytest.fixture
async def fed(federation, in_hub):
    """The federation, whole again and seen whole by both fronts."""
    await asyncio.to_thread(federation.revive)
    await until(federation.ready, seconds=60)
    return federation
