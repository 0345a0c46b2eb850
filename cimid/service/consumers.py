"""The consumers the HTTP layer authenticates: looked up in the store on every request, so a change made
with `cimid consumer` or `cimid token` (another process) takes effect at once."""

from __future__ import annotations

from ..store import consumers
from ..store.consumers import Consumer
from ..store.db import Store


class ConsumerDirectory:
    def __init__(self, store: Store):
        self.store = store

    async def any(self) -> bool:
        return await consumers.any_exist(self.store)

    async def named(self, name: str) -> Consumer | None:
        return await consumers.get(self.store, name)

    async def token_holder(self, token: str) -> Consumer | None:
        """Whose token this is, if it is known, not revoked and not expired."""
        return await consumers.holder_of(self.store, token)
