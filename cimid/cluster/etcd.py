"""The one way cimid talks to etcd: a thin policy layer over aetcd (the protocol stays the library's).

It owns what the design study (shared federation.md §3.3-3.4) measured the plain client getting wrong:
- one gRPC channel over *all* members with `round_robin`, so a member cut off from its peers is one
  of several places a call can go, not the only one (`pick_first` pins a client to it);
- `hasleader: true` on every call, so a member without a leader answers "no leader" at once instead
  of holding the call until its deadline;
- a deadline on every call, keepalives included (aetcd's own streams have none);
- a keepalive answered with TTL <= 0 is a lost lease (aetcd returns it without raising);
- watches that resume from the last revision seen, and resynchronise in full when etcd compacted it.

Every failure to reach a quorum surfaces as `EtcdUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pathlib import Path

import aetcd
import grpc
from aetcd import rpc, watcher
from aetcd.exceptions import ClientError, ConnectionTimeoutError, RevisionCompactedError

from ..config import ConfigError

log = logging.getLogger("cimid.cluster")


class EtcdUnavailable(Exception):
    """etcd could not be reached, has no leader or did not answer in time."""


class LeaseLost(Exception):
    """etcd no longer knows the lease (it expired or was revoked)."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int
    lease: int


def _entry(kv) -> Entry:
    return Entry(kv.key.decode(), kv.value, kv.mod_revision, kv.lease)


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's range end for a prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def target(endpoints: list[str]) -> tuple[str, int]:
    """aetcd joins host and port into one gRPC target: the `ipv4:` resolver takes a list of addresses,
    so every member goes in and the last port is passed as aetcd's port."""
    addresses = [e.removeprefix("http://").removeprefix("https://").rstrip("/") for e in endpoints]
    if not addresses or any(":" not in a for a in addresses):
        raise ValueError(f"etcd endpoints must be http(s)://HOST:PORT, got {endpoints!r}")
    head, _, last_port = ",".join(addresses).rpartition(":")
    return f"ipv4:{head}", int(last_port)


class _TlsClient(aetcd.Client):
    """aetcd opens only plain channels: the same stubs over a TLS channel with a client certificate."""

    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs):
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        self.channel = rpc.secure_channel(f"{self._host}:{self._port}", self._credentials,
                                          options=self._options.items())
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
        self._connected.set()


