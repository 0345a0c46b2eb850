"""Who asks a front: checked once, at the front, and forwarded to the node it routes the request to.

The federation's consumers ("tenants") live in etcd, `tenants/<name>` -> {"role", "password_hash",
"quotas"}, written by `cimid cluster tenant add|remove`, and their Bearer tokens in `tokens/<id>`
(`cimid cluster token create|revoke`); every front mirrors both through a watch (a login costs no etcd
call). A front's own `[[auth.users]]` work beside them. The node's authenticator
does the checking (the same password hashes, slow KDF off the loop, failed-login limits): the tenants
are its consumer directory here. With no tenant and no configured user, everyone is admin, as on a node.

The identity reaches the node in `CIMID-User` (name and role), which a node believes only on a
connection that showed a front's certificate of the federation CA (cluster.tls_ca); the client's
Authorization is then not passed on. Without TLS towards the nodes a front cannot prove it is one, so it
passes the client's Authorization on and each node checks it against its own consumers, as before.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from ..cluster.etcd import Etcd, Entry
from ..config import ConfigError
from ..http.auth import Authenticator
from ..http.tls import FRONT_USER_HEADER
from ..store.consumers import TOKEN_PREFIX, digest, unexpired
from .catalogue import Caller

ROLES = ("admin", "user", "reader")
CALLER = web.RequestKey("caller", Caller)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
# The headers that tell the node who asks (empty: the client's Authorization goes on instead).
FORWARDED = web.RequestKey("forwarded_identity", dict)


@dataclass(frozen=True)
class Tenant:
    name: str
    role: str
    password_hash: str | None
    quotas: dict = field(default_factory=dict, hash=False, compare=False)


class TenantDirectory:
    """The tenants and their Bearer tokens in etcd, as the authenticator's consumer directory."""

    def __init__(self, etcd: Etcd, prefix: str):
        self.etcd, self.prefix, self.tokens_prefix = etcd, f"{prefix}tenants/", f"{prefix}tokens/"
        self._tenants: dict[str, Tenant] = {}
        self._tokens: dict[str, tuple[str, str | None]] = {}  # digest -> (tenant, expires)
        self._tasks: list[asyncio.Task] = []

    def _changed(self, current: dict[str, Entry], _keys) -> None:
        tenants = {}
        for key, entry in current.items():
            try:
                record = json.loads(entry.value)
                tenants[key.removeprefix(self.prefix)] = Tenant(key.removeprefix(self.prefix), record["role"],
                                                                record.get("password_hash"), record.get("quotas", {}))
            except (ValueError, KeyError, TypeError):
                continue  # a record no front wrote: nobody logs in with it
        self._tenants = tenants

    def _tokens_changed(self, current: dict[str, Entry], _keys) -> None:
        tokens = {}
        for entry in current.values():
            try:
                record = json.loads(entry.value)
                tokens[record["digest"]] = (record["tenant"], record.get("expires"))
            except (ValueError, KeyError, TypeError):
                continue
        self._tokens = tokens

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self.etcd.mirror(self.prefix, self._changed), name="front-tenants"),
                       asyncio.create_task(self.etcd.mirror(self.tokens_prefix, self._tokens_changed),
                                           name="front-tokens")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def any(self) -> bool:
        return bool(self._tenants)

    async def named(self, name: str) -> Tenant | None:
        return self._tenants.get(name)

    async def token_holder(self, token: str) -> Tenant | None:
        """The tenant holding this token, if it is known, not expired, and the tenant still exists."""
        found = self._tokens.get(digest(token))
        if found is None or not unexpired(found[1]):
            return None
        return self._tenants.get(found[0])


def tenant_record(role: str, password_hash: str, quotas: dict[str, int]) -> bytes:
    return json.dumps({"role": role, "password_hash": password_hash, "quotas": quotas}, sort_keys=True).encode()


def authenticate_middleware(forward_identity: bool):
    """Every request is authenticated at the front (401/429 as a node answers them); the caller is kept
    in request[CALLER] for the catalogue, the quotas and the header the node gets."""

    @web.middleware
    async def authenticate(request: web.Request, handler):
        identity = await request.app[AUTHENTICATOR].authenticate(request.headers.get("Authorization"),
                                                                 request.remote)
        request[CALLER] = Caller(identity.name, identity.role, identity.quotas)
        request[FORWARDED] = {FRONT_USER_HEADER: user_header(identity.role, identity.name)} \
            if forward_identity and await request.app[AUTHENTICATOR].enabled() else {}
        return await handler(request)

    return authenticate


def identity_headers(request: web.Request) -> dict[str, str]:
    return request.get(FORWARDED, {})


def user_header(role: str, name: str) -> str:
    return f"{role} {quote(name, safe='')}"


# ------------------------------------------------------------------ `cimid cluster tenant`

async def set_tenant(etcd: Etcd, prefix: str, name: str, role: str, password_hash: str, quotas: dict[str, int]) -> None:
    await etcd.put(f"{prefix}tenants/{name}", tenant_record(role, password_hash, quotas))


async def remove_tenant(etcd: Etcd, prefix: str, name: str) -> bool:
    """The tenant, and its tokens with it."""
    entries, _ = await etcd.get_prefix(f"{prefix}tokens/")
    for entry in entries:
        if json.loads(entry.value).get("tenant") == name:
            await etcd.delete(entry.key)
    return await etcd.delete(f"{prefix}tenants/{name}")


# ------------------------------------------------------------------ `cimid cluster token`
# A token is `tokens/<id>` -> {"tenant", "digest" (SHA-256 of the secret, never the secret), "expires",
# "description", "created"}: the same secrets as a node's (`cimid_<id>_...`), checked by every front.

async def create_token(etcd: Etcd, prefix: str, tenant: str, description: str, expires: str | None) -> tuple[str, str]:
    """(id, secret) of a new token of `tenant`; ConfigError if there is no such tenant."""
    if await etcd.get(f"{prefix}tenants/{tenant}") is None:
        raise ConfigError(f"there is no tenant '{tenant}'")
    token_id = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    record = {"tenant": tenant, "digest": digest(secret), "expires": expires, "description": description,
              "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    await etcd.put(f"{prefix}tokens/{token_id}", json.dumps(record, sort_keys=True).encode())
    return token_id, secret


async def revoke_token(etcd: Etcd, prefix: str, token_id: str) -> bool:
    return await etcd.delete(f"{prefix}tokens/{token_id}")
