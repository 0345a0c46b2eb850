"""What a front knows of the federation, cached from etcd by watches: the live nodes (lease-bound
`nodes/<name>`), the nodes ever seen (`nodeinfo/<name>`), and the id -> node index
(`index/<collection>/<id>`). The index is derived data: a miss is answered by asking the nodes, and the
answer is written back."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from ..cluster.etcd import Entry, Etcd, EtcdUnavailable

log = logging.getLogger("cimid.front")


@dataclass(frozen=True)
class NodeRecord:
    name: str
    url: str
    api_level: int

    @property
    def base(self) -> str:
        """The prefix of every id and href the node writes for the front's requests."""
        return f"{self.url}/cimi/"


class Directory:
    def __init__(self, etcd: Etcd, prefix: str):
        self.etcd, self.prefix = etcd, prefix.rstrip("/") + "/"
        self.live: dict[str, NodeRecord] = {}
        self.known: dict[str, dict] = {}  # nodeinfo: capacity and api_level, also of nodes now down
        self.index: dict[tuple[str, str], tuple[str, int]] = {}  # (collection, id) -> (node, mod_revision)
        self.ready = asyncio.Event()
        self._seen: set[str] = set()
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.etcd.connect()
        self._tasks = [asyncio.create_task(self.etcd.mirror(f"{self.prefix}{part}/", handler), name=f"front-{part}")
                       for part, handler in (("nodes", self._nodes), ("nodeinfo", self._nodeinfo),
                                             ("index", self._index))]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.etcd.close()

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _loaded(self, part: str) -> None:
        self._seen.add(part)
        if self._seen == {"nodes", "nodeinfo", "index"}:
            self.ready.set()

    def _nodes(self, entries: dict[str, Entry], _changed) -> None:
        live = {}
        for entry in entries.values():
            name = entry.key.rsplit("/", 1)[-1]
            try:
                record = json.loads(entry.value)
                live[name] = NodeRecord(name, record["url"].rstrip("/"), int(record["api_level"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring the malformed node record %s", entry.key)
        self.live = live
        self._loaded("nodes")

    def _nodeinfo(self, entries: dict[str, Entry], _changed) -> None:
        known = {}
        for entry in entries.values():
            try:
                known[entry.key.rsplit("/", 1)[-1]] = json.loads(entry.value)
            except ValueError:
                log.warning("ignoring the malformed node information %s", entry.key)
        self.known = known
        self._loaded("nodeinfo")

    def _index(self, entries: dict[str, Entry], changed: set[str] | None) -> None:
        """Kept by change, not rebuilt: the index may hold many entries."""
        start = len(self.prefix) + len("index/")
        if changed is None:
            self.index = {}
            changed = set(entries)
        for key in changed:
            collection, _, id = key[start:].partition("/")
            entry = entries.get(key)
            if entry is None:
                self.index.pop((collection, id), None)
            else:
                self.index[(collection, id)] = (entry.value.decode(), entry.mod_revision)
        self._loaded("index")

    def down(self) -> list[str]:
        """Nodes that registered once and hold no lease now."""
        return sorted(set(self.known) - set(self.live))

    def owner(self, collection: str, id: str) -> str | None:
        found = self.index.get((collection, id))
        return found[0] if found else None

    async def remember(self, collection: str, id: str, node: str) -> None:
        """Index `id` as `node`'s; the first writer wins (create_revision == 0), so two fronts that found
        the same resource agree. Best effort: without etcd the next request asks the nodes again."""
        self.index[(collection, id)] = (node, 0)
        try:
            await self.etcd.create(self._key(collection, id), node.encode())
        except EtcdUnavailable as exc:
            log.info("could not index %s/%s: %s", collection, id, exc)

    async def forget(self, collection: str, id: str) -> None:
        """Drop an index entry its node no longer knows (only the entry read, not a newer one)."""
        found = self.index.pop((collection, id), None)
        try:
            if found and found[1]:
                await self.etcd.delete_if(self._key(collection, id), found[1])
            elif found:
                await self.etcd.delete(self._key(collection, id))
        except EtcdUnavailable as exc:
            log.info("could not drop the index entry %s/%s: %s", collection, id, exc)

    async def claimed(self, claim: str) -> str | None:
        """The node an earlier create with this idempotency claim went to, if any."""
        entry = await self.etcd.get(f"{self.prefix}idempotency/{claim}")
        return entry.value.decode() if entry else None

    async def claim(self, claim: str, node: str, seconds: int) -> str:
        """Record that this create goes to `node`, unless a create with the same claim went somewhere
        already; the node it goes to. The record lives as long as the nodes keep idempotency keys."""
        lease = await self.etcd.grant(seconds)
        if await self.etcd.create(f"{self.prefix}idempotency/{claim}", node.encode(), lease=lease):
            return node
        await self.etcd.revoke(lease)
        return await self.claimed(claim) or node

    def _key(self, collection: str, id: str) -> str:
        return f"{self.prefix}index/{collection}/{id}"
