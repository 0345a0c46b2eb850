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
