"""Meters: MeterConfigurations and MeterTemplates (a catalogue), Meters made from them for a Machine or for
the host (targetResource: the CloudEntryPoint), their Samples, start and stop, default Meters for every
Machine from the provider's MeterTemplates (meters.machine_templates), and the sampler that records them.

A Meter measures one aspect in the units the meter sources report it in (cimid.hookspecs.ASPECTS), so a
configuration's units and timeScope, when given, must be those of its aspect."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import BadRequest, Conflict, Forbidden, NotFound
from ..hookspecs import ASPECTS, HOST, MACHINE, NETWORK, VOLUME
from ..model import Action, ResourceType
from ..model.meters import ASPECT_BASE, Meter, MeterConfiguration, MeterCreate, MeterTemplate, Sample
from ..model.validate import require, validate
from ..store import samples as sample_queries
from ..store.db import Row, Store, Transaction
from ..store.query import QueryError
from .events import ModelChanged
from .hrefs import new_id, now, path_of, split_href
from .metrics import MetricFamily
from .present import Context, QueryParams, Result, check_if_match, etag, select_attributes
from .resources import ResourceService
from .runner import job_result, job_row
from .sampler import Sampler, sampling

log = logging.getLogger("cimid.meters")

# Aspects of cimid's own beyond DSP0263's (which live under ASPECT_BASE).
EXTENSION_ASPECTS = {"diskIO": "urn:x-cimid:aspect:diskIO"}
ENTRY_POINT = "cloudEntryPoint"  # a host Meter's targetResource


@dataclass(frozen=True)
class Target:
    """A kind of resource Meters measure: its collection, the kind of meter source that measures it
    (cimid.hookspecs.MeterSource.kind), and the meters.* key naming the MeterTemplates each new one gets
    Meters from."""

    type: str
    collection: str
    kind: str
    templates: str


TARGETS = {t.type: t for t in (Target("Machine", "machines", MACHINE, "machine_templates"),
                               Target("Volume", "volumes", VOLUME, "volume_templates"),
                               Target("Network", "networks", NETWORK, "network_templates"))}
TARGET_BY_COLLECTION = {t.collection: t for t in TARGETS.values()}
DEFAULTS_RECORD = "meters-defaults"  # Meta row: whether the host got its default Meters
RECONCILE_BATCH = 100  # machines given their default Meters per transaction at start-up
SEED_RECORD = "meters-seeded"
VOLUME_SEED_RECORD = "meters-seeded-volumes"  # volume templates came later: a store seeded before gets them
VOLUME_ASPECTS = ("disk", "diskIO")  # what a volume source measures (cimid_libvirt.VolumeStats)
NETWORK_SEED_RECORD = "meters-seeded-networks"  # network templates came later still
NETWORK_ASPECTS = ("inputBandwidth", "outputBandwidth")  # what a network source measures (its bridge's counters)
# /metrics names: an aspect -> (metric name after cimid_{host|machine}_, factor to its base unit, help)
EXPORTED = {
    "cpu": ("cpu_percent", 1, "CPU time used, percent of all the target's cores"),
    "memory": ("memory_used_bytes", 1024, "memory in use"),
    "disk": ("disk_used_bytes", 1024, "disk space in use"),
    "diskIO": ("disk_io_bytes_per_second", 1, "bytes read plus written per second"),
    "inputBandwidth": ("network_receive_bytes_per_second", 1, "bytes received per second"),
    "outputBandwidth": ("network_transmit_bytes_per_second", 1, "bytes sent per second"),
}


def aspect_uri(name: str) -> str:
    return EXTENSION_ASPECTS.get(name, ASPECT_BASE + name)


ASPECT_BY_URI = {aspect_uri(name): name for name in ASPECTS}


def sample_text(value: float) -> str:
    """A sample's value as CIMI's string: whole numbers without a fraction, others to 3 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0")


