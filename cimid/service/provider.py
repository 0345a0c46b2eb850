"""The provider: a thin dispatcher from a request on a collection, resource, operation or sub-collection
to the service of the family that owns the type. It knows no type by name: the registry says which
family runs a type, and each family's service does the work."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable

from ..config import Config
from ..errors import BadRequest, Forbidden, MethodNotAllowed, NotFound
from ..model import Extension, ResourceType, collection_type, registry, sub_collection
from ..plugins import Drivers
from ..store.db import Store
from .consumers import ConsumerDirectory
from .events import Request, current_request, log_event
from .idempotency import IdempotentRequests
from .metadata import Metadata
from .metrics import MetricFamily, RequestFigures
from .hrefs import path_of
from .present import Context, QueryParams, Result
from .references import References
from .resources import Collaborators, ResourceService
from .runner import JobRunner


def _service_class(path: str) -> type[ResourceService]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


class Provider:
    def __init__(self, config: Config, store: Store, drivers: Drivers):
        self.config = config
        self.store = store
        self.drivers = drivers
        self.jobs = JobRunner(store, config["jobs"]["max_concurrent"])
        self.consumers = ConsumerDirectory(store)
        self.idempotency = IdempotentRequests(store, config["server"]["idempotency_minutes"])
        parts = Collaborators(config, store, self.jobs, drivers, References(), self.service_of)
        self.at_once_hooks = parts.at_once_hooks  # the test-control extension's faults on what needs no Job
        # A family whose driver is not configured is not served at all.
        self.services: dict[str, ResourceService] = {
            family.name: _service_class(family.service)(family, parts)
            for family in registry.FAMILIES if family.requires is None or getattr(drivers, family.requires) is not None}
        self.metadata = next(s for s in self.services.values() if isinstance(s, Metadata))
        self.requests = RequestFigures()  # counted by the HTTP layer, exported at /metrics
        store.subscribe(log_event)

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        await self.store.open()
        for service in self.services.values():
            await service.start()
        await self.idempotency.start()

    def shutting_down(self) -> None:
        """The server stops taking requests: long-lived answers (the event stream) end now."""
        for service in self.services.values():
            service.shutting_down()

    async def stop(self) -> None:
        try:
            await self.idempotency.stop()
            for service in self.services.values():
                await service.stop()
            await self.jobs.shutdown()
            await self.drivers.close()
        finally:
            await self.store.close()

    # ---------------------------------------------------------------- what is served

    def service_of(self, rtype: ResourceType) -> ResourceService | None:
        family = registry.FAMILY_OF.get(rtype.name)
        return self.services.get(family.name) if family else None

    def type_of(self, collection: str) -> ResourceType:
        rtype = collection_type(collection)
        if rtype is None or self.service_of(rtype) is None:
            raise NotFound(f"this provider has no collection '{collection}'")
        return rtype

    def operation_of(self, rtype: ResourceType, segment: str) -> ResourceType | Extension | None:
        """What `{collection}/{id}/{segment}` is: a sub-collection's type, an extension, or (None) an action."""
        part = sub_collection(rtype, segment)
        if part is not None:
            return self.part_type(rtype, segment)  # 404 where its family is not served
        listed = registry.targeting(rtype, segment)
        if listed is not None:
            if self.service_of(listed) is None:
                raise NotFound(f"this provider serves no {listed.name}")
            return listed
        return rtype.extensions.get(segment)

    def part_type(self, rtype: ResourceType, segment: str) -> ResourceType:
        part = sub_collection(rtype, segment)
        if part is None:
            raise NotFound(f"a {rtype.name} has no '{segment}'")
        if self.service_of(part) is None:  # its family has no driver here (no storage pool: no volumes)
            raise NotFound(f"this provider serves no {part.name} (its driver is not configured)")
        return part

    # ---------------------------------------------------------------- requests

    async def entry_point(self, ctx: Context, params: QueryParams) -> Result:
        return await self.metadata.entry_point(ctx, params)

    async def entry_point_extension(self, ctx: Context, name: str, params: QueryParams,
                                    last_event_id: str | None) -> Result:
        family = registry.ENTRY_POINT_EXTENSIONS.get(name)
        service = self.services.get(family.name) if family else None
        if service is None:
            raise NotFound(f"this provider serves nothing at '{name}'")
        return await service.entry_point_extension(ctx, registry.CloudEntryPoint.extensions[name], params,
                                                   last_event_id)

    async def query(self, ctx: Context, rtype: ResourceType, params: QueryParams,
                    parent: tuple[ResourceType, str] | None = None) -> Result:
        service = self.service_of(rtype)
        if parent is None:
            return await service.query(ctx, rtype, params)
        await self._parent(ctx, *parent)
        if rtype.parent != parent[0].name:  # a TARGETING collection: what targets the parent
            return await service.query_targeting(ctx, rtype, params, path_of(parent[0], parent[1]))
        return await service.query(ctx, rtype, params, parent=parent[1])

    async def get(self, ctx: Context, rtype: ResourceType, id: str, params: QueryParams,
                  parent: tuple[ResourceType, str] | None = None) -> Result:
        if parent is not None:
            await self._parent(ctx, *parent)
        return await self.service_of(rtype).get(ctx, rtype, id, params, parent=parent[1] if parent else None)

    async def create(self, ctx: Context, rtype: ResourceType, root: str | None, body: dict,
                     parent: tuple[ResourceType, str] | None = None) -> Result:
        ResourceService.require_writer(ctx)
        if not rtype.creatable:
            raise MethodNotAllowed(f"{rtype.name} resources cannot be created by consumers", ["GET"])
        expected = rtype.create_wrapper or rtype.name
        if root is not None and root not in (expected, rtype.name):
            raise BadRequest(f"POST to {rtype.collection} takes a {expected}, not a {root}")
        if parent is not None:
            if rtype.parent != parent[0].name:
                raise MethodNotAllowed(f"a {parent[0].name}'s {rtype.collection} are listed here, made at "
                                       f"{rtype.collection}", ["GET"])
            await self._parent(ctx, *parent)
        return await _asked(ctx, "add", self.service_of(rtype).create(ctx, rtype, body,
                                                                      parent=parent[1] if parent else ""))

    async def update(self, ctx: Context, rtype: ResourceType, id: str, root: str | None, body: dict,
                     select: set[str] | None, if_match: str | None) -> Result:
        """`root`: the type the body names (XML root element, JSON resourceURI), None when it names none."""
        ResourceService.require_writer(ctx)
        if not rtype.editable:
            raise MethodNotAllowed(f"{rtype.name} resources cannot be updated", _allowed(rtype))
        if root is not None and root != rtype.name:  # both dialects: a body of another type is refused
            raise BadRequest(f"PUT to {rtype.collection} takes a {rtype.name}, not a {root}")
        return await _asked(ctx, "edit", self.service_of(rtype).update(ctx, rtype, id, body, select, if_match))

    async def delete(self, ctx: Context, rtype: ResourceType, id: str, if_match: str | None,
                     parent: tuple[ResourceType, str] | None = None) -> Result:
        ResourceService.require_writer(ctx)
        if not rtype.deletable:
            raise MethodNotAllowed(f"{rtype.name} resources cannot be deleted", _allowed(rtype))
        if parent is not None:
            await self._parent(ctx, *parent)
        return await _asked(ctx, "delete", self.service_of(rtype).delete(ctx, rtype, id, if_match,
                                                                         parent=parent[1] if parent else None))

    async def action(self, ctx: Context, rtype: ResourceType, id: str, operation: str, root: str | None,
                     body: dict, if_match: str | None) -> Result:
        ResourceService.require_writer(ctx)
        action = rtype.actions.get(operation)
        return await _asked(ctx, action.uri if action else operation,
                            self.service_of(rtype).action(ctx, rtype, id, operation, root, body, if_match))

    async def extension(self, ctx: Context, rtype: ResourceType, id: str, extension: Extension,
                        query: dict[str, str]) -> Result:
        return await self.service_of(rtype).extension(ctx, rtype, id, extension, query)

    async def metrics(self, ctx: Context) -> list[MetricFamily]:
        """Everything /metrics exports. It spans every consumer's machines, so only the roles that see
        everything (meters.metrics_access: admin, or admin and reader) may read it, unless set to user."""
        allowed = {"admin": ("admin",), "reader": ("admin", "reader"), "user": ("admin", "reader", "user")}
        if ctx.role not in allowed[self.config["meters"]["metrics_access"]]:
            raise Forbidden(f"'{ctx.user}' may not read /metrics (meters.metrics_access = "
                            f"{self.config['meters']['metrics_access']})")
        families = []
        for service in self.services.values():
            families += await service.metric_families()
        return [*families, *self.requests.families()]

    async def _parent(self, ctx: Context, rtype: ResourceType, id: str) -> None:
        """The parent must be visible to the caller; a sub-collection's item as parent is `{its parent}/{id}`."""
        if rtype.parent:
            grandparent, _, own = id.partition("/")
            await self._parent(ctx, registry.TYPES[rtype.parent], grandparent)
            await self.service_of(rtype).load(ctx, rtype, own, parent=grandparent)
            return
        await self.service_of(rtype).load(ctx, rtype, id)


async def _asked(ctx: Context, operation: str, work: Awaitable[Result]) -> Result:
    """Run a consumer's change knowing who asked for what: the access Event of the request."""
    token = current_request.set(Request(ctx.user, operation))
    try:
        return await work
    finally:
        current_request.reset(token)


def _allowed(rtype: ResourceType) -> list[str]:
    return ["GET", *(["PUT"] if rtype.editable else []), *(["DELETE"] if rtype.deletable else [])]
