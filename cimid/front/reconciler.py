"""The reconciler: one front at a time, elected through etcd, keeps the id -> node index true to the
nodes. The index is derived data (fronts write it as they learn who owns what), so it can hold entries
for resources a node no longer has (deleted through the node itself, or a Job its retention dropped)
and lack entries (etcd lost them, or a front died between a node's answer and its index write). Every
round the reconciler lists, on every live node, the ids of each collection the index names plus
`machines` and `jobs`, drops the entries a node no longer backs and writes the missing ones (the first
writer wins, as for any front).

Reservations need no reconciler: one whose outcome nobody learnt expires by itself (placement.py).

The election is a key bound to the front's own lease, created only if absent: the holder leads until
its lease ends (it stops, or cannot keep its lease alive); the others try again each round.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from ..cluster.etcd import Etcd, EtcdUnavailable, LeaseKeeper
from .directory import Directory, NodeRecord

log = logging.getLogger("cimid.front")

ALWAYS = ("machines", "jobs")


class Reconciler:
    def __init__(self, etcd: Etcd, directory: Directory, name: str, list_ids: Callable[[NodeRecord, str],
                 Awaitable[set[str] | None]], lease_ttl: int, every_seconds: float):
        self.etcd, self.directory, self.name = etcd, directory, name
        self.list_ids, self.every_seconds = list_ids, every_seconds
        # the election key is written each round, under whichever lease is current
        self.keeper = LeaseKeeper(etcd, lease_ttl, lambda lease: asyncio.sleep(0))
        self.key = f"{directory.prefix}election/reconciler"
        self._held = False

    @property
    def leading(self) -> bool:
        return self.keeper.safe and self._held

    async def run(self) -> None:
        keeper = asyncio.create_task(self.keeper.run(), name="reconciler-lease")
        try:
            while True:
                await asyncio.sleep(self.every_seconds)
                try:
                    if await self._elected():
                        await self.reconcile()
                except EtcdUnavailable as exc:
                    log.info("reconciler: etcd does not answer (%s)", exc)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _elected(self) -> bool:
        if not self.keeper.safe:
            self._held = False
            return False
        if await self.etcd.create(self.key, self.name.encode(), lease=self.keeper.lease):
            log.info("reconciler: %s leads", self.name)
        holder = await self.etcd.get(self.key)
        self._held = holder is not None and holder.value == self.name.encode() and holder.lease == self.keeper.lease
        return self._held

    async def reconcile(self) -> None:
        directory = self.directory
        entries, _revision = await self.etcd.get_prefix(f"{directory.prefix}index/")
        start = len(directory.prefix) + len("index/")
        index: dict[tuple[str, str], tuple[str, int]] = {}
        for entry in entries:
            collection, _, id = entry.key[start:].partition("/")
            index[(collection, id)] = (entry.value.decode(), entry.mod_revision)
        collections = sorted({c for c, _ in index} | set(ALWAYS))
        live = dict(directory.live)
        dropped = added = 0
        for node in live.values():
            for collection in collections:
                ids = await self.list_ids(node, collection)
                if ids is None:
                    continue  # the node did not answer: judge nothing of it this round
                for (c, id), (owner, revision) in index.items():
                    if c == collection and owner == node.name and id not in ids:
                        dropped += await self.etcd.delete_if(f"{directory.prefix}index/{c}/{id}", revision)
                for id in ids - {id for (c, id) in index if c == collection}:
                    added += await self.etcd.create(f"{directory.prefix}index/{collection}/{id}",
                                                    node.name.encode())
        gone = {name for name in {owner for owner, _ in index.values()} if name not in directory.known}
        for (c, id), (owner, revision) in index.items():
            if owner in gone:  # a node removed from the federation (its nodeinfo deleted)
                dropped += await self.etcd.delete_if(f"{directory.prefix}index/{c}/{id}", revision)
        if dropped or added:
            log.info("reconciler: %d index entries dropped, %d added", dropped, added)


def parse_ids(data: bytes, items: str, prefix: str) -> set[str]:
    """The ids of a node's collection answer (`$select=id`) that start with `prefix` (the collection's
    URL), without it: the index keys' last part."""
    ids = set()
    for item in json.loads(data).get(items, []):
        href = item.get("id", "")
        if href.startswith(prefix) and "/" not in href[len(prefix):]:
            ids.add(href[len(prefix):])
    return ids
