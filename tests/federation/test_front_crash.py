"""F5 of the design study's test plan: a front killed (SIGKILL) in the middle of a create, for real.

The create names node n2, which is stopped (SIGSTOP) first: the front reserves n2's place in the etcd
ledger, records the Idempotency-Key's node, and starts forwarding the create to n2, whose socket takes
it unread. Then the front dies and n2 goes on. What n2 got depends on where the kill fell: the whole
create (n2 makes the machine and trades the reservation for it, and no front is left to index it), or
part of it or nothing (n2 makes nothing, and the reservation holds the place until it expires). Either
way, within T the ledger holds no reservation, the index is true to the nodes (the reconciler, which the
other front holds once the dead one's lease is gone, indexes what no front did), and the client's retry
with the same key, through the other front, leaves exactly one machine, on n2."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid

import aiohttp
import pytest

from cimid.front.app import claim_key
from federation.conftest import FRONT_TTL, RECONCILE_SECONDS, RESERVATION_SECONDS, until

pytestmark = pytest.mark.federation


async def test_f5_a_front_killed_between_reservation_and_forward_leaves_one_machine_and_no_hold(fed):
    dying, other = fed.fronts
    node = fed.nodes[1]
    key = f"f5-{uuid.uuid4().hex}"
    claimed = f"idempotency/{claim_key('', key)}"  # written after the reservation, right before the forward

    async def ledger() -> dict:
        return json.loads((await fed.entry(f"capacity/{node.name}")).value)

    async def claim_recorded() -> bool:
        return await fed.entry(claimed) is not None

    node.signal(signal.SIGSTOP)
    try:
        create = asyncio.create_task(fed.create("f5-once", front=dying, headers={"Idempotency-Key": key},
                                                **{"cimid:target": node.name}))
        await until(claim_recorded, step=0.02)
        await asyncio.sleep(0.1)  # the forward follows at once: let it reach n2's socket
        dying.signal(signal.SIGKILL)
        dying.popen.wait()
        held = (await ledger())["inflight"]
        assert len(held) == 1  # n2 is stopped: nobody can have traded or given back the dead front's hold
    finally:
        node.signal(signal.SIGCONT)
    with pytest.raises(aiohttp.ClientError):  # the client never heard back
        await create

    # the hold ends: traded for the machine, or expired
    await until(lambda: _no_hold(ledger), seconds=RESERVATION_SECONDS + 10)
    made = await _named(fed, node, "f5-once")
    print(f"n2 {'made the machine the dead front sent' if made else 'made nothing: the create did not arrive whole'}")
    if made:  # the reconciler indexes it: no front lived to do it
        id = made["id"].rsplit("/", 1)[-1]
        await until(lambda: _indexed(fed, id, node), seconds=FRONT_TTL + 10 * RECONCILE_SECONDS)
    status, doc, headers = await fed.create("f5-once", front=other, headers={"Idempotency-Key": key},
                                            **{"cimid:target": node.name})
    assert status == 202, doc
    now = await _named(fed, node, "f5-once")
    assert now is not None and headers["Location"] == fed.front_url(node, now["id"])
    assert made is None or made["id"] == now["id"]
    everywhere = [m["name"] for n in fed.nodes for m in await fed.machines_on(n)]
    assert everywhere.count("f5-once") == 1
    await until(lambda: _no_hold(ledger))
    await until(lambda: _indexed(fed, now["id"].rsplit("/", 1)[-1], node))


async def _no_hold(ledger) -> bool:
    return (await ledger())["inflight"] == {}


async def _indexed(fed, id: str, node) -> bool:
    index = await fed.index()
    return index is not None and index.get(id) == node.name


async def _named(fed, node, name: str) -> dict | None:
    return next((m for m in await fed.machines_on(node) if m["name"] == name), None)
