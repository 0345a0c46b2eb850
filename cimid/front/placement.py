"""Where a create goes: the `cimid_place` hook over fresh candidates, and the capacity ledger in etcd
that makes the choice safe when fronts create concurrently.

The ledger, `capacity/<node>`, holds the node's allocatable cpu and memory and what its machines use
(written by the node from its own store whenever that changes), and the reservations fronts hold for
creates in flight (`inflight`). The front names its reservation to the node (the CIMID-Reservation
header); the node drops it in the same write that makes its figures count the machine it made, so
nothing is counted twice, and the front drops it when the node made nothing. Every write is a
compare-and-swap on the record's mod_revision, so of two fronts that saw the same free capacity only one
reserves it. A reservation whose outcome nobody learnt (a front or node died) expires after
`reservation_seconds`.
"""

from __future__ import annotations

import json
import time
import uuid

from ..cluster.etcd import Etcd
from ..hookspecs import PlacementCandidate, PlacementRequest, hookimpl
from ..model.registry import FAMILIES, FAMILY_OF, collection_type

# The node api_level (cimid.cluster.node.API_LEVEL) that first served each family through a front; a
# family not named here needs level 1. Level 1 nodes, the federation's first, predate the Networks family.
# A front never sends a request to a node of a lower level: not a create (placement skips the node), not a
# list (the node is not asked, and the list is not partial for it), not a search for an unindexed id.
FAMILY_LEVELS = {"networks": 2}


def collection_level(collection: str) -> int:
    """The api_level a node needs to serve `collection` (a top-level collection name)."""
    rtype = collection_type(collection)
    return FAMILY_LEVELS.get(FAMILY_OF[rtype.name].name, 1) if rtype else 1


def create_level(collection: str, template: dict) -> int:
    """The api_level a create needs: its collection's, and for a Machine that of every family whose part
    of a MachineTemplate (e.g. networkInterfaces) the template uses."""
    level = collection_level(collection)
    if collection == "machines":
        for family in FAMILIES:
            if any(template.get(part) for part in family.machine_template_parts):
                level = max(level, FAMILY_LEVELS.get(family.name, 1))
    return level


class BuiltinPlacement:
    """Filters, then weights: the node must be the target (if one is named), speak the request's
    api_level and have room; of those, the fewest machines, then the most free memory, then the name."""

    @hookimpl(trylast=True)
    def cimid_place(self, request: PlacementRequest, candidates: list[PlacementCandidate]) -> str | None:
        fits = [c for c in candidates
                if (request.target is None or c.name == request.target) and c.api_level >= request.api_level
                and c.free_cpu >= request.cpu and c.free_memory_kb >= request.memory_kb]
        if not fits:
            return None
        return min(fits, key=lambda c: (c.machines, -c.free_memory_kb, c.name)).name


def _pending(record: dict, now: float) -> list[dict]:
    return [r for r in record.get("inflight", {}).values() if r["expires"] > now]


def free(record: dict, now: float) -> tuple[int, int]:
    """(cpu, memory_kb) a node can still take: allocatable, less used, less live reservations."""
    live = _pending(record, now)
    return (record.get("cpu", 0) - record.get("used_cpu", 0) - sum(r["cpu"] for r in live),
            record.get("memory_kb", 0) - record.get("used_memory_kb", 0) - sum(r["memory_kb"] for r in live))


class Ledger:
    def __init__(self, etcd: Etcd, prefix: str, reservation_seconds: float = 60.0):
        self.etcd, self.prefix, self.reservation_seconds = etcd, prefix, reservation_seconds

    def _key(self, node: str) -> str:
        return f"{self.prefix}capacity/{node}"

    async def read(self, node: str) -> tuple[dict, int]:
        entry = await self.etcd.get(self._key(node))
        return (json.loads(entry.value), entry.mod_revision) if entry else ({}, 0)

    async def candidate(self, node: str, api_level: int) -> PlacementCandidate | None:
        record, _revision = await self.read(node)
        if "cpu" not in record:
            return None  # the node has not written its capacity yet
        cpu, memory = free(record, time.time())
        machines = record.get("machines", 0) + len(_pending(record, time.time()))
        return PlacementCandidate(node, api_level, cpu, memory, machines)

    async def reserve(self, node: str, cpu: int, memory_kb: int) -> str | None:
        """Take cpu and memory on `node`; the reservation's id, or None if the node has no room now."""
        rid = uuid.uuid4().hex
        while True:
            record, revision = await self.read(node)
            now = time.time()
            have_cpu, have_memory = free(record, now)
            if "cpu" not in record or have_cpu < cpu or have_memory < memory_kb:
                return None
            inflight = {k: r for k, r in record.get("inflight", {}).items() if r["expires"] > now}
            inflight[rid] = {"cpu": cpu, "memory_kb": memory_kb, "expires": now + self.reservation_seconds}
            if await self.etcd.replace(self._key(node), json.dumps({**record, "inflight": inflight}).encode(),
                                       revision):
                return rid

    async def release(self, node: str, rid: str) -> None:
        """The node made nothing: give the reservation back."""
        while True:
            record, revision = await self.read(node)
            inflight = dict(record.get("inflight", {}))
            if inflight.pop(rid, None) is None:
                return  # expired and dropped already
            if await self.etcd.replace(self._key(node), json.dumps({**record, "inflight": inflight}).encode(),
                                       revision):
                return