class Etcd:
    """A connected client over every member of one etcd cluster; `timeout` bounds every call. With `tls`
    (CA, certificate, key: PEM files), https endpoints are reached with that client certificate, and
    every member's certificate must name `server_name` (one gRPC channel checks all members against one
    name)."""

    def __init__(self, endpoints: list[str], timeout: float = 2.0, tls: tuple[str, str, str] | None = None,
                 server_name: str = "etcd"):
        host, port = target(endpoints)
        self.timeout = timeout
        options = {"grpc.lb_policy_name": "round_robin",
                   # a dead member is retried soon, not after gRPC's 20 s default
                   "grpc.initial_reconnect_backoff_ms": 200,
                   "grpc.max_reconnect_backoff_ms": 2000,
                   # A member whose host went silent (a cut cable: no RST, its connection looks open) holds
                   # every call and watch sent its way. Pings on a connection with calls open close it
                   # once one goes unanswered for 2 s, and round_robin leaves the member out until it
                   # answers again. Every 5 s: etcd's --grpc-keepalive-min-time; pinging more often, or
                   # without calls open, gets the connection closed by etcd (too_many_pings).
                   "grpc.keepalive_time_ms": 5000,
                   "grpc.keepalive_timeout_ms": 2000,
                   "grpc.http2.max_pings_without_data": 0}
        if tls is None:
            self._client = aetcd.Client(host=host, port=port, timeout=timeout, options=options)
            return
        try:
            ca, certificate, key = (Path(p).read_bytes() for p in tls)
        except OSError as exc:
            raise ConfigError(f"cannot read the etcd TLS files: {exc.strerror} ({exc.filename})") from None
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                   certificate_chain=certificate)
        options["grpc.ssl_target_name_override"] = server_name
        self._client = _TlsClient(credentials, host=host, port=port, timeout=timeout, options=options)

    @classmethod
    def from_config(cls, cluster: dict) -> Etcd:
        """The client [cluster] describes."""
        tls = (cluster["tls_ca"], cluster["tls_certificate"], cluster["tls_key"]) if cluster["tls_ca"] else None
        return cls(cluster["endpoints"], timeout=cluster["etcd_timeout"], tls=tls,
                   server_name=cluster["etcd_server_name"])

    async def connect(self) -> None:
        await self._client.connect()
        # aetcd has no option for call metadata; these are the attributes it passes to every stub call.
        self._client.metadata = (("hasleader", "true"),)
        self._client._watcher._metadata = self._client.metadata

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, make: Callable[[], Awaitable]):
        """`make()` awaited; once more if the member it went to did not answer in time (round_robin sends
        the second attempt to the next member). A write whose first attempt did land fails its compare
        the second time and is reported not done: the callers' compare-and-swap loops read again."""
        try:
            try:
                return await make()
            except (ConnectionTimeoutError, rpc.AioRpcError, asyncio.TimeoutError) as exc:
                if isinstance(exc, rpc.AioRpcError) and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                log.info("etcd call timed out (%s): once more, on the next member", exc or "timeout")
                return await make()
        except (ClientError, rpc.AioRpcError, asyncio.TimeoutError) as exc:
            raise EtcdUnavailable(str(exc) or type(exc).__name__) from exc

    # ------------------------------------------------------------------ keys

    async def get(self, key: str) -> Entry | None:
        found = await self._call(lambda: self._client.get(key.encode()))
        return None if found is None else _entry(found)

    async def get_prefix(self, prefix: str) -> tuple[list[Entry], int]:
        """Every key under `prefix` and the store revision they were read at."""
        request = rpc.RangeRequest(key=prefix.encode(), range_end=_prefix_end(prefix.encode()))
        reply = await self._call(lambda: self._client.kvstub.Range(request, timeout=self.timeout,
                                                                   metadata=self._client.metadata))
        return [_entry(kv) for kv in reply.kvs], reply.header.revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Store `value`; the revision it was written at."""
        reply = await self._call(lambda: self._client.put(key.encode(), value, lease=lease or None))
        return reply.header.revision

    async def delete(self, key: str) -> bool:
        reply = await self._call(lambda: self._client.delete(key.encode()))
        return bool(reply.deleted) if reply is not None else False

    async def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Write `value` only if `key` does not exist (create_revision == 0); whether it was written."""
        tx = self._client.transactions
        succeeded, _ = await self._call(lambda: self._client.transaction(
            compare=[tx.create(key.encode()) == 0],
            success=[tx.put(key.encode(), value, lease=lease or None)], failure=[]))
        return succeeded

    async def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        """Compare-and-swap: write `value` only if `key` was last written at `mod_revision` (0: absent)."""
        tx = self._client.transactions
        compare = (tx.mod(key.encode()) == mod_revision if mod_revision
                   else tx.create(key.encode()) == 0)
        succeeded, _ = await self._call(lambda: self._client.transaction(
            compare=[compare], success=[tx.put(key.encode(), value, lease=lease or None)], failure=[]))
        return succeeded

    async def delete_if(self, key: str, mod_revision: int) -> bool:
        """Delete `key` only if it was last written at `mod_revision`."""
        tx = self._client.transactions
        succeeded, _ = await self._call(lambda: self._client.transaction(
            compare=[tx.mod(key.encode()) == mod_revision], success=[tx.delete(key.encode())],
            failure=[]))
        return succeeded

    async def compact(self, revision: int) -> None:
        await self._call(lambda: self._client.compact(revision))

    # ------------------------------------------------------------------ leases

    async def grant(self, ttl: int) -> int:
        lease = await self._call(lambda: self._client.lease(ttl))
        return lease.id

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease` once; its TTL. Raises LeaseLost when etcd answers TTL <= 0 (aetcd does not)."""
        reply = await self._call(lambda: self._client.refresh_lease(lease))
        if reply is None or reply.TTL <= 0:
            raise LeaseLost(f"etcd no longer knows lease {lease:x}")
        return reply.TTL

    async def revoke(self, lease: int) -> None:
        await self._call(lambda: self._client.revoke_lease(lease))

    async def lease_ttl(self, lease: int) -> int:
        """Seconds `lease` has left (-1: etcd does not know it)."""
        reply = await self._call(lambda: self._client.get_lease_info(lease, keys=False))
        return reply.TTL

    async def member_status(self) -> dict:
        """The answering member's view: its id, the leader's id, version, database size. Ask a client
        made with that one endpoint to know which member answered."""
        reply = await self._call(lambda: self._client.maintenancestub.Status(
            rpc.StatusRequest(), timeout=self.timeout, metadata=self._client.metadata))
        return {"member": reply.header.member_id, "leader": reply.leader, "version": reply.version,
                "db_size": reply.dbSize}

    # ------------------------------------------------------------------ watches

    async def mirror(self, prefix: str, on_change: Callable[[dict[str, Entry], set[str] | None], None],
                     retry_seconds: float = 0.5) -> None:
        """Keep a map of every key under `prefix` until cancelled: a full read, then a watch from the
        revision after it; a broken watch resumes from the last revision seen, a compacted one starts
        again with a full read. After each change `on_change(current, keys)` gets the live map (not a
        copy: read it, do not keep it) and the keys that changed, None after a full read."""
        current: dict[str, Entry] | None = None
        revision = 0
        while True:
            try:
                if current is None:
                    entries, revision = await self.get_prefix(prefix)
                    current = {e.key: e for e in entries}
                    on_change(current, None)
                revision = await self._follow(prefix, current, revision, on_change)
            except RevisionCompactedError:
                log.info("etcd compacted the history of %s: reading it again", prefix)
                current = None
            except (EtcdUnavailable, ClientError, rpc.AioRpcError) as exc:
                log.info("watch of %s broke (%s); resuming after revision %d", prefix, exc, revision)
                await asyncio.sleep(retry_seconds)

    async def _follow(self, prefix: str, current: dict[str, Entry], revision: int,
                      on_change: Callable[[dict[str, Entry], set[str] | None], None]) -> int:
        watch = await self._call(lambda: self._client.watch(
            prefix.encode(), range_end=_prefix_end(prefix.encode()), start_revision=revision + 1))
        try:
            async for event in watch:
                key = event.kv.key.decode()
                if event.kind == aetcd.rtypes.EventKind.PUT:
                    current[key] = _entry(event.kv)
                else:
                    current.pop(key, None)
                revision = event.kv.mod_revision
                on_change(current, {key})
        finally:
            await watch.cancel()
        return revision


class LeaseKeeper:
    """Holds one lease alive and says whether it may still be relied on.

    `safe` turns False once TTL x 2/3 has passed since the *sending* of the last keepalive etcd
    acknowledged: etcd may already have let the lease go by TTL after that, and the margin covers
    clock rate and scheduling. When etcd answers that the lease is gone, `on_lost` runs and a new
    lease is granted; `on_granted(lease)` runs for every lease (to write the keys bound to it)."""

    def __init__(self, etcd: Etcd, ttl: int, on_granted: Callable[[int], Awaitable[None]],
                 on_lost: Callable[[], None] = lambda: None):
        if ttl < 2:
            raise ValueError("a lease TTL must be at least 2 seconds")
        self.etcd, self.ttl = etcd, ttl
        self._on_granted, self._on_lost = on_granted, on_lost
        self.lease = 0
        self._acknowledged = float("-inf")  # monotonic time the last acknowledged keepalive was sent
        self.granted = asyncio.Event()

    @property
    def safe(self) -> bool:
        return self.lease != 0 and time.monotonic() - self._acknowledged < self.ttl * 2 / 3

    @property
    def interval(self) -> float:
        return self.ttl / 4

    async def run(self) -> None:
        """Grant, then keep alive, until cancelled; revokes the lease on the way out."""
        try:
            while True:
                try:
                    if self.lease == 0:
                        await self._grant()
                    sent = time.monotonic()
                    # half the interval: a member gone silent costs that much, and the retry (at once:
                    # round_robin sends it to the next member) still comes well before the fence
                    await asyncio.wait_for(self.etcd.keepalive(self.lease), self.interval / 2)
                    self._acknowledged = sent
                    await asyncio.sleep(self.interval)
                except LeaseLost as exc:
                    log.warning("%s: registering again", exc)
                    self.lease = 0
                    self.granted.clear()
                    self._on_lost()
                except asyncio.TimeoutError:
                    log.info("lease keepalive unanswered after %.1f s: again, on the next member", self.interval / 2)
                except EtcdUnavailable as exc:
                    # an answer such as "no leader": round_robin sends the retry to another member soon
                    log.info("lease keepalive failed (%s)", exc)
                    await asyncio.sleep(min(0.25, self.interval))
        finally:
            if self.lease:
                try:
                    await asyncio.wait_for(self.etcd.revoke(self.lease), self.etcd.timeout)
                except (EtcdUnavailable, asyncio.TimeoutError):
                    pass  # it expires by itself
            self.lease = 0

    async def _grant(self) -> None:
        sent = time.monotonic()
        lease = await self.etcd.grant(self.ttl)
        try:
            await self._on_granted(lease)
        except BaseException:
            try:
                await self.etcd.revoke(lease)
            except EtcdUnavailable:
                pass
            raise
        self.lease, self._acknowledged = lease, sent
        self.granted.set()