class Meters(ResourceService):
    def __init__(self, family, parts):
        super().__init__(family, parts)
        self.meters_config = self.config["meters"]
        self.kinds = {source.kind for source in self.drivers.meters}
        self.sampler = Sampler(self.store, self.drivers.meters, self.meters_config,
                               kind_of=lambda meter: meter.internal.get("kind"), reconcile=self.reconcile)
        # A target's default Meters are made, and its Meters removed, in the transaction that makes or
        # deletes it (its ModelChanged record): one machine's change never rescans every machine.
        self.store.before_commit(self._follow_targets)

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        await seed_meter_catalogue(self.store, self.meters_config["default_sample_interval"])
        if self.meters_config["sampling"]:
            async with self.store.write() as tx:  # there as soon as cimid answers; the rest of the
                await self._host_defaults(tx)  # reconciliation runs with the sampler's first round
            self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        if rtype is Meter:
            return {"MeterConfigByValue": True, "MeterTemplateByValue": True}
        return {}

    # ---------------------------------------------------------------- presentation

    def present(self, rtype: ResourceType, row: Row, ctx: Context) -> dict:
        doc = super().present(rtype, row, ctx)
        if doc.get("timeScope") == "Interval" and doc.get("sampleInterval"):
            doc["intervalDuration"] = f"PT{doc['sampleInterval']}S"
        return doc

    def action_possible(self, rtype: ResourceType, row: Row, action: Action) -> bool:
        if rtype is Meter:
            return sampling(row, now()) == (action.name == "stop")
        return super().action_possible(rtype, row, action)

    def sample_doc(self, ctx: Context, meter: str, ts: str, value: float) -> dict:
        return {"resourceURI": Sample.type_uri, "id": ctx.base + path_of(Sample, ts, meter), "timestamp": ts,
                "value": sample_text(value)}

    # ---------------------------------------------------------------- samples

    async def query(self, ctx: Context, rtype: ResourceType, params: QueryParams, parent: str = "") -> Result:
        if rtype is not Sample:
            return await super().query(ctx, rtype, params, parent)
        try:  # the Meter was found in the caller's scope before this is called (Provider._parent)
            count, rows = await sample_queries.page(self.store, parent, filters=params.filters,
                                                    orderby=params.orderby, first=params.first, last=params.last)
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        items = [select_attributes(self.sample_doc(ctx, parent, ts, value), Sample,
                                   params.select - {"id", "count", "operations"} or None if params.select else None)
                 for ts, value in rows]
        return self.collection(ctx, Sample, ctx.base + f"{Meter.collection}/{parent}/{Sample.collection}", count,
                               items)

    async def get(self, ctx: Context, rtype: ResourceType, id: str, params: QueryParams,
                  parent: str | None = None) -> Result:
        if rtype is not Sample:
            return await super().get(ctx, rtype, id, params, parent)
        value = await sample_queries.get(self.store, parent, id)
        if value is None:
            raise NotFound(f"Meter '{parent}' has no sample at '{id}'")
        return Result(200, Sample, select_attributes(self.sample_doc(ctx, parent, id, value), Sample, params.select))

    # ---------------------------------------------------------------- create and change

    async def create(self, ctx: Context, rtype: ResourceType, body: dict, parent: str = "") -> Result:
        if rtype is MeterConfiguration:
            attrs = validate(rtype, body, creating=True)
            require(rtype, attrs)
            complete_configuration(attrs)
            async with self.store.write() as tx:
                return await self.insert(tx, ctx, rtype, attrs)
        if rtype is MeterTemplate:
            attrs = validate(rtype, body, creating=True)
            require(rtype, attrs)
            async with self.store.write() as tx:
                await self._check_template(tx, ctx, attrs)
                return await self.insert(tx, ctx, rtype, attrs)
        request = validate(MeterCreate, body, creating=True)
        require(MeterCreate, request)
        async with self.store.write() as tx:
            template = await self.references.resolve(tx, MeterCreate.attribute("meterTemplate"),
                                                     request["meterTemplate"], ctx.scope)
            if not template.get("targetResource"):
                raise BadRequest("the meterTemplate needs a targetResource: a Machine, or the CloudEntryPoint "
                                 "for the host")
            config = await self.references.resolve(tx, MeterTemplate.attribute("meterConfig"),
                                                   template["meterConfig"], ctx.scope)
            complete_configuration(config)
            kind, path, target_id, owner = await self._target(tx, ctx, template["targetResource"]["href"])
            extra = {k: request[k] for k in ("name", "description", "properties") if k in request}
            meter = await self._insert_meter(tx, config, kind, path, target_id, owner, extra)
            job = job_row(action="add", target=Meter.collection, affected=[f"meters/{meter.id}"], state="SUCCESS",
                          message="Meter created", owner=ctx.user)
            await tx.insert(job)
        self.sampler.wake()
        return Result(201, Meter, self.present(Meter, meter, ctx),
                      headers={"Location": ctx.base + f"meters/{meter.id}",
                               "CIMI-Job-URI": ctx.base + f"jobs/{job.id}", "ETag": etag(meter)})

    async def _check_template(self, tx: Transaction, ctx: Context, attrs: dict) -> None:
        """A template's targetResource names something the caller may meter; a by-value configuration is
        one cimid can measure. Stores the target as a relative href."""
        if attrs.get("targetResource"):
            _kind, path, _id, _owner = await self._target(tx, ctx, attrs["targetResource"]["href"])
            attrs["targetResource"] = {"href": path}
        config = attrs.get("meterConfig")
        if config and "href" not in config:
            complete_configuration(config)
        await self.references.check(tx, MeterTemplate, attrs, ctx.scope)

    async def _target(self, tx: Transaction, ctx: Context, href: str) -> tuple[str, str, str, str]:
        """A targetResource href -> (source kind, relative path, id, owner of the Meters made for it)."""
        path = urlsplit(href).path if "://" in href else href
        if path.rstrip("/").rsplit("/", 1)[-1] == ENTRY_POINT:
            if ctx.role != "admin":
                raise Forbidden("only an admin may meter the host (targetResource: the CloudEntryPoint)")
            return HOST, ENTRY_POINT, "", ""
        collection, id = split_href(href)
        if collection not in TARGET_BY_COLLECTION:
            raise BadRequest(f"targetResource: '{href}' is not something cimid meters (a Machine, a Volume, a "
                             "Network, or the CloudEntryPoint for the host)")
        known = TARGET_BY_COLLECTION[collection]
        target = await tx.get(known.type, id, ctx.scope)
        if target is None:
            raise BadRequest(f"targetResource: '{href}' does not name an existing {known.type}")
        return known.kind, f"{collection}/{id}", id, target.owner

    async def _insert_meter(self, tx: Transaction, config: dict, kind: str, path: str, target_id: str,
                            owner: str, extra: dict) -> Row:
        aspect = ASPECT_BY_URI[config["aspect"]]
        if kind not in self.kinds:
            raise BadRequest(f"no meter source of this provider measures a {kind}")
        measure = ASPECTS[aspect]
        stamp = now()
        attrs = {"name": f"{path} {aspect}", "created": stamp, "updated": stamp, "targetResource": {"href": path},
                 "aspect": config["aspect"], "units": measure.units,
                 "sampleInterval": max(config.get("sampleInterval") or self.meters_config["default_sample_interval"],
                                       self.meters_config["min_sample_interval"]),
                 "timeScope": measure.time_scope, "isContinuous": config.get("isContinuous", True)}
        for name, bound in (("minValue", measure.minimum), ("maxValue", measure.maximum)):
            if bound is not None:
                attrs[name] = sample_text(bound)
        attrs.update(extra)
        meter = Row(Meter.name, new_id(), "", attrs, owner=owner,
                    internal={"running": True, "kind": kind, "target": target_id, "aspect": aspect})
        await tx.insert(meter)
        return meter

    async def update(self, ctx: Context, rtype: ResourceType, id: str, body: dict, select: set[str] | None,
                     if_match: str | None) -> Result:
        if rtype is MeterConfiguration:
            complete_configuration(validate(rtype, body, creating=False), fill=False)
        if rtype is Meter and isinstance(body.get("sampleInterval"), int):
            if body["sampleInterval"] < self.meters_config["min_sample_interval"]:
                raise BadRequest(f"sampleInterval: this provider samples at most every "
                                 f"{self.meters_config['min_sample_interval']} s")
        if rtype is MeterTemplate and isinstance(body.get("targetResource"), dict) and body["targetResource"].get("href"):
            async with self.store.write() as tx:
                _kind, path, _id, _owner = await self._target(tx, ctx, body["targetResource"]["href"])
            body = {**body, "targetResource": {"href": path}}
        result = await super().update(ctx, rtype, id, body, select, if_match)
        self.sampler.wake()
        return result

    async def forget_host(self, tx: Transaction) -> None:
        """A reset: every sample goes at once (not Meter by Meter: a machine has six)."""
        await sample_queries.delete_all(tx)

    async def after_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        if rtype is Meter:
            await sample_queries.delete_meter(tx, row.id)
            self.sampler.wake()

    async def act(self, ctx: Context, rtype: ResourceType, id: str, action: Action, request: dict,
                  if_match: str | None) -> Result:
        """start and stop: done at once, answered with the finished Job."""
        async with self.store.write() as tx:
            meter = await self.changeable(tx, ctx, Meter, id)
            check_if_match(meter, if_match)
            stamp = now()
            if sampling(meter, stamp) == (action.name == "start"):
                raise Conflict(f"Meter '{id}' is {'already recording' if action.name == 'start' else 'stopped'}")
            if action.name == "stop":
                meter.internal["running"] = False
                meter.attrs["stopTime"] = stamp
            else:
                meter.internal["running"] = True
                if meter.attrs.get("stopTime", stamp) <= stamp:
                    meter.attrs.pop("stopTime", None)  # a stopTime still ahead is the consumer's, and kept
            meter.attrs["updated"] = stamp
            await tx.update(meter)
            path = path_of(Meter, id)
            job = job_row(action=action.uri, target=path, affected=[path], state="SUCCESS", owner=ctx.user,
                          message=f"Meter {action.final}")
            await tx.insert(job)
        self.sampler.wake()
        return job_result(ctx, job, 200)

    # ---------------------------------------------------------------- default Meters, gone targets

    async def _follow_targets(self, tx: Transaction) -> None:
        """Before `tx` commits: default Meters for each Machine, Volume or Network it made, and none left for one it
        deleted."""
        if not self.meters_config["sampling"]:
            return
        templates: dict[str, list[dict]] = {}
        for record in tx.events:
            target = TARGETS.get(record.type) if isinstance(record, ModelChanged) else None
            if target is None or target.kind not in self.kinds:
                continue
            target_id = record.resource.rsplit("/", 1)[1]
            if record.change == "created":
                if target.type not in templates:
                    templates[target.type] = await self._default_templates(tx, target.templates)
                for config in templates[target.type]:
                    await self._insert_meter(tx, config, target.kind, record.resource, target_id, record.owner, {})
            elif record.change == "deleted":
                for meter in await sample_queries.meters_targeting(tx, target_id):
                    await tx.delete(Meter.name, meter)
                    await sample_queries.delete_meter(tx, meter)
        if templates:
            self.sampler.wake()

    async def reconcile(self) -> None:
        """At start-up and with each retention round: delete the Meters whose target is gone or whose
        expiresTime has passed; give the host, and every Machine, Volume and Network that has no Meter (made while
        Meters were off, or before they existed), the Meters of the provider's templates. Targets are done
        in small transactions, so a store of 10,000 unmetered machines never holds the writer for long."""
        targets = {t.kind: {row.id: row for row in await self.store.all_of(t.type)} for t in TARGETS.values()}
        meters = await self.store.all_of(Meter.name)
        stamp = now()
        stale = [m for m in meters
                 if (m.internal.get("kind") in targets and m.internal.get("target") not in targets[m.internal["kind"]])
                 or (m.attrs.get("expiresTime") is not None and m.attrs["expiresTime"] <= stamp)]
        async with self.store.write() as tx:
            for meter in stale:
                await tx.delete(Meter.name, meter.id)
                await sample_queries.delete_meter(tx, meter.id)
            await self._host_defaults(tx)
        metered = {m.internal.get("target") for m in meters}
        for target in TARGETS.values():
            if target.kind not in self.kinds:
                continue
            unmetered = [row for row in targets[target.kind].values() if row.id not in metered]
            for start in range(0, len(unmetered), RECONCILE_BATCH):
                async with self.store.write() as tx:
                    templates = await self._default_templates(tx, target.templates)
                    for row in unmetered[start:start + RECONCILE_BATCH]:
                        if await tx.get(target.type, row.id) is None:
                            continue  # deleted meanwhile
                        for config in templates:
                            await self._insert_meter(tx, config, target.kind, f"{target.collection}/{row.id}",
                                                     row.id, row.owner, {})
                await asyncio.sleep(0)  # let requests and Jobs write between two batches

    async def _host_defaults(self, tx: Transaction) -> None:
        """The host's default Meters, once (what an admin deletes stays deleted)."""
        record = await tx.get("Meta", DEFAULTS_RECORD)
        if HOST in self.kinds and not (record and record.attrs.get("host")):
            for config in await self._default_templates(tx, "host_templates"):
                await self._insert_meter(tx, config, HOST, ENTRY_POINT, "", "", {})
            if record is None:
                await tx.insert(Row("Meta", DEFAULTS_RECORD, "", {"created": now(), "host": True}))
            else:
                record.attrs["host"] = True
                await tx.update(record)

    async def _default_templates(self, tx: Transaction, key: str) -> list[dict]:
        """The configurations of the MeterTemplates named by meters.{key}, resolved."""
        configs = []
        for template_id in self.meters_config[key]:
            template = await tx.get(MeterTemplate.name, template_id)
            if template is None:
                log.warning("meters.%s names MeterTemplate '%s', which does not exist", key, template_id)
                continue
            config = await self.references.resolve(tx, MeterTemplate.attribute("meterConfig"),
                                                   template.attrs["meterConfig"], None)
            complete_configuration(config)
            configs.append(config)
        return configs

    # ---------------------------------------------------------------- /metrics

    async def metric_families(self) -> list[MetricFamily]:
        """The latest readings of the host and of every machine, from the sampler's memory."""
        families: dict[str, MetricFamily] = {}
        for (kind, target), reading in sorted(self.sampler.latest.by_target.items()):
            for aspect, value in reading.values.items():
                if aspect not in EXPORTED:
                    continue
                suffix, factor, text = EXPORTED[aspect]
                name = f"cimid_{kind}_{suffix}"
                family = families.setdefault(name, MetricFamily(name, "gauge", f"{text} ({kind})"))
                family.samples.append((name, {} if kind == HOST else {kind: target}, value * factor))
        read = MetricFamily("cimid_meter_source_last_read_timestamp_seconds", "gauge",
                            "when each meter source was last read (Unix time)")
        read.samples = [(read.name, {"source": name}, at) for name, at in sorted(self.sampler.latest.read_at.items())]
        failed = MetricFamily("cimid_meter_source_failures_total", "counter", "readings of a meter source that failed")
        failed.samples = [(failed.name, {"source": name}, count)
                          for name, count in sorted(self.sampler.latest.failures.items())]
        return [*families.values(), read, failed]


