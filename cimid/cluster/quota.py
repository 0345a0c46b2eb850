"""A tenant's quotas counted across the whole federation, in etcd: `quota/<tenant>` holds the machines it
has (id -> cpu, memory) and the creates in flight (reservation -> cpu, memory, expires). Every change is
a compare-and-swap on the record, so creates through any number of fronts onto any nodes never take a
tenant past its limits, and the counts stay right while a node is down (nothing is counted on nodes).

A front reserves before it forwards a create, makes the reservation the machine once the node accepted
it, gives it back when the node refused, and drops the machine once its delete was accepted. A
reservation whose outcome nobody learnt (the front died) expires after `reservation_seconds`.
"""

from __future__ import annotations

import json
import time
import uuid

from ..errors import Forbidden
from .etcd import Etcd

GLOBAL_QUOTAS = ("machines", "cpu", "memory")  # memory in KiB, like a MachineConfiguration's


def usage(record: dict, now: float) -> dict[str, int]:
    held = [*record.get("machines", {}).values(),
            *(r for r in record.get("inflight", {}).values() if r["expires"] > now)]
    return {"machines": len(held), "cpu": sum(h["cpu"] for h in held), "memory": sum(h["memory"] for h in held)}


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

    async def reserve(self, tenant: str, limits: dict, cpu: int, memory: int) -> str | None:
        """Hold one machine of `cpu` and `memory` for `tenant`: 403 if that would pass one of its `limits`
        (nothing written). None when the tenant has no global quota (nothing to count)."""
        limited = {k: v for k, v in limits.items() if k in GLOBAL_QUOTAS}
        if not limited:
            return None
        rid = uuid.uuid4().hex
        adding = {"machines": 1, "cpu": cpu, "memory": memory}

        def take(record: dict, now: float) -> str:
            used = usage(record, now)
            for key, limit in sorted(limited.items()):
                if used[key] + adding[key] > limit:
                    raise Forbidden(f"quota {key} exceeded: '{tenant}' may use {limit} across the federation and "
                                    f"uses {used[key]}; this request needs {adding[key]} more")
            record["inflight"][rid] = {"cpu": cpu, "memory": memory, "expires": now + self.reservation_seconds}
            return rid

        return await self._change(tenant, take)

    async def settle(self, tenant: str, rid: str, machine_id: str | None) -> None:
        """The create with reservation `rid` made `machine_id` (None: made nothing)."""
        def trade(record: dict, _now: float) -> None:
            held = record["inflight"].pop(rid, None)
            if held is not None and machine_id is not None:
                record["machines"][machine_id] = {"cpu": held["cpu"], "memory": held["memory"]}
        await self._change(tenant, trade)

    async def machine_deleted(self, machine_id: str) -> None:
        """A machine's delete was accepted: it no longer counts for whichever tenant holds it."""
        entries, _ = await self.etcd.get_prefix(f"{self.prefix}quota/")
        for entry in entries:
            if machine_id in json.loads(entry.value).get("machines", {}):
                tenant = entry.key.removeprefix(f"{self.prefix}quota/")
                await self._change(tenant, lambda record, _now: record["machines"].pop(machine_id, None))
