"""Background sweeps (retention of Jobs, idempotency keys ...): one round now, then one every interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("cimid.sweeps")


async def start_sweep(what: str, sweep: Callable[[], Awaitable[None]], seconds: float = 60) -> asyncio.Task:
    """Sweep once (at start-up, so a long stop leaves nothing stale), then every `seconds` in a task the
    caller cancels; a failed round is logged and the next one runs, so one bad minute ends nothing."""
    await sweep()

    async def rounds() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await sweep()
            except Exception:
                log.exception("%s failed", what)

    return asyncio.get_running_loop().create_task(rounds(), name=what)
