"""The front's caches from etcd's watch events (the handlers are fed the way Etcd.mirror feeds them)."""

from __future__ import annotations

import json

from cimid.cluster.etcd import Entry
from cimid.front.directory import Directory


def _entry(key: str, value: bytes, revision: int = 1) -> Entry:
    return Entry(key, value, revision, 0)


def test_the_index_follows_puts_and_deletes_and_full_reads():
    directory = Directory(etcd=None, prefix="/cimid/v1/")
    entries = {k: _entry(k, b"n1") for k in ("/cimid/v1/index/machines/a", "/cimid/v1/index/jobs/j")}
    directory._index(entries, None)
    assert directory.owner("machines", "a") == "n1" and directory.owner("jobs", "j") == "n1"
    entries["/cimid/v1/index/machines/b"] = _entry("/cimid/v1/index/machines/b", b"n2", 7)
    directory._index(entries, {"/cimid/v1/index/machines/b"})
    assert directory.owner("machines", "b") == "n2" and directory.index[("machines", "b")] == ("n2", 7)
    del entries["/cimid/v1/index/machines/a"]
    directory._index(entries, {"/cimid/v1/index/machines/a"})
    assert directory.owner("machines", "a") is None and directory.owner("jobs", "j") == "n1"
    directory._index({}, None)  # a full read after a compaction: what etcd holds, nothing else
    assert directory.index == {}


def test_live_and_down_nodes():
    directory = Directory(etcd=None, prefix="/cimid/v1/")
    record = json.dumps({"url": "http://127.0.0.1:1/", "api_level": 1}).encode()
    directory._nodes({"/cimid/v1/nodes/n1": _entry("/cimid/v1/nodes/n1", record),
                      "/cimid/v1/nodes/bad": _entry("/cimid/v1/nodes/bad", b"{")}, None)
    directory._nodeinfo({f"/cimid/v1/nodeinfo/{n}": _entry(f"/cimid/v1/nodeinfo/{n}", b"{}") for n in ("n1", "n2")},
                        None)
    assert list(directory.live) == ["n1"] and directory.live["n1"].base == "http://127.0.0.1:1/cimi/"
    assert directory.down() == ["n2"]
    assert not directory.ready.is_set()  # the index is not read yet
    directory._index({}, None)
    assert directory.ready.is_set()
