"""A tenant's quotas counted across the whole federation, in etcd: `quota/<tenant>` holds the machines it
has (id -> cpu, memory), its volumes (id -> capacity), its networks (id -> {}) and the creates in flight
(reservation -> kind, amounts, expires). Every change is
a compare-and-swap on the record, so creates through any number of fronts onto any nodes never take a
tenant past its limits, and the counts stay right while a node is down (nothing is counted on nodes).

A front reserves before it forwards a create, makes the reservation the resource once the node accepted
it, gives it back when the node refused, and drops the resource once its delete was accepted. A
reservation whose outcome nobody learnt (the front died) expires after `reservation_seconds`.
"""

from __future__ import annotations

import json
import time
import uuid

from ..errors import Forbidden
from .etcd import Etcd

GLOBAL_QUOTAS = ("machines", "cpu", "memory", "volume_capacity", "networks")  # memory and volume_capacity in KiB/KB
# The collections whose creates count: each resource is held in the record under its collection's name.
COUNTED = ("machines", "volumes", "networks")


def adds(collection: str, amounts: dict) -> dict[str, int]:
    """What one resource of `collection` with `amounts` (a machine's cpu and memory, a volume's
    capacity) adds to the quotas."""
    if collection == "machines":
        return {"machines": 1, "cpu": amounts["cpu"], "memory": amounts["memory"]}
    if collection == "volumes":
        return {"volume_capacity": amounts["capacity"]}
    return {"networks": 1}


def usage(record: dict, now: float) -> dict[str, int]:
    used = dict.fromkeys(GLOBAL_QUOTAS, 0)
    held = [(c, h) for c in COUNTED for h in record.get(c, {}).values()]
    held += [(r.get("kind", "machines"), r) for r in record.get("inflight", {}).values() if r["expires"] > now]
    for collection, amounts in held:
        for key, value in adds(collection, amounts).items():
            used[key] += value
    return used


class QuotaLedger:
    def __init__(self, etcd: Etcd, prefix: str, reservation_seconds: float = 60.0):
        self.etcd, self.prefix, self.reservation_seconds = etcd, prefix, reservation_seconds

    def _key(self, tenant: str) -> str:
        return f"{self.prefix}quota/{tenant}"

    async def read(self, tenant: str) -> tuple[dict, int]:
        entry = await self.etcd.get(self._key(tenant))
        return (json.loads(entry.value), entry.mod_revision) if entry else ({}, 0)

    async def _change(self, tenant: str, change) -> object:
        """Apply `change(record, now)` (which edits the record and returns a result, or raises) by
        compare-and-swap, again until no other front wrote in between."""
        while True:
            record, revision = await self.read(tenant)
            now = time.time()
            record["inflight"] = {k: r for k, r in record.get("inflight", {}).items() if r["expires"] > now}
            record.setdefault("machines", {})
            result = change(record, now)
            if await self.etcd.replace(self._key(tenant), json.dumps(record, sort_keys=True).encode(), revision):
                return result

    async def reserve(self, tenant: str, limits: dict, collection: str, amounts: dict) -> str | None:
        """Hold one resource of `collection` with `amounts` for `tenant`: 403 if that would pass one of
        its `limits` (nothing written). None when no quota of the tenant counts it (nothing to count)."""
        adding = adds(collection, amounts)
        limited = {k: v for k, v in limits.items() if k in adding}
        if not limited:
            return None
        rid = uuid.uuid4().hex

        def take(record: dict, now: float) -> str:
            used = usage(record, now)
            for key, limit in sorted(limited.items()):
                if used[key] + adding[key] > limit:
                    raise Forbidden(f"quota {key} exceeded: '{tenant}' may use {limit} across the federation and "
                                    f"uses {used[key]}; this request needs {adding[key]} more")
            record["inflight"][rid] = {"kind": collection, **amounts, "expires": now + self.reservation_seconds}
            return rid

        return await self._change(tenant, take)

    async def settle(self, tenant: str, rid: str, resource_id: str | None) -> None:
        """The create with reservation `rid` made `resource_id` (None: made nothing)."""
        def trade(record: dict, _now: float) -> None:
            held = record["inflight"].pop(rid, None)
            if held is not None and resource_id is not None:
                collection = held.pop("kind", "machines")
                held.pop("expires")
                record.setdefault(collection, {})[resource_id] = held
        await self._change(tenant, trade)

    async def deleted(self, collection: str, resource_id: str) -> None:
        """A resource's delete was accepted: it no longer counts for whichever tenant holds it."""
        entries, _ = await self.etcd.get_prefix(f"{self.prefix}quota/")
        for entry in entries:
            if resource_id in json.loads(entry.value).get(collection, {}):
                tenant = entry.key.removeprefix(f"{self.prefix}quota/")
                await self._change(tenant, lambda record, _now: record[collection].pop(resource_id, None))
