"""The reconciler, with real fronts, nodes and etcd on loopback: one front leads at a time and another
takes over when it dies; the index lost in etcd is rebuilt from the nodes, and an entry no node backs
is dropped."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from cimid.cluster.etcd import Etcd
from cluster.etcd_harness import EtcdCluster
from cluster.processes import Front, Node

pytestmark = pytest.mark.federation

CIMI = "http://schemas.dmtf.org/cimi/1"


async def _until(check, seconds=20.0):
    for _ in range(int(seconds / 0.1)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true after {seconds} s")


async def test_one_front_reconciles_the_index_and_another_takes_over(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.base.mkdir()
    nodes = [Node(tmp_path, f"n{i}", cluster.endpoints, lease_ttl=4) for i in (1, 2)]
    fronts = [Front(tmp_path, f"f{i}", cluster.endpoints, reconcile_seconds=0.5, lease_ttl=3) for i in (1, 2)]
    etcd = Etcd(cluster.endpoints)
    try:
        await asyncio.to_thread(cluster.start)
        for process in (*nodes, *fronts):
            await asyncio.to_thread(process.start)
        await etcd.connect()
        async with aiohttp.ClientSession() as session:
            made = []
            for i in range(2):
                body = {"resourceURI": f"{CIMI}/MachineCreate", "name": f"m{i}",
                        "machineTemplate": {"href": f"{fronts[0].url}/cimi/machineTemplates/small-tiny-linux"}}
                for _ in range(100):  # until the front sees the nodes' capacity
                    async with session.post(f"{fronts[0].url}/cimi/machines", json=body) as reply:
                        if reply.status == 202:
                            made.append(reply.headers["Location"].rsplit("/", 1)[-1])
                            break
                    await asyncio.sleep(0.1)
            assert len(made) == 2

            async def leader() -> Front | None:
                holder = await etcd.get("/cimid/v1/election/reconciler")
                if holder is None:
                    return None
                return next((f for f in fronts if f"reconciler: {holder.value.decode()} leads" in f.log.read_text()),
                            None)

            first = await _until(leader)

            async def index() -> dict[str, str]:
                entries, _ = await etcd.get_prefix("/cimid/v1/index/machines/")
                return {e.key.rsplit("/", 1)[-1]: e.value.decode() for e in entries}

            # lost from etcd: rebuilt from the nodes
            for id in made:
                await etcd.delete(f"/cimid/v1/index/machines/{id}")
            await _until(lambda: _has(index, made))
            owners = await index()
            for node in nodes:
                async with session.get(f"{node.url}/cimi/machines") as reply:
                    for machine in (await reply.json()).get("machines", []):
                        assert owners[machine["id"].rsplit("/", 1)[-1]] == node.name

            # the leader dies: the other front leads once its lease is gone, and drops what no node backs
            first.signal(signal.SIGKILL)
            first.popen.wait()
            await etcd.put("/cimid/v1/index/machines/00000000000000000000000000000000", b"n1")

            async def another() -> Front | None:
                now = await leader()
                return now if now is not first else None

            second = await _until(another, seconds=20)
            assert second is fronts[1 - fronts.index(first)]
            await _until(lambda: _lacks(index, "00000000000000000000000000000000"))
    finally:
        await etcd.close()
        for process in (*fronts, *nodes):
            await asyncio.to_thread(process.stop)
        cluster.stop()


async def _has(index, ids) -> bool:
    return set(ids) <= set(await index())


async def _lacks(index, id) -> bool:
    return id not in await index()


def _basic(user: str, password: str) -> dict:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _index_of(etcd: Etcd) -> dict[str, str]:
    entries, _ = await etcd.get_prefix("/cimid/v1/index/machines/")
    return {e.key.rsplit("/", 1)[-1]: e.value.decode() for e in entries}


async def _made_on(session, url: str, headers: dict) -> str:
    """A machine made on the node at `url`; its id."""
    body = {"resourceURI": f"{CIMI}/MachineCreate", "name": "owned",
            "machineTemplate": {"href": f"{url}/cimi/machineTemplates/small-tiny-linux"}}
    async with session.post(f"{url}/cimi/machines", json=body, headers=headers) as reply:
        assert reply.status == 202, await reply.text()
        return reply.headers["Location"].rsplit("/", 1)[-1]


async def test_the_reconciler_asks_nodes_with_consumers_as_the_front_over_mutual_tls(tmp_path):
    """A node with consumers of its own answers the reconciler's listing (CIMID-User over mutual TLS):
    the index lost in etcd is rebuilt."""
    import ssl
    ca = tmp_path / "ca"
    cluster = EtcdCluster(tmp_path / "etcd", size=1, ca=ca)
    cluster.base.mkdir()
    node = Node(tmp_path, "n1", cluster.endpoints, lease_ttl=4, ca=ca, users={"owner": "owner-pw"})
    front = Front(tmp_path, "f1", cluster.endpoints, reconcile_seconds=0.5, lease_ttl=3, ca=ca)
    etcd = Etcd.from_config({"endpoints": cluster.endpoints, "etcd_timeout": 2.0, "etcd_server_name": "etcd",
                             "tls_ca": str(ca / "ca.crt"), "tls_certificate": str(ca / "f1.crt"),
                             "tls_key": str(ca / "f1.key")})
    try:
        await asyncio.to_thread(cluster.start)
        for process in (node, front):
            await asyncio.to_thread(process.start)
        await etcd.connect()
        context = ssl.create_default_context(cafile=str(ca / "ca.crt"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.get(f"{node.url}/cimi/machines") as reply:
                assert reply.status == 401  # the node's consumers are needed to read it
            made = await _made_on(session, node.url, _basic("owner", "owner-pw"))  # no front indexed it
            await _until(lambda: _has(lambda: _index_of(etcd), [made]))
            await etcd.delete(f"/cimid/v1/index/machines/{made}")
            await _until(lambda: _has(lambda: _index_of(etcd), [made]))
            assert (await _index_of(etcd))[made] == "n1"
        assert "refuses to list" not in front.log.read_text()
    finally:
        await etcd.close()
        for process in (front, node):
            await asyncio.to_thread(process.stop)
        cluster.stop()


async def test_without_tls_the_reconciler_says_it_cannot_list_a_node_with_consumers(tmp_path):
    """Without TLS a front cannot show who it is: a node with consumers refuses its listing, and the
    front logs that as an error (the index of that node stays lost) rather than rebuilding nothing
    silently."""
    cluster = EtcdCluster(tmp_path / "etcd", size=1)
    cluster.base.mkdir()
    node = Node(tmp_path, "n1", cluster.endpoints, lease_ttl=4, users={"owner": "owner-pw"})
    front = Front(tmp_path, "f1", cluster.endpoints, reconcile_seconds=0.5, lease_ttl=3)
    etcd = Etcd(cluster.endpoints)
    try:
        await asyncio.to_thread(cluster.start)
        for process in (node, front):
            await asyncio.to_thread(process.start)
        await etcd.connect()
        async with aiohttp.ClientSession() as session:
            made = await _made_on(session, node.url, _basic("owner", "owner-pw"))  # on the node: not indexed

            async def logged() -> bool:
                return "reconciler: node n1 refuses to list its machines (401)" in front.log.read_text()

            await _until(logged)
            assert "set cluster.tls_ca" in front.log.read_text()
            assert made not in await _index_of(etcd)
    finally:
        await etcd.close()
        for process in (front, node):
            await asyncio.to_thread(process.stop)
        cluster.stop()
