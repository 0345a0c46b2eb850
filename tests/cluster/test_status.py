"""`cimid cluster status` against a real etcd and a real node: members with their leader, nodes live and
down with their lease and capacity; exit status 1 once no member answers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from cimid.cluster.etcd import Etcd
from cimid.cluster.node import API_LEVEL
from cluster.processes import Node

pytestmark = pytest.mark.federation


def _status(config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cimid.cli", "cluster", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


async def test_status_lists_members_and_nodes(etcd_cluster, tmp_path):
    node = Node(tmp_path, "n1", etcd_cluster.endpoints)
    config = tmp_path / "status.toml"
    config.write_text(f"[cluster]\nendpoints = {json.dumps(etcd_cluster.endpoints)}\netcd_timeout = 1.0\n")
    etcd = Etcd(etcd_cluster.endpoints)
    await etcd.connect()
    try:
        await asyncio.to_thread(node.start)
        await etcd.put("/cimid/v1/nodeinfo/n2", json.dumps({"capacity": {}, "api_level": 1}).encode())
        for _ in range(100):  # the ledger is written right after registration
            if await etcd.get("/cimid/v1/capacity/n1"):
                break
            await asyncio.sleep(0.1)
        done = await asyncio.to_thread(_status, config)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert out.count(", leader, version 3.") == 1 and out.count(", follower, version 3.") == 2
        assert f"  n1: ready, {node.url}, api_level {API_LEVEL}" in out and " s left)" in out
        assert "0 machines, 0 reservations in flight; pools default 102400 MiB free" in out
        assert "  n2: DOWN (no lease)" in out
        etcd_cluster.stop()
        done = await asyncio.to_thread(_status, config)
        assert done.returncode == 1 and out.count("FAILED") == 0 and done.stdout.count(": FAILED: ") == 3
        assert "nodes: unknown (no etcd member answers with a leader)" in done.stdout
    finally:
        await etcd.close()
        await asyncio.to_thread(node.stop)
