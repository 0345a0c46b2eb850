"""F5 of the design study's test plan: a front killed (SIGKILL) in the middle of a create, for real.

The create names node n2, which is stopped (SIGSTOP) first: the front reserves n2's place in the etcd
ledger, records the Idempotency-Key's node, and sends the create, which waits unread in n2's socket.
Then the front dies, and n2 goes on: it makes the machine and trades the reservation for it, but no front
is left to index it. The reconciler (the other front) indexes it within its period, and the client's
retry with the same key, through the other front, answers the same machine: exactly one."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import aiohttp
import pytest

from cimid.front.app import claim_key
from federation.conftest import FRONT_TTL, RECONCILE_SECONDS, until

pytestmark = pytest.mark.federation


async def test_f5_a_front_killed_between_reservation_and_forward_leaves_one_machine_and_no_hold(fed):
    dying, other = fed.fronts
    node = fed.nodes[1]
    key = f"f5-{uuid.uuid4().hex}"
    claim = f"idempotency/{claim_key('', key)}"

    async def reserved_and_claimed() -> bool:
        record = json.loads((await fed.entry(f"capacity/{node.name}")).value)
        return bool(record["inflight"]) and await fed.entry(claim) is not None

    node.signal(signal.SIGSTOP)
    try:
        create = asyncio.create_task(fed.create("f5-once", front=dying, headers={"Idempotency-Key": key},
                                                **{"cimid:target": node.name}))
        await until(reserved_and_claimed, step=0.02)
        await asyncio.sleep(0.2)  # the forward follows the claim at once: let it reach n2's socket
        dying.signal(signal.SIGKILL)
        dying.popen.wait()
    finally:
        node.signal(signal.SIGCONT)
    with pytest.raises(aiohttp.ClientError):  # the client never heard back
        await create

    # n2 read the create the dead front sent, made the machine, and traded the reservation for it
    made = await until(lambda: _named(fed, node, "f5-once"))
    id = made["id"].rsplit("/", 1)[-1]

    async def settled() -> bool:
        record = json.loads((await fed.entry(f"capacity/{node.name}")).value)
        index = await fed.index()
        return record["inflight"] == {} and index is not None and index.get(id) == node.name

    # the reconciler, which the other front holds once the dead one's lease is gone, indexed it
    await until(settled, seconds=FRONT_TTL + 10 * RECONCILE_SECONDS)
    status, doc, headers = await fed.create("f5-once", front=other, headers={"Idempotency-Key": key},
                                            **{"cimid:target": node.name})
    assert status == 202, doc
    assert headers["Location"] == fed.front_url(node, made["id"])
    everywhere = [m["name"] for n in fed.nodes for m in await fed.machines_on(n)]
    assert everywhere.count("f5-once") == 1
    record = json.loads((await fed.entry(f"capacity/{node.name}")).value)
    assert record["inflight"] == {}


async def _named(fed, node, name: str) -> dict | None:
    return next((m for m in await fed.machines_on(node) if m["name"] == name), None)
