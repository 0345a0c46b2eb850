"""Consumers (who may use the provider, with which role and quotas) and their API tokens.

A token is shown once when it is made; only its SHA-256 is stored (a token is 32 random bytes, so a fast
hash is enough: there is nothing to guess).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from dataclasses import dataclass

from .db import Store

ROLES = ("admin", "user", "reader")
TOKEN_PREFIX = "cimid_"


@dataclass(frozen=True)
class Consumer:
    name: str
    role: str
    password_hash: str | None
    quotas: dict
    created: str


@dataclass(frozen=True)
class Token:
    id: str
    consumer: str
    description: str
    created: str
    expires: str | None
    revoked: str | None


class ConsumerError(ValueError):
    """A consumer or token verb that cannot be done as asked (an unknown name, a name taken ...)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def unexpired(expires: str | None) -> bool:
    """Whether a token with this `expires` may still be used (by the wall clock, as the query checks)."""
    return expires is None or expires > _now()


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _consumer(r) -> Consumer:
    return Consumer(r[0], r[1], r[2], json.loads(r[3]), r[4])


_CONSUMER = "SELECT name, role, password_hash, quotas, created FROM consumers"
_TOKEN = "SELECT id, consumer, description, created, expires, revoked FROM tokens"


async def any_exist(store: Store) -> bool:
    return bool(await store.fetch("SELECT 1 FROM consumers LIMIT 1"))


async def get(store: Store, name: str) -> Consumer | None:
    rows = await store.fetch(f"{_CONSUMER} WHERE name = ?", (name,))
    return _consumer(rows[0]) if rows else None


async def listed(store: Store) -> list[Consumer]:
    return [_consumer(r) for r in await store.fetch(f"{_CONSUMER} ORDER BY name")]


async def add(store: Store, name: str, role: str, password_hash: str | None) -> Consumer:
    if role not in ROLES:
        raise ConsumerError(f"role must be one of {', '.join(ROLES)}, not '{role}'")
    if not name or not name.isprintable() or ":" in name or len(name) > 64:
        raise ConsumerError("a consumer name is 1 to 64 printable characters, without ':'")
    async with store.write() as tx:
        if await tx.fetch("SELECT 1 FROM consumers WHERE name = ?", (name,)):
            raise ConsumerError(f"there is already a consumer '{name}'")
        created = _now()
        await tx.execute("INSERT INTO consumers (name, role, password_hash, created) VALUES (?, ?, ?, ?)",
                         (name, role, password_hash, created))
    return Consumer(name, role, password_hash, {}, created)


async def _change(store: Store, name: str, sql: str, params: tuple) -> None:
    async with store.write() as tx:
        if not await tx.fetch("SELECT 1 FROM consumers WHERE name = ?", (name,)):
            raise ConsumerError(f"there is no consumer '{name}'")
        await tx.execute(sql, params)


async def remove(store: Store, name: str) -> None:
    """The consumer and its tokens go; what it made stays (an admin still sees and can delete it)."""
    await _change(store, name, "DELETE FROM consumers WHERE name = ?", (name,))


async def set_password(store: Store, name: str, password_hash: str | None) -> None:
    await _change(store, name, "UPDATE consumers SET password_hash = ? WHERE name = ?", (password_hash, name))


async def set_role(store: Store, name: str, role: str) -> None:
    if role not in ROLES:
        raise ConsumerError(f"role must be one of {', '.join(ROLES)}, not '{role}'")
    await _change(store, name, "UPDATE consumers SET role = ? WHERE name = ?", (role, name))


async def set_quotas(store: Store, name: str, quotas: dict) -> None:
    await _change(store, name, "UPDATE consumers SET quotas = ? WHERE name = ?", (json.dumps(quotas), name))


async def create_token(store: Store, consumer: str, *, description: str = "",
                       expires: str | None = None) -> tuple[Token, str]:
    """A new token for `consumer`: (its record, the secret, which is never seen again)."""
    token_id = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    created = _now()
    async with store.write() as tx:
        if not await tx.fetch("SELECT 1 FROM consumers WHERE name = ?", (consumer,)):
            raise ConsumerError(f"there is no consumer '{consumer}'")
        await tx.execute("INSERT INTO tokens (id, consumer, digest, description, created, expires)"
                         " VALUES (?, ?, ?, ?, ?, ?)", (token_id, consumer, digest(secret), description, created,
                                                        expires))
    return Token(token_id, consumer, description, created, expires, None), secret


async def tokens(store: Store, consumer: str | None = None) -> list[Token]:
    if consumer is None:
        return [Token(*r) for r in await store.fetch(f"{_TOKEN} ORDER BY consumer, created")]
    return [Token(*r) for r in await store.fetch(f"{_TOKEN} WHERE consumer = ? ORDER BY created", (consumer,))]


async def revoke_token(store: Store, token_id: str) -> None:
    async with store.write() as tx:
        if not await tx.fetch("SELECT 1 FROM tokens WHERE id = ? AND revoked IS NULL", (token_id,)):
            raise ConsumerError(f"there is no valid token '{token_id}'")
        await tx.execute("UPDATE tokens SET revoked = ? WHERE id = ?", (_now(), token_id))


async def holder_of(store: Store, token: str) -> tuple[Consumer, str | None] | None:
    """The consumer a presented token belongs to and when the token expires (None: never), if the token
    is known, not revoked and not expired."""
    rows = await store.fetch(
        "SELECT c.name, c.role, c.password_hash, c.quotas, c.created, t.expires FROM tokens t JOIN consumers c"
        " ON c.name = t.consumer WHERE t.digest = ? AND t.revoked IS NULL AND (t.expires IS NULL OR"
        " t.expires > ?)", (digest(token), _now()))
    return (_consumer(rows[0]), rows[0][5]) if rows else None
