"""The one background sampler: reads each meter source once per round (however many Meters read it),
stores a sample for every Meter that is due, keeps the latest reading of every target for /metrics, and
keeps the samples table within its retention limits.

A Meter is sampled while it runs (not stopped) and its stopTime, if any, is still ahead. The sampler
wakes every meters.min_sample_interval seconds; a wake with nothing due costs one small query, which
tells it whether Meters changed (then it reloads them). A Machine's default Meters come and go with it,
in its own transaction; a full reconciliation runs once at start-up and with each retention round
(Meters past their expiresTime).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..errors import DriverError
from ..hookspecs import MeterSource
from ..store import samples
from ..store.db import Row, Store

log = logging.getLogger("cimid.sampler")
RETENTION_SECONDS = 60  # how often old samples are trimmed


def stamp_of(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Reading:
    """The latest values a source read of one target, for /metrics."""

    values: dict[str, float]
    at: float  # time.time() of the reading


@dataclass
class LatestReadings:
    """What the sources read last, by (target kind, target id): /metrics is served from here, never from
    the hypervisor."""

    by_target: dict[tuple[str, str], Reading] = field(default_factory=dict)
    read_at: dict[str, float] = field(default_factory=dict)  # source name -> time.time() of its last read
    failures: dict[str, int] = field(default_factory=dict)  # source name -> reads that failed

    def replace(self, kind: str, readings: dict[str, dict[str, float]], at: float) -> None:
        for key in [key for key in self.by_target if key[0] == kind]:
            if key[1] not in readings:
                del self.by_target[key]  # a machine that stopped has no current values
        for target, values in readings.items():
            self.by_target[(kind, target)] = Reading(values, at)


class Sampler:
    def __init__(self, store: Store, sources: list[MeterSource], meters_config: dict,
                 kind_of: Callable[[Row], str | None], reconcile: Callable[[], Awaitable[None]]):
        self.store = store
        self.sources = sources
        self.config = meters_config
        self.kind_of = kind_of  # a Meter -> the kind of its target (host, machine), None if unknown
        self.reconcile = reconcile  # default Meters for new Machines, Meters of deleted targets removed
        self.latest = LatestReadings()
        self._next_due: dict[str, float] = {}  # meter id -> monotonic time of its next sample
        self._meters: list[Row] = []
        self._fingerprint: tuple | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.rounds = 0  # sampling rounds that stored samples, for tests and benchmarks to watch
        self._reconciled = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._sampling_loop()), loop.create_task(self._retention_loop())]

    async def stop(self) -> None:
        self._reconciled = False  # a start after a stop (a reset) gives the host and machines their defaults again
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []

    def wake(self) -> None:
        """A Meter was made, changed, started or stopped: look again now rather than at the next tick."""
        self._fingerprint = None
        self._wake.set()

    # ---------------------------------------------------------------- sampling

    async def _sampling_loop(self) -> None:
        tick = self.config["min_sample_interval"]
        # The first round (the host's default Meters, psutil loaded, every source read) waits one tick:
        # nothing a client asks right after start-up needs it, and a sandbox answers sooner without it.
        await asyncio.sleep(tick)
        while True:
            try:
                await self.sample_once()
            except Exception:  # a bad round must not end sampling
                log.exception("sampling round failed")
            due = [t for t in self._next_due.values()]
            wait = min([tick, *(t - time.monotonic() for t in due)])
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))
            except TimeoutError:
                pass

    async def _changed(self) -> bool:
        """Whether Meters changed since the last look (one indexed query). A Machine's default Meters are
        made and removed with it, in its own transaction (Meters._follow_targets)."""
        rows = await self.store.fetch(
            "SELECT count(*), max(seq), sum(version) FROM resources WHERE kind = 'Meter'")
        fingerprint = tuple(map(tuple, rows))
        changed = fingerprint != self._fingerprint
        self._fingerprint = fingerprint
        return changed

    async def sample_once(self) -> int:
        """One round: reload if anything changed, read the sources the due Meters need, store their
        samples. Returns how many samples were stored."""
        if not self._reconciled:
            await self.reconcile()  # once at start-up: machines made while Meters were off, the host
            self._reconciled = True
        if await self._changed():
            self._meters = await self.store.all_of("Meter")
            known = {m.id for m in self._meters}
            self._next_due = {k: v for k, v in self._next_due.items() if k in known}
        now = time.monotonic()
        wall = dt.datetime.now(dt.timezone.utc)
        stamp = stamp_of(wall)
        due = [m for m in self._meters if self._next_due.get(m.id, 0) <= now and sampling(m, stamp)]
        if not due:
            return 0
        kinds = {self.kind_of(m) for m in due}
        readings: dict[str, dict[str, dict[str, float]]] = {}
        for source in self.sources:
            if source.kind not in kinds:
                continue
            try:
                found = await source.read()
            except DriverError as exc:
                self.latest.failures[source.name] = self.latest.failures.get(source.name, 0) + 1
                log.warning("meter source %s: %s", source.name, exc)
                continue
            at = time.time()
            self.latest.replace(source.kind, found, at)
            self.latest.read_at[source.name] = at
            for target, values in found.items():
                readings.setdefault(source.kind, {}).setdefault(target, {}).update(values)
        rows = []
        for meter in due:
            interval = meter.attrs.get("sampleInterval") or self.config["default_sample_interval"]
            # On a grid of the interval, so that Meters of one interval are due together: one read each.
            self._next_due[meter.id] = (now // interval + 1) * interval
            target = meter.internal.get("target", "")
            value = readings.get(self.kind_of(meter), {}).get(target, {}).get(meter.internal.get("aspect"))
            if value is not None:
                rows.append((meter.id, stamp, value))
        if rows:
            async with self.store.write() as tx:
                await samples.add(tx, rows)
            self.rounds += 1
        return len(rows)

    # ---------------------------------------------------------------- retention

    async def _retention_loop(self) -> None:
        await asyncio.sleep(self.config["min_sample_interval"])  # as the first sampling round
        while True:
            try:
                if self._reconciled:
                    await self.reconcile()  # Meters past their expiresTime, or whose target went meanwhile
                await self.trim()
            except Exception:
                log.exception("sample retention failed")
            await asyncio.sleep(RETENTION_SECONDS)

    async def trim(self) -> int:
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=self.config["retention_hours"])
        dropped = await samples.trim(self.store, stamp_of(cutoff), self.config["max_database_mb"] * 2**20)
        if dropped:
            log.info("dropped %d old samples", dropped)
        return dropped


def sampling(meter: Row, stamp: str) -> bool:
    """Whether a Meter records samples at `stamp` (a stored dateTime): it runs, and its stopTime, if any,
    is still ahead."""
    stop = meter.attrs.get("stopTime")
    return meter.internal.get("running", True) and (stop is None or stamp < stop)
