"""EventLogs and their Events: each record a transaction emits (cimid.service.events) is written as a CIMI
Event in that same transaction, just before it commits, in the log of the resource it is about (a Machine's
eventLog) or in the provider's own log; logs are read with a summary counted for the caller, and the
retention sweep honours each log's persistence. The live stream is cimid.service.event_stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass

from ..errors import BadRequest, NotImplementedByProvider
from ..model import CIMI_NS, OWN_LOG, TYPES, Extension, ResourceType
from ..model.events import EVENT_STREAM, EVENT_TYPE_BASE, PERSISTENCE_DAYS, SEVERITIES, Event, EventLog
from ..store import events as event_queries
from ..store.db import Row, Transaction
from ..store.query import QueryError
from .event_stream import EventStored, EventStream
from .events import RECORDS, Alarm, FaultApplied, ModelChanged, Request, StateChanged, current_request
from .hrefs import event_log_id, new_id, now
from .present import Context, QueryParams, Result, etag
from .resources import ResourceService

log = logging.getLogger("cimid.events")
PROVIDER_LOG = event_queries.PROVIDER_LOG


def has_own_log(type_name: str) -> bool:
    """Whether resources of this type keep their own EventLog (they declare an OWN_LOG attribute, eventLog:
    Machines and Volumes; a Network declares one too and is covered with no change here)."""
    rtype = TYPES.get(type_name)
    return rtype is not None and any(a.derived == OWN_LOG for a in rtype.attributes)


@dataclass(frozen=True)
class _Subject:
    """What an Event is about, and so where it goes and who may see it."""

    type: str
    resource: str
    owner: str
    name: str


class EventLogs(ResourceService):
    _retention: asyncio.Task | None = None

    def __init__(self, family, parts):
        super().__init__(family, parts)
        self.stream = EventStream(self.store)
        self.store.before_commit(self.record)

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        async with self.store.write() as tx:
            await self._log(tx, _Subject("CloudEntryPoint", "cloudEntryPoint", "", "cimid"))
        await self.sweep()
        self._retention = asyncio.get_running_loop().create_task(self._retention_loop())

    def shutting_down(self) -> None:
        self.stream.close()

    async def stop(self) -> None:
        self.stream.close()
        if self._retention:
            self._retention.cancel()

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        # A log outlives its target (what happened to a deleted Machine stays readable), until the retention
        # sweep has removed its last Event.
        return {"Linked": False} if rtype is EventLog else {}

    # ---------------------------------------------------------------- writing Events

    async def record(self, tx: Transaction) -> None:
        """Before `tx` commits: an Event for each record it emitted, and for a consumer's request the access
        Event of who asked, once per request."""
        records = [event for event in tx.events if isinstance(event, RECORDS)]
        if not records:
            return
        request = current_request.get()
        written = []
        if request is not None and not request.recorded:
            written.append(await self._write(tx, *self._access(records[0], request)))
            tx.after_commit.append(lambda: setattr(request, "recorded", True))
        for record in records:
            written.append(await self._write(tx, *self._describe(record)))
        stored = EventStored()
        tx.after_commit.append(lambda: stored.committed(tx.stored(row) for row in written))
        tx.emit(stored)

    async def _write(self, tx: Transaction, subject: _Subject, kind: str, attrs: dict, time: str,
                     initiator: str) -> Row:
        log_row = await self._log(tx, subject)
        contact = initiator or self.config["events"]["contact"]
        attrs = {"name": kind, "created": time, "timestamp": time, "type": EVENT_TYPE_BASE + kind, **attrs,
                 **({"contact": contact} if contact else {})}
        event = Row(Event.name, new_id(), log_row.id, attrs, owner=subject.owner)
        await tx.insert(event)
        return event

    async def _log(self, tx: Transaction, subject: _Subject, persistence: str | None = None) -> Row:
        """The log Events about `subject` go to, made if it does not exist (yet, or any more)."""
        own = has_own_log(subject.type)
        id = event_log_id(subject.resource) if own else PROVIDER_LOG
        row = await tx.get(EventLog.name, id)
        if row is not None:
            return row
        stamp = now()
        if own:
            attrs = {"name": f"{subject.name or subject.resource} events",
                     "description": f"What happened to {subject.type} {subject.resource}",
                     "targetResource": {"href": subject.resource}}
            internal = {"target_kind": subject.type, "target_id": subject.resource.rsplit("/", 1)[1]}
            ownership = {"owner": subject.owner}
        else:  # every consumer sees the provider's log, and in it only the Events of its own resources
            attrs = {"name": "provider events", "description": "What happened to the provider and to resources "
                     "without an EventLog of their own", "targetResource": {"href": "cloudEntryPoint"}}
            internal, ownership = {}, {"owner": "", "public": True}
        attrs.update({"created": stamp, "updated": stamp,
                      "persistence": persistence or self.config["events"]["persistence"]})
        row = Row(EventLog.name, id, "", attrs, internal, **ownership)
        await tx.insert(row)
        return row

    async def open_log(self, tx: Transaction, rtype: ResourceType, row: Row, persistence: str | None) -> None:
        """Make the EventLog of a new resource now, with the persistence its template asks for."""
        await self._log(tx, _Subject(rtype.name, f"{rtype.collection}/{row.id}", row.owner,
                                     row.attrs.get("name", "")), persistence)

    @staticmethod
    def _subject(record) -> _Subject:
        return _Subject(record.type, record.resource, record.owner, record.name)

    def _describe(self, record) -> tuple[_Subject, str, dict, str, str]:
        """(subject, Event type, attributes, time, initiator) of one record."""
        subject = self._subject(record)
        what = f"{record.type} {record.name or record.resource}"
        content = {"resName": record.name, "resource": {"href": record.resource},
                   "resType": f"{CIMI_NS}/{record.type}"}
        if isinstance(record, StateChanged):
            content.update(state=record.current, previous=record.previous)
            attrs = {"description": f"{what}: {record.previous} -> {record.current} ({record.reason})",
                     "content": content, "outcome": "Failure" if record.current == "ERROR" else "Status",
                     "severity": record.severity}
            return subject, "state", attrs, record.time, record.initiator
        if isinstance(record, Alarm):
            content.update(code=record.code, detail=record.detail)
            attrs = {"description": f"{what}: {record.detail}", "content": content, "outcome": "Failure",
                     "severity": record.severity}
            return subject, "alarm", attrs, record.time, record.initiator
        if isinstance(record, FaultApplied):  # the test-control extension made this operation fail or wait
            content.update(rule=record.rule, operation=record.operation, effect=record.effect,
                           detail=record.message)
            attrs = {"description": f"{what}: {record.summary}", "content": content,
                     "outcome": "Status" if record.effect == "slow" else "Failure", "severity": record.severity}
            return subject, "alarm", attrs, record.time, ""
        assert isinstance(record, ModelChanged)
        content.update(change=record.change, detail=record.detail)
        attrs = {"description": f"{what} {record.change}", "content": content, "outcome": "Success",
                 "severity": "medium" if record.change == "deleted" else "low"}
        return subject, "model", attrs, record.time, record.initiator

    def _access(self, first, request: Request) -> tuple[_Subject, str, dict, str, str]:
        """Who asked for the change `first` records (the first record of the request's transaction)."""
        detail = f"{request.initiator} asked for {request.operation} on {first.type} {first.name or first.resource}"
        content = {"operation": request.operation, "resource": {"href": first.resource}, "detail": detail,
                   "initiator": request.initiator}
        attrs = {"description": detail, "content": content, "outcome": "Success", "severity": "low"}
        return self._subject(first), "access", attrs, first.time, request.initiator  # when the change was made

    # ---------------------------------------------------------------- reading

    def present(self, rtype: ResourceType, row: Row, ctx: Context) -> dict:
        doc = super().present(rtype, row, ctx)
        resource = doc.get("content", {}).get("resource") if rtype is Event else None
        if resource and "href" in resource:
            doc["content"] = {**doc["content"], "resource": {"href": ctx.base + resource["href"]}}
        return doc

    async def get(self, ctx: Context, rtype: ResourceType, id: str, params: QueryParams,
                  parent: str | None = None) -> Result:
        if rtype is not EventLog:
            return await super().get(ctx, rtype, id, params, parent)
        row = await self.load(ctx, rtype, id, parent)  # its summary is counted at each read: never cached
        return Result(200, rtype, await self.render(rtype, row, ctx, params), headers={"ETag": etag(row)})

    async def render(self, rtype: ResourceType, row: Row, ctx: Context, params: QueryParams) -> dict:
        if rtype is EventLog:
            counts = (await event_queries.severity_counts(self.store, [row.id], ctx.scope)).get(row.id, {})
            row = Row(row.kind, row.id, row.parent, {**row.attrs, "summary": {s: counts.get(s, 0) for s in SEVERITIES}},
                      row.internal, row.version, owner=row.owner, public=row.public)
        return await super().render(rtype, row, ctx, params)

    # ---------------------------------------------------------------- the live stream

    async def entry_point_extension(self, ctx: Context, extension: Extension, params: QueryParams,
                                    last_event_id: str | None) -> Result:
        if extension is not EVENT_STREAM:
            raise NotImplementedByProvider(f"'{extension.uri}' is not offered here")
        if last_event_id is not None and not last_event_id.strip().isdigit():
            raise BadRequest(f"Last-Event-ID must be the id of an event of this stream, not '{last_event_id[:40]}'")
        try:
            where, values = event_queries.compile_filters(params.filters, Event.columns)
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        # Where the stream starts is said first (an id with no data), so that a client that drops before
        # any Event came can still resume from there, and a front can tell its clients where each node is.
        after = int(last_event_id) if last_event_id is not None else await event_queries.latest_seq(self.store)
        events = self.stream.follow(ctx.scope, where, values, after)

        async def documents():
            yield after, None
            try:
                async for item in events:
                    yield None if item is None else (item[0], self.present(Event, item[1], ctx))
            finally:
                await events.aclose()  # the follower stops waiting for commits

        return Result(200, Event, stream=documents())

    # ---------------------------------------------------------------- retention

    async def sweep(self, at: dt.datetime | None = None) -> None:
        """Remove Events older than their log's persistence allows at `at` (now by default)."""
        at = at or dt.datetime.now(dt.timezone.utc)
        cutoffs = {name: (at - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                   for name, days in PERSISTENCE_DAYS.items()}
        await event_queries.sweep(self.store, cutoffs, cutoffs[self.config["events"]["persistence"]])

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.sweep()
            except Exception:  # sweep again later; one bad minute must not end retention
                log.exception("event retention failed")
