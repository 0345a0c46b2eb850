"""The consumers the HTTP layer authenticates. What the store says about a name or a token is kept until
the database changes (`Store.data_version`, which a commit by another process moves too), so a change
made with `cimid consumer` or `cimid token` takes effect at the next request, and a steady client costs
no store query per request."""

from __future__ import annotations

from ..store import consumers
from ..store.consumers import Consumer, digest, unexpired
from ..store.db import Store

MAX_CACHED = 1024  # names and tokens remembered; the oldest goes first


class ConsumerDirectory:
    def __init__(self, store: Store):
        self.store = store
        self._version: int | None = None
        # ("name", name) -> Consumer | None; ("token", SHA-256 of it) -> (Consumer, expires) | None
        self._cache: dict[tuple[str, str], object] = {}

    def _current(self) -> dict[tuple[str, str], object]:
        version = self.store.data_version()
        if version != self._version:
            self._cache.clear()
            self._version = version
        return self._cache

    def _remember(self, key: tuple[str, str], value: object) -> None:
        if len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = value

    async def any(self) -> bool:
        return await consumers.any_exist(self.store)

    async def named(self, name: str) -> Consumer | None:
        cache, key = self._current(), ("name", name)
        if key not in cache:
            self._remember(key, await consumers.get(self.store, name))
        return cache[key]

    async def token_holder(self, token: str) -> Consumer | None:
        """Whose token this is, if it is known, not revoked and not expired."""
        cache, key = self._current(), ("token", digest(token))
        if key not in cache:
            self._remember(key, await consumers.holder_of(self.store, token))
        found = cache[key]
        if found is None:
            return None
        holder, expires = found
        return holder if unexpired(expires) else None  # it may expire while cached