def complete_configuration(config: dict, *, fill: bool = True) -> None:
    """A configuration names an aspect cimid measures; its units and timeScope, if given, are the aspect's
    (every source reports an aspect one way); with `fill`, absent ones are filled in."""
    uri = config.get("aspect")
    if uri is None:
        return  # a partial update that leaves the aspect alone
    if uri not in ASPECT_BY_URI:
        raise BadRequest(f"aspect: '{uri}' is not measured here; choose one of {', '.join(ASPECT_BY_URI)}")
    measure = ASPECTS[ASPECT_BY_URI[uri]]
    for name, value in (("units", measure.units), ("timeScope", measure.time_scope)):
        if config.get(name) not in (None, value):
            raise BadRequest(f"{name}: {uri} is measured in {value}, not '{config[name]}'")
        if fill:
            config[name] = value
    if fill:
        config.setdefault("isContinuous", True)


async def seed_meter_catalogue(store: Store, interval: int) -> None:
    """The provider's MeterConfigurations (one per aspect) and MeterTemplates (machine-<aspect> for every
    Machine, volume-disk and volume-diskio for every Volume, network-input and network-output for every
    Network, host-<aspect> for the host), public, made once: what an admin deletes stays deleted."""
    short = {"diskIO": "diskio", "inputBandwidth": "input", "outputBandwidth": "output"}
    async with store.write() as tx:
        stamp = now()
        # Templates of the kinds metered later, each with its own record: a store seeded before gets them.
        for record, kind, aspects in ((VOLUME_SEED_RECORD, "Volume", VOLUME_ASPECTS),
                                      (NETWORK_SEED_RECORD, "Network", NETWORK_ASPECTS)):
            if await tx.get("Meta", record):
                continue
            prefix = kind.lower()
            for aspect in aspects:
                key = short.get(aspect, aspect)
                await tx.insert(Row(MeterTemplate.name, f"{prefix}-{key}", "", {
                    "name": f"{prefix}-{key}", "created": stamp, "updated": stamp,
                    "description": f"{aspect} of every {kind} (meters.{prefix}_templates)",
                    "meterConfig": {"href": f"meterConfigs/{key}"}}, public=True))
            await tx.insert(Row("Meta", record, "", {"created": stamp}))
        if await tx.get("Meta", SEED_RECORD):
            return
        for aspect, measure in ASPECTS.items():
            key = short.get(aspect, aspect)
            await tx.insert(Row(MeterConfiguration.name, key, "", {
                "name": key, "description": measure.description, "created": stamp, "updated": stamp,
                "aspect": aspect_uri(aspect), "units": measure.units, "sampleInterval": interval,
                "timeScope": measure.time_scope, "isContinuous": True}, public=True))
            await tx.insert(Row(MeterTemplate.name, f"machine-{key}", "", {
                "name": f"machine-{key}", "description": f"{aspect} of every Machine (meters.machine_templates)",
                "created": stamp, "updated": stamp, "meterConfig": {"href": f"meterConfigs/{key}"}}, public=True))
            await tx.insert(Row(MeterTemplate.name, f"host-{key}", "", {
                "name": f"host-{key}", "description": f"{aspect} of the host (meters.host_templates)",
                "created": stamp, "updated": stamp, "targetResource": {"href": ENTRY_POINT},
                "meterConfig": {"href": f"meterConfigs/{key}"}}, public=True))
        await tx.insert(Row("Meta", SEED_RECORD, "", {"created": stamp}))
