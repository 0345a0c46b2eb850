"""A node's membership of a federation (`cimid serve` with [cluster] endpoints): its registration under
an etcd lease, its published capacity and api_level, and its self-fence.

The node's SQLite stays authoritative and its own CloudEntryPoint never depends on etcd: registration
runs in the background, and etcd being down only fences *federated* mutations (requests a front
forwards), never the node's own API.

Keys (under `prefix`, default /cimid/v1/):
- nodes/<name>     lease-bound: {"url", "api_level", "version", "state"}; gone when the lease is;
- nodeinfo/<name>  no lease: {"capacity": {...}, "api_level"}; rewritten only when it changes;
- capacity/<name>  no lease: the placement ledger (see cimid/front/placement.py); the node writes its
                   allocatable and used figures whenever they differ from its store, fronts their
                   reservations, all by compare-and-swap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..config import Config, ConfigError
from ..errors import Forbidden, Unavailable
from .etcd import Etcd, EtcdUnavailable, LeaseKeeper

log = logging.getLogger("cimid.cluster")

# What this node understands of what a front may ask; a front never sends a node newer requests than its
# level (design study §4.1 "Versions"; what needs which level: cimid/front/placement.py, FAMILY_LEVELS).
# Raise it with each federated feature a front relies on. 1: machines, volumes, the catalogue; 2: networks.
API_LEVEL = 2
# The header a front puts on every request it forwards: such a request is a federated one.
FRONT_HEADER = "CIMID-Front"
# The placement reservation a front made for the create it forwards (see cimid/front/placement.py).
RESERVATION_HEADER = "CIMID-Reservation"


def node_name(config: Config) -> str:
    return config["cluster"]["node"] or socket.gethostname()


def node_url(config: Config) -> str:
    """Where fronts reach this node: cluster.advertise_url, else server.public_base_url, else listen."""
    cluster, server = config["cluster"], config["server"]
    if cluster["advertise_url"]:
        return cluster["advertise_url"].rstrip("/")
    if server["public_base_url"]:
        return server["public_base_url"].rstrip("/")
    host, port = config.listen
    return f"{'https' if server['tls'] else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


class NodeMembership:
    """Registers the node and keeps it registered until stopped; `fenced` says whether federated
    mutations must be refused now. `capacity()` is read at each registration and every
    `capacity_seconds` after; `usage(machine ids)` (the ledger's figures, and which of those machines
    the store holds) every `ledger_seconds`, and at once after a reserved create."""

    def __init__(self, config: Config, capacity: Callable[[], Awaitable[dict]],
                 usage: Callable[[list[str]], Awaitable[tuple[dict, set[str]]]], version: str,
                 capacity_seconds: float = 30.0, ledger_seconds: float = 1.0):
        cluster = config["cluster"]
        self.version = version
        self.name, self.url = node_name(config), node_url(config)
        self.api_level = cluster["api_level"] or API_LEVEL  # a lower one set: published as if older
        if self.api_level > API_LEVEL:
            raise ConfigError(f"cluster.api_level {self.api_level} is more than this version speaks ({API_LEVEL})")
        self.prefix = cluster["prefix"].rstrip("/") + "/"
        self.etcd = Etcd.from_config(cluster)
        self.keeper = LeaseKeeper(self.etcd, cluster["lease_ttl"], self._register)
        self._capacity, self._capacity_seconds = capacity, capacity_seconds
        self._usage, self._ledger_seconds = usage, ledger_seconds
        self._fulfilled: dict[str, str] = {}  # reservation -> the machine id made for it
        self._ledger_changed = asyncio.Event()
        self._published: bytes | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def fenced(self) -> bool:
        """True unless the lease is known to be alive (see LeaseKeeper.safe): a node cut off from etcd
        stops taking federated changes before etcd can have given its resources up."""
        return not self.keeper.safe

    async def start(self) -> None:
        await self.etcd.connect()  # lazy: no network traffic until the first call
        self._tasks = [asyncio.create_task(self.keeper.run(), name="cluster-lease"),
                       asyncio.create_task(self._publish_capacity(), name="cluster-capacity"),
                       asyncio.create_task(self._keep_ledger(), name="cluster-ledger")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # the keeper revokes its lease
        self._tasks = []
        await self.etcd.close()

    async def _register(self, lease: int) -> None:
        self._published = None
        await self._write_capacity()
        await self._write_ledger()
        record = {"url": self.url, "api_level": self.api_level, "version": self.version, "state": "ready"}
        await self.etcd.put(f"{self.prefix}nodes/{self.name}", json.dumps(record).encode(), lease=lease)
        log.info("registered in the federation as %s (%s), lease %x", self.name, self.url, lease)

    async def _write_capacity(self) -> None:
        info = json.dumps({"capacity": await self._capacity(), "api_level": self.api_level}, sort_keys=True).encode()
        if info != self._published:
            await self.etcd.put(f"{self.prefix}nodeinfo/{self.name}", info)
            self._published = info

    async def _publish_capacity(self) -> None:
        while True:
            await asyncio.sleep(self._capacity_seconds)
            if self.keeper.safe:
                try:
                    await self._write_capacity()
                except EtcdUnavailable as exc:
                    log.info("could not publish capacity: %s", exc)

    def fulfilled(self, reservation: str, machine_id: str) -> None:
        """A federated create with `reservation` made `machine_id`: the ledger trades one for the other."""
        self._fulfilled[reservation] = machine_id
        self._ledger_changed.set()

    async def _write_ledger(self) -> None:
        """Make the ledger's node figures those of the store, dropping in the same write the
        reservations of machines the figures now count, and expired ones. The record is read before the
        store, so whatever a front writes after that read makes this write fail and be done again."""
        key = f"{self.prefix}capacity/{self.name}"
        while True:
            entry = await self.etcd.get(key)
            record = json.loads(entry.value) if entry else {}
            inflight = record.get("inflight", {})
            made = {rid: self._fulfilled[rid] for rid in inflight if rid in self._fulfilled}
            truth, counted = await self._usage(list(made.values()))
            now = time.time()
            left = {rid: r for rid, r in inflight.items() if made.get(rid) not in counted and r["expires"] > now}
            if all(record.get(k) == v for k, v in truth.items()) and left == inflight:
                written = True
            else:
                written = await self.etcd.replace(key, json.dumps({**record, **truth, "inflight": left}).encode(),
                                                  entry.mod_revision if entry else 0)
            if written:
                for rid in set(self._fulfilled) - set(left):
                    del self._fulfilled[rid]
                return

    async def _keep_ledger(self) -> None:
        """Check the ledger every `ledger_seconds`, and at once when this node made a reserved machine."""
        while True:
            try:
                await asyncio.wait_for(self._ledger_changed.wait(), self._ledger_seconds)
            except asyncio.TimeoutError:
                pass
            self._ledger_changed.clear()
            if self.keeper.safe:
                try:
                    await self._write_ledger()
                except EtcdUnavailable as exc:
                    log.info("could not update the placement ledger: %s", exc)


def fence_middleware(membership: NodeMembership, from_front: Callable[[web.Request], bool] | None = None):
    """Refuses a front's mutations while the node is fenced (reads, and the node's own clients, pass),
    and tells the ledger which reserved create made which machine. With `from_front` (cluster.tls_ca), only a
    connection that showed a front's certificate may speak as a front."""

    @web.middleware
    async def fence(request: web.Request, handler):
        if from_front and (FRONT_HEADER in request.headers or RESERVATION_HEADER in request.headers) \
                and not from_front(request):
            raise Forbidden(f"{FRONT_HEADER} and {RESERVATION_HEADER} are for fronts, which connect with a "
                            "certificate of the federation CA (cluster.tls_ca)")
        if request.method not in ("GET", "HEAD") and FRONT_HEADER in request.headers and membership.fenced:
            raise Unavailable(f"node {membership.name} cannot reach the federation's etcd quorum, so it takes "
                              "no federated changes now; retry through the front later",
                              headers={"Retry-After": "5"})
        response = await handler(request)
        reservation = request.headers.get(RESERVATION_HEADER)
        if reservation and response.status in (201, 202) and "Location" in response.headers:
            membership.fulfilled(reservation, response.headers["Location"].rstrip("/").rsplit("/", 1)[-1])
        return response

    return fence
