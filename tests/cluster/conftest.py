"""Fixtures of the federation tests: a real 3-member etcd cluster on loopback ports, one per test (the
tests kill and stop members)."""

from __future__ import annotations

import pytest

from cluster.etcd_harness import EtcdCluster


@pytest.fixture
def etcd_cluster(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd")
    cluster.base.mkdir()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
