"""The generic service every family starts from: read, query, create, update, delete of stored
resources, by the rules each type declares. A family's service subclasses it and overrides only what its
types do differently (a Machine is made by a Job; a Job is stopped)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..config import Config
from ..errors import BadRequest, Conflict, Forbidden, NotFound, NotImplementedByProvider
from ..hookspecs import MachineSpec
from ..model import ACTION_BASE, TYPES, Action, Extension, Family, ResourceType, collection_type
from ..model.registry import ActionRequest
from ..model.validate import require, validate
from ..plugins import Drivers
from ..store.db import Row, Store, Transaction
from ..store.query import QueryError
from .events import model_changed
from .hrefs import new_id, now, path_of, split_href
from .metrics import MetricFamily
from .present import Context, QueryParams, Result, check_if_match, etag, operations, present, select_attributes
from .references import References
from .runner import JobRunner, job_result, job_row

# DSP0263's own operations: asking a type for one it lacks is "not implemented", not "no such thing".
STANDARD_ACTIONS = ("capture", "snapshot", "restore", "start", "stop", "restart", "pause", "suspend")


@dataclass
class Collaborators:
    """What a family service works with; never the provider itself."""

    config: Config
    store: Store
    jobs: JobRunner
    drivers: Drivers
    references: References
    # The service of another type, for the rare request one family hands to another (an image whose
    # location is a Machine is made by capturing that Machine).
    service_of: Callable[[ResourceType], ResourceService]
    # Called with (who asks, type, operation kind, id or None) before a create or delete that is done at
    # once, without a host Job (a catalogue entry): where the test-control extension's faults reach them.
    at_once_hooks: list[Callable[[Context, ResourceType, str, str | None], Awaitable[None]]] = field(
        default_factory=list)


class ResourceService:
    def __init__(self, family: Family, parts: Collaborators):
        self.family = family
        self.parts = parts
        self.config = parts.config
        self.store = parts.store
        self.jobs = parts.jobs
        self.drivers = parts.drivers
        self.references = parts.references

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        """At start-up, once the store is open: seed, recover Jobs, re-read the host."""

    async def stop(self) -> None:
        """At shutdown, before the store closes."""

    async def forget_host(self, tx: Transaction) -> None:
        """The test-control extension's reset: remove what the host keeps for every resource of this
        family, in the transaction that then wipes the store. By default each row's after_delete, as a
        delete does; a family with a faster way overrides it."""
        if type(self).after_delete is ResourceService.after_delete:
            return  # nothing kept on the host (Jobs): no need to read a thousand rows
        for rtype in self.family.types:
            if rtype.collection:
                for row in await self.store.all_of(rtype.name):
                    await self.after_delete(tx, rtype, row)

    def shutting_down(self) -> None:
        """The server stops taking requests: end long-lived answers (a stream) so that shutdown need not
        wait for them."""

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        """ResourceMetadata capabilities of `rtype` (name -> value) on this provider."""
        return {}

    async def metric_families(self) -> list[MetricFamily]:
        """What this family exports at /metrics (from memory or the store, never from a hypervisor)."""
        return []

    async def usage(self, reader: Store | Transaction, owner: str) -> dict[str, int]:
        """What `owner` uses of the quotas this family governs (machines, cpu, memory ...)."""
        return {}

    async def check_quotas(self, tx: Transaction, ctx: Context, adding: dict[str, int]) -> None:
        """403 before any host work when `adding` would take the caller past one of its quotas."""
        limited = {key: ctx.quotas[key] for key in adding if key in ctx.quotas}
        if not limited:
            return
        used = await self.usage(tx, ctx.user)
        for key, limit in limited.items():
            if used.get(key, 0) + adding[key] > limit:
                raise Forbidden(f"quota {key} exceeded: '{ctx.user}' may use {limit} and uses {used.get(key, 0)}; "
                                f"this request needs {adding[key]} more")

    # ---------------------------------------------------------------- presentation

    def operations(self, rtype: ResourceType, row: Row, ctx: Context, href: str) -> list[dict]:
        return operations(rtype, row, ctx, href, lambda action: self.action_possible(rtype, row, action))

    def action_possible(self, rtype: ResourceType, row: Row, action: Action) -> bool:
        """Beyond the states an action is declared for, whether this row allows it now."""
        if action.name in ("publish", "unpublish"):
            return row.public == (action.name == "unpublish")
        return True

    def present(self, rtype: ResourceType, row: Row, ctx: Context) -> dict:
        return present(rtype, row, ctx, lambda href: self.operations(rtype, row, ctx, href))

    # ---------------------------------------------------------------- read

    async def load(self, ctx: Context, rtype: ResourceType, id: str, parent: str | None = None) -> Row:
        """A resource this caller may see, to read, never to change (it may be shared with other readers)."""
        row = await self.store.get(rtype.name, id, scope=ctx.scope, shared=True)
        if row is None or (parent is not None and row.parent != parent):
            raise NotFound(f"there is no {rtype.name} '{id}'")
        return row

    async def get(self, ctx: Context, rtype: ResourceType, id: str, params: QueryParams,
                  parent: str | None = None) -> Result:
        row = await self.load(ctx, rtype, id, parent)
        if not params.select and not params.expand:
            return Result(200, rtype, headers={"ETag": etag(row)}, make_doc=lambda: self.present(rtype, row, ctx),
                          cache_key=(rtype.name, row.id, row.version, ctx.base, ctx.role, ctx.user))
        return Result(200, rtype, await self.render(rtype, row, ctx, params), headers={"ETag": etag(row)})

    async def render(self, rtype: ResourceType, row: Row, ctx: Context, params: QueryParams) -> dict:
        doc = self.present(rtype, row, ctx)
        if params.expand:
            await self._expand(rtype, doc, ctx, params.expand)
        return select_attributes(doc, rtype, params.select)

    async def _expand(self, rtype: ResourceType, doc: dict, ctx: Context, names: set[str]) -> None:
        for attr in rtype.attributes:
            if attr.type != "ref" or ("*" not in names and attr.name not in names):
                continue
            ref = doc.get(attr.name)
            if not isinstance(ref, dict) or "href" not in ref:
                continue
            try:
                collection, id = split_href(ref["href"])
            except BadRequest:
                continue
            target = collection_type(collection)
            row = await self.store.get(target.name, id, scope=ctx.scope) if target else None
            if row is not None:
                inner = present(target, row, ctx)
                inner.pop("resourceURI", None)
                doc[attr.name] = {"href": ref["href"], **{k: v for k, v in inner.items() if k != "id"}}

    async def query(self, ctx: Context, rtype: ResourceType, params: QueryParams, parent: str = "") -> Result:
        """A collection, or with `parent` the sub-collection of that resource."""
        href = ctx.base + (path_of(rtype, "", parent).rstrip("/") if parent else rtype.collection)
        return await self._listed(ctx, rtype, params, href, parent=parent)

    async def query_targeting(self, ctx: Context, rtype: ResourceType, params: QueryParams, target: str) -> Result:
        """The `rtype` resources whose targetResource is `target` (a relative path such as machines/abc):
        the TARGETING collection at {target}/{collection}, read-only (they are made at their own
        collection)."""
        result = await self._listed(ctx, rtype, params, f"{ctx.base}{target}/{rtype.collection}",
                                    refers=("targetResource", target))
        result.doc.pop("operations", None)
        return result

    async def _listed(self, ctx: Context, rtype: ResourceType, params: QueryParams, href: str, *, parent: str = "",
                      refers: tuple[str, str] | None = None) -> Result:
        try:
            count, rows = await self.store.page(rtype.name, parent, rtype.columns, scope=ctx.scope,
                                                filters=params.filters, orderby=params.orderby, first=params.first,
                                                last=params.last, refers=refers)
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        items = []
        for row in rows:
            item = await self.render(rtype, row, ctx, QueryParams(expand=params.expand))
            if params.select:
                item = select_attributes(item, rtype, params.select - {"id", "count", "operations"} or None)
            items.append(item)
        return self.collection(ctx, rtype, href, count, items)

    def collection(self, ctx: Context, rtype: ResourceType, href: str, count: int, items: list[dict]) -> Result:
        doc = {"resourceURI": rtype.collection_uri, "id": href, "count": count}
        if items:
            doc[rtype.items] = items
        if ctx.may_write and rtype.creatable:
            doc["operations"] = [{"rel": "add", "href": href}]
        return Result(200, rtype, doc, item_type=rtype)

    async def extension(self, ctx: Context, rtype: ResourceType, id: str, extension: Extension,
                        query: dict[str, str]) -> Result:
        raise NotImplementedByProvider(f"{rtype.name} does not offer '{extension.uri}' here")

    async def entry_point_extension(self, ctx: Context, extension: Extension, params: QueryParams,
                                    last_event_id: str | None) -> Result:
        """GET /cimi/{extension} of an extension the family declares on the CloudEntryPoint."""
        raise NotImplementedByProvider(f"'{extension.uri}' is not offered here")

    # ---------------------------------------------------------------- write

    @staticmethod
    def require_writer(ctx: Context) -> None:
        if not ctx.may_write:
            raise Forbidden(f"user '{ctx.user}' may read but not change resources")

    async def create(self, ctx: Context, rtype: ResourceType, body: dict, parent: str = "") -> Result:
        """POST to a collection. A type with a create wrapper is made from its template (by value or by
        reference with overrides); any other is the posted document itself."""
        if rtype.create_wrapper:
            wrapper = TYPES[rtype.create_wrapper]
            request = validate(wrapper, body, creating=True)
            require(wrapper, request)
            await self.at_once(ctx, rtype, "create", None)
            async with self.store.write() as tx:
                template = await self.references.resolve(tx, wrapper.attribute(rtype.template_attribute),
                                                         request[rtype.template_attribute], ctx.scope)
                attrs = {k: v for k, v in template.items() if k not in ("created", "updated", "_href")}
                attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
                return await self.insert(tx, ctx, rtype, attrs, parent)
        attrs = validate(rtype, body, creating=True)
        require(rtype, attrs)
        await self.at_once(ctx, rtype, "create", None)
        async with self.store.write() as tx:
            await self.references.check(tx, rtype, attrs, ctx.scope)
            return await self.insert(tx, ctx, rtype, attrs, parent)

    async def insert(self, tx: Transaction, ctx: Context, rtype: ResourceType, attrs: dict,
                     parent: str = "", internal: dict | None = None) -> Result:
        """Store a new resource made at once (201), with the finished Job that records it."""
        stamp = now()
        row = Row(rtype.name, new_id(), parent, {**attrs, "created": stamp, "updated": stamp}, internal,
                  **self.ownership(ctx, rtype))
        await tx.insert(row)
        tx.emit(model_changed(rtype, row, "created", ctx.user))
        path = path_of(rtype, row.id, parent)
        job = job_row(action="add", target=path.rsplit("/", 1)[0], affected=[path], state="SUCCESS",
                      message=f"{rtype.name} created", owner=ctx.user)
        await tx.insert(job)
        return Result(201, rtype, self.present(rtype, row, ctx),
                      headers={"Location": ctx.base + path, "CIMI-Job-URI": ctx.base + f"jobs/{job.id}",
                               "ETag": etag(row)})

    @staticmethod
    def ownership(ctx: Context, rtype: ResourceType) -> dict:
        """Who a new resource belongs to: its maker; an admin's catalogue entries are public."""
        return {"owner": ctx.user, "public": rtype.shareable and ctx.role == "admin"}

    async def changeable(self, tx: Transaction, ctx: Context, rtype: ResourceType, id: str,
                         parent: str | None = None) -> Row:
        """The row this caller is about to change: 404 if it cannot see it, 403 if it may only see it."""
        row = await tx.get(rtype.name, id, ctx.scope)
        if row is None or (parent is not None and row.parent != parent):
            raise NotFound(f"there is no {rtype.name} '{id}'")
        if not ctx.may_change(row):
            raise Forbidden(f"{rtype.name} '{id}' belongs to the provider; '{ctx.user}' may use it, not change it")
        return row

    async def update(self, ctx: Context, rtype: ResourceType, id: str, body: dict, select: set[str] | None,
                     if_match: str | None) -> Result:
        if select and "*" not in select:
            extra = set(body) - select - {"resourceURI", "id"}
            if extra:
                raise BadRequest(f"attributes not named in $select: {', '.join(sorted(extra))}")
        changes = validate(rtype, body, creating=False)
        async with self.store.write() as tx:
            row = await self.changeable(tx, ctx, rtype, id)
            check_if_match(row, if_match)
            if row.state in rtype.transitional_states:
                raise Conflict(f"{rtype.name} '{id}' is {row.state}; wait for its Job to finish")
            writable = [a.name for a in rtype.attributes if a.writable]
            names = [n for n in writable if not select or "*" in select or n in select]
            await self.references.check(tx, rtype, changes, ctx.scope)
            for name in names:  # an attribute left out of a full (or $select-ed) update is removed
                if name in changes:
                    row.attrs[name] = changes[name]
                elif not rtype.attribute(name).write_only:  # a consumer cannot echo back what it never saw
                    row.attrs.pop(name, None)
            require(rtype, row.attrs)
            row.attrs["updated"] = now()
            await tx.update(row)
            tx.emit(model_changed(rtype, row, "changed", ctx.user))
            path = path_of(rtype, row.id, row.parent)
            job = job_row(action="edit", target=path, affected=[path], state="SUCCESS",
                          message=f"{rtype.name} updated", owner=ctx.user)
            await tx.insert(job)
        return Result(200, rtype, self.present(rtype, row, ctx),
                      headers={"CIMI-Job-URI": ctx.base + f"jobs/{job.id}", "ETag": etag(row)})

    async def delete(self, ctx: Context, rtype: ResourceType, id: str, if_match: str | None,
                     parent: str | None = None) -> Result:
        await self.at_once(ctx, rtype, "delete", id)
        async with self.store.write() as tx:
            row = await self.changeable(tx, ctx, rtype, id, parent)
            check_if_match(row, if_match)
            if rtype.finished_states and row.state not in rtype.finished_states:
                raise Conflict(f"{rtype.name} '{id}' is {row.state}; stop it first, or wait for it to finish")
            await self.before_delete(tx, rtype, row)
            await tx.delete(rtype.name, id)
            tx.emit(model_changed(rtype, row, "deleted", ctx.user))
            await self.after_delete(tx, rtype, row)
            job = job_row(action="delete", target=path_of(rtype, row.id, row.parent), affected=[],
                          state="SUCCESS", message=f"{rtype.name} deleted", owner=ctx.user)
            await tx.insert(job)
        return job_result(ctx, job, 200)

    async def at_once(self, ctx: Context, rtype: ResourceType, kind: str, id: str | None) -> None:
        """Before an operation done at once (no host Job): the hooks may fail it (nothing is changed)."""
        for hook in self.parts.at_once_hooks:
            await hook(ctx, rtype, kind, id)

    async def before_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        """Refuse (raise) a deletion this row does not allow."""

    async def after_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        """Remove what the host kept for the row, inside the transaction (a failure rolls it back)."""

    # ------------------------------------------------- taking part in a Machine's create (Family.machine_template_parts)

    async def plan_for_machine(self, tx: Transaction, ctx: Context, machine_id: str, template: dict,
                               spec: MachineSpec) -> bool:
        """Check and record, before any work, what the new machine's template asks of this family (400/409
        on bad input, nothing written); add to `spec` what the compute driver must know. True: the
        machine's Job must call realise_for_machine and settle_for_machine."""
        return False

    async def realise_for_machine(self, machine_id: str) -> None:
        """In the new machine's Job, after its domain is defined and before it first starts."""

    async def settle_for_machine(self, tx: Transaction, machine_id: str, succeeded: bool, owner: str) -> None:
        """The new machine's Job ended (or was stopped): keep what was planned, or remove all of it."""

    async def machine_deleted(self, tx: Transaction, machine_id: str, owner: str) -> None:
        """The machine is gone (its sub-collections went with it): release what this family held for it."""

    async def action(self, ctx: Context, rtype: ResourceType, id: str, operation: str, root: str | None,
                     body: dict, if_match: str | None) -> Result:
        """POST {resource}/{operation}: an Action document (an empty body asks for the operation the URL
        names)."""
        if root not in (None, ActionRequest.name):
            raise BadRequest(f"an operation takes an Action document, not a {root}")
        request = validate(ActionRequest, body or {"action": operation}, creating=True)
        require(ActionRequest, request)
        name = re.split(r"[/:#]", request["action"].strip().rstrip("/"))[-1]  # lenient: by its last segment
        if name != operation:
            raise BadRequest(f"the Action document asks for '{name}' but was sent to the '{operation}' operation")
        if name not in rtype.actions:
            if name in STANDARD_ACTIONS:
                raise NotImplementedByProvider(f"{rtype.name} does not support '{ACTION_BASE}{name}' here")
            raise NotFound(f"{rtype.name} has no operation '{name}'")
        action = rtype.actions[name]
        if action.admin_only and ctx.role != "admin":
            raise Forbidden(f"only an admin may {name} a {rtype.name}")
        if name in ("publish", "unpublish"):
            return await self.publish(ctx, rtype, id, name == "publish", if_match)
        return await self.act(ctx, rtype, id, action, request, if_match)

    async def publish(self, ctx: Context, rtype: ResourceType, id: str, public: bool, if_match: str | None) -> Result:
        """Show a catalogue entry to every consumer, or only to its maker again (admins and readers see
        everything anyway). Done at once: 200 with the finished Job."""
        async with self.store.write() as tx:
            row = await self.changeable(tx, ctx, rtype, id)
            check_if_match(row, if_match)
            row.public = public
            await tx.update(row)
            tx.emit(model_changed(rtype, row, "changed", ctx.user, f"{rtype.name} {'public' if public else 'private'}"))
            path = path_of(rtype, row.id, row.parent)
            job = job_row(action=rtype.actions["publish" if public else "unpublish"].uri, target=path,
                          affected=[path], state="SUCCESS", owner=ctx.user,
                          message=f"{rtype.name} {'public' if public else 'private'}")
            await tx.insert(job)
        return job_result(ctx, job, 200)

    async def act(self, ctx: Context, rtype: ResourceType, id: str, action: Action, request: dict,
                  if_match: str | None) -> Result:
        raise NotImplementedByProvider(f"{rtype.name} does not support '{action.uri}' here")
