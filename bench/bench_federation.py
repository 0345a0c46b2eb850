"""Benchmark 10: federation (issue 13). A 3-member etcd, three sandbox nodes and two fronts, every process
on 127.0.0.1 (the same launchers the tests use, tests/cluster):

- GET one machine through a front, against the same GET on its node directly (wrk, interleaved rounds);
- a page of 50 with $filter and $orderby from 3 nodes x 3,000 machines through a front (the nodes' rows
  are written straight into their SQLite, as bench_10k does), checked against the expected names;
- 20 concurrent creates through two fronts onto three nodes with room for 18: exactly 18 accepted, no
  node past its room, and the accepted creates per second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sqlite3
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psutil

from bench_10k import stamp
from bench_get import wrk
from common import BENCH_DIR, Client, Figure, WrongAnswer, median, query_string

sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
from cluster.etcd_harness import EtcdCluster  # noqa: E402 - the tests' launchers, not a copy of them
from cluster.processes import Front, Node  # noqa: E402

PER_NODE = 3_000
PAGE = "/cimi/machines?" + query_string({"$filter": "cpu>=2", "$orderby": "name:desc", "$first": "1",
                                         "$last": "50"})
PLACES_PER_NODE = 6
CIMI = "http://schemas.dmtf.org/cimi/1"


class Measured:
    """What bench_get.wrk needs of a server: its port and CPU time."""

    def __init__(self, url: str, pid: int):
        self.port, self.tls, self.process = urlsplit(url).port, False, psutil.Process(pid)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


def populate(database: Path, node: str) -> list[tuple[str, int]]:
    """PER_NODE stopped Machines m-<node>-<i> written as cimid writes them; their (name, cpu)."""
    start, rows, made = dt.datetime(2025, 1, 1, tzinfo=dt.UTC), [], []
    for i in range(PER_NODE):
        machine_id, name, cpu = uuid.uuid4().hex, f"m-{node}-{i:04}", i % 4 + 1
        created = stamp(start + dt.timedelta(seconds=i))
        spec = {"id": machine_id, "name": name, "cpu": cpu, "memory": cpu * 1024, "cpu_arch": "x86_64", "disks": [],
                "image_location": None, "user_data": None, "credential": None}
        rows.append(("Machine", machine_id, "", name, created, created, "STOPPED",
                     json.dumps({"cpu": cpu, "memory": cpu * 1024, "cpuArch": "x86_64"}),
                     json.dumps({"spec": spec, "stable": "STOPPED"}), ""))
        made.append((name, cpu))
    conn = sqlite3.connect(database)
    try:
        with conn:
            conn.executemany("INSERT INTO resources (kind, id, parent, name, created, updated, state, doc, internal,"
                             " owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()
    return made


def run(workdir: Path, quick: bool) -> list[Figure]:
    base = workdir / "federation"
    base.mkdir()
    figures: list[Figure] = []
    parts = (("reads", lambda etcd: _reads(base, etcd, quick)), ("creates", lambda etcd: _creates(base, etcd)))
    for name, part in parts:
        etcd = EtcdCluster(base / f"etcd-{name}")  # each part its own cluster: no node of the other in it
        etcd.base.mkdir()
        try:
            etcd.start()
            figures += part(etcd)
        finally:
            etcd.stop()
    return figures


def _start(stack: ExitStack, process) -> str:
    url = process.start()
    stack.callback(process.stop)
    return url


def _reads(base: Path, etcd: EtcdCluster, quick: bool) -> list[Figure]:
    with ExitStack() as stack:
        nodes = [Node(base, f"n{i}", etcd.endpoints) for i in (1, 2, 3)]
        everything = []
        for node in nodes:  # the store exists once the node has started: stop, fill, start again
            node.start()
            node.stop()
            everything += populate(base / node.name / "cimid.sqlite3", node.name)
            _start(stack, node)
        front = Front(base, "front", etcd.endpoints)
        _start(stack, front)
        client, direct = Client(front.port), Client(nodes[0].port)
        stack.callback(client.close)
        stack.callback(direct.close)
        _wait_for_nodes(client, 3)

        # one machine of n1, GET through the front and on n1 itself
        machine = direct.get_json("/cimi/machines?$last=1")["machines"][0]["id"]
        path = urlsplit(machine).path
        if client.get_json(path)["id"] != f"{front.url}{path}":
            raise WrongAnswer(f"the front did not answer {path} with its own id")
        rounds, seconds = (2, 2) if quick else (5, 5)
        front_rates, node_rates, front_cpu, node_cpu = [], [], [], []
        for _ in range(rounds):
            rate, cpu = wrk(Measured(front.url, front.popen.pid), path, seconds, 8)
            front_rates.append(rate)
            front_cpu.append(cpu)
            rate, cpu = wrk(Measured(nodes[0].url, nodes[0].popen.pid), path, seconds, 8)
            node_rates.append(rate)
            node_cpu.append(cpu)
            print(f"  GET machine: front {front_rates[-1]:,.0f} req/s ({front_cpu[-1]:.0f} us of front CPU each), "
                  f"its node directly {node_rates[-1]:,.0f} req/s ({node_cpu[-1]:.0f} us of node CPU each)")
        ratio = median(front_rates) / median(node_rates)

        # a page of 50 of 9,000, checked against the names it must hold
        expected = sorted((name for name, cpu in everything if cpu >= 2), reverse=True)[:50]
        samples, count = [], sum(cpu >= 2 for _name, cpu in everything)
        for _ in range(30 if quick else 150):
            started = time.perf_counter()
            doc = client.get_json(PAGE)
            samples.append((time.perf_counter() - started) * 1000)
            names = [m["name"] for m in doc.get("machines", [])]
            if names != expected or doc["count"] != count:
                raise WrongAnswer(f"the merged page holds {names[:3]}... count {doc['count']}, not {expected[:3]}... "
                                  f"count {count}")
        node_samples = []
        for _ in range(30 if quick else 150):
            started = time.perf_counter()
            direct.get_json(PAGE)
            node_samples.append((time.perf_counter() - started) * 1000)
        print(f"  page of 50 of {len(everything):,} through the front: median {median(samples):.1f} ms "
              f"(one node directly, its 3,000: {median(node_samples):.1f} ms); answers checked on every request")
    return [Figure.measured("Federation GET machine: its node directly (baseline)", median(node_rates), "req/s", 0),
            Figure.measured("Federation GET machine: through a front", median(front_rates), "req/s", 0),
            Figure.measured("Federation GET machine: front / node", ratio, "", 2, ">=", 0.5),
            Figure.measured("Federation GET machine: the node's CPU per request", median(node_cpu), "us", 0),
            Figure.measured("Federation GET machine: the front's own CPU per request", median(front_cpu), "us", 0),
            Figure.measured("Federation page of 50, $filter+$orderby, 3 nodes x 3,000: one node directly",
                            median(node_samples), "ms", 1),
            Figure.measured("Federation page of 50, $filter+$orderby, 3 nodes x 3,000: median", median(samples),
                            "ms", 1, "<=", 30)]


def _wait_for_nodes(client: Client, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, headers, _body = client.request("GET", "/cimi/machines?$last=1")
        if status == 200 and "warning" not in headers:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the front did not see {count} nodes within 30 s")


def _creates(base: Path, etcd: EtcdCluster) -> list[Figure]:
    """Fresh nodes (c1..c3) with room for PLACES_PER_NODE 1-vCPU machines each, and two fronts."""
    ratio = (PLACES_PER_NODE + 0.5) / (os.cpu_count() or 1)
    with ExitStack() as stack:
        nodes = [Node(base, f"c{i}", etcd.endpoints, cpu_allocation_ratio=ratio) for i in (1, 2, 3)]
        for node in nodes:
            _start(stack, node)
        fronts = [Front(base, "cf1", etcd.endpoints)]
        fronts.append(Front(base, "cf2", etcd.endpoints, public_base_url=fronts[0].url))
        for front in fronts:
            _start(stack, front)
        for front in fronts:
            _wait_for_ledger(front, nodes)
        accepted, seconds = asyncio.run(_burst(fronts, 20))
        placed = [Client(node.port).get_json("/cimi/machines").get("count", 0) for node in nodes]
        places = PLACES_PER_NODE * len(nodes)
        print(f"  20 concurrent creates through 2 fronts onto 3 nodes with {places} places: {accepted} accepted in "
              f"{seconds * 1000:.0f} ms, per node {placed}")
        if accepted != min(20, places) or any(n > PLACES_PER_NODE for n in placed) or sum(placed) != accepted:
            raise WrongAnswer(f"{accepted} creates accepted and {placed} machines per node, with "
                              f"{PLACES_PER_NODE} places on each")
    return [Figure("Federation 20 concurrent creates, 2 fronts, 3 nodes: overbooking",
                   f"none ({accepted} of 20 placed in {places} places)", "none", True),
            Figure.measured("Federation 20 concurrent creates: accepted per second", accepted / seconds, "/s", 1)]


def _wait_for_ledger(front: Front, nodes: list[Node]) -> None:
    client = Client(front.port)
    try:
        _wait_for_nodes(client, len(nodes))
    finally:
        client.close()


async def _burst(fronts: list[Front], count: int) -> tuple[int, float]:
    public = fronts[0].url
    body = {"resourceURI": f"{CIMI}/MachineCreate",
            "machineTemplate": {"href": f"{public}/cimi/machineTemplates/small-tiny-linux"}}
    async with aiohttp.ClientSession() as session:
        async def create(i: int) -> int:
            async with session.post(f"{fronts[i % len(fronts)].url}/cimi/machines",
                                    json={**body, "name": f"burst-{i}"}) as reply:
                await reply.read()
                if reply.status not in (202, 503):
                    raise WrongAnswer(f"a create answered {reply.status}")
                return reply.status
        started = time.perf_counter()
        statuses = await asyncio.gather(*(create(i) for i in range(count)))
        return statuses.count(202), time.perf_counter() - started
