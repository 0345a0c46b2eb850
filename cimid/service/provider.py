"""The provider: create, read, query, update, delete and actions for every served type.

Catalogue resources (configurations, images, templates, credentials) only touch SQLite and answer at
once (201/200), each with a finished Job. Machines involve the host: they answer 202 with a QUEUED Job
that the JobRunner carries out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re

from ..config import Config
from ..errors import BadRequest, Conflict, Forbidden, MethodNotAllowed, NotFound, NotImplementedByProvider
from ..model import ACTION_BASE, BY_COLLECTION, TYPES, ResourceType
from ..model.resources import JOB_FINISHED, MACHINE_PARTS
from ..model.validate import require, validate
from ..plugins import Drivers
from ..store import query as q
from ..store.db import Row, Store, Transaction, column
from . import metadata
from .images import Images
from .jobs import JobRunner, end_nested, job_row, set_job_state
from .machines import Machines
from .presentation import (
    Context,
    QueryParams,
    Result,
    check_if_match,
    collection_type,
    etag,
    href_to_id,
    new_id,
    now,
    path_of,
    present,
    select_attributes,
    split_href,
)
from .seed import seed_catalogue

log = logging.getLogger("cimid.service")


class Provider:
    def __init__(self, config: Config, store: Store, drivers: Drivers):
        self.config = config
        self.store = store
        self.drivers = drivers
        self.jobs = JobRunner(store, config["jobs"]["max_concurrent"])
        self.machines = Machines(self)
        self.images = Images(self)
        self._retention_task: asyncio.Task | None = None

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        await self.store.open()
        if self.config["catalogue"]["seed"]:
            await seed_catalogue(self.store)
        if self.drivers.compute is not None:
            await self.machines.recover()
            if self.machines.ready:
                await self.images.recover()
        await self.purge_jobs()
        self._retention_task = asyncio.get_running_loop().create_task(self._retention_loop())

    async def stop(self) -> None:
        if self._retention_task:
            self._retention_task.cancel()
        try:
            await self.jobs.shutdown()
            if self.drivers.compute is not None:
                await self.drivers.compute.close()
        finally:
            await self.store.close()

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.purge_jobs()
            except Exception:  # keep purging later; one bad minute must not end retention
                log.exception("job retention failed")

    async def purge_jobs(self) -> None:
        minutes = self.config["jobs"]["retention_minutes"]
        cutoff = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        async with self.store.write() as tx:
            await tx.execute(
                "DELETE FROM resources WHERE kind = 'Job' AND state IN ('SUCCESS', 'FAILED', 'STOPPED')"
                " AND json_extract(doc, '$.timeOfStatusChange') < ?", (cutoff,))

    def served(self, rtype: ResourceType) -> bool:
        if rtype.name == "Machine" or rtype.owner == "Machine":
            return self.drivers.compute is not None
        return True

    def type_of(self, collection: str) -> ResourceType:
        rtype = collection_type(collection)
        if not self.served(rtype):
            raise NotFound(f"this provider has no collection '{collection}'")
        return rtype

    # ---------------------------------------------------------------- read

    async def load(self, rtype: ResourceType, id: str, parent: str | None = None) -> Row:
        """A resource to read, never to change (it may be shared with other readers)."""
        row = await self.store.get(rtype.name, id, shared=True)
        if row is None or (parent is not None and row.parent != parent):
            raise NotFound(f"there is no {rtype.name} '{id}'")
        return row

    async def get(self, ctx: Context, collection: str, id: str, params: QueryParams) -> Result:
        if collection == "resourceMetadata":
            doc = metadata.resource_metadata_by_id(self, ctx, id)
            return Result(200, TYPES["ResourceMetadata"], select_attributes(doc, TYPES["ResourceMetadata"],
                                                                           params.select))
        rtype = self.type_of(collection)
        row = await self.load(rtype, id)
        if not params.select and not params.expand:
            return Result(200, rtype, headers={"ETag": etag(row)}, make_doc=lambda: present(rtype, row, ctx),
                          cache_key=(rtype.name, row.id, row.version, ctx.base, ctx.role))
        doc = await self.render(rtype, row, ctx, params)
        return Result(200, rtype, doc, headers={"ETag": etag(row)})

    async def get_part(self, ctx: Context, machine_id: str, part: str, item_id: str, params: QueryParams) -> Result:
        """One item of a Machine's disks or snapshots."""
        rtype = self._part_type(part)
        await self.load(TYPES["Machine"], machine_id)
        row = await self.load(rtype, item_id, parent=machine_id)
        return Result(200, rtype, await self.render(rtype, row, ctx, params), headers={"ETag": etag(row)})

    def _part_type(self, part: str) -> ResourceType:
        rtype = MACHINE_PARTS.get(part)
        if rtype is None or not self.served(rtype):
            raise NotFound(f"a Machine has no '{part}'")
        return rtype

    async def render(self, rtype: ResourceType, row: Row, ctx: Context, params: QueryParams) -> dict:
        doc = present(rtype, row, ctx)
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
                coll, id = split_href(ref["href"])
                target = BY_COLLECTION[coll]
                row = await self.store.get(target.name, id)
            except (BadRequest, KeyError):
                continue
            if row is not None:
                inner = present(target, row, ctx)
                inner.pop("resourceURI", None)
                inner.pop("operations", None)
                doc[attr.name] = {"href": ref["href"], **{k: v for k, v in inner.items() if k != "id"}}

    async def query(self, ctx: Context, collection: str, params: QueryParams, parent: str = "") -> Result:
        """A collection, or with `parent` one of that Machine's disks or snapshots."""
        if collection == "resourceMetadata":
            return metadata.resource_metadata_collection(self, ctx, params)
        if parent:
            rtype = self._part_type(collection)
            await self.load(TYPES["Machine"], parent)
        else:
            rtype = self.type_of(collection)
        where, args = [], []
        resolve = self._resolver(rtype)
        try:
            for text in params.filters:
                sql, values = q.compile_filter(text, resolve)
                where.append(sql)
                args.extend(values)
            order = ", ".join(q.compile_orderby(text, resolve) for text in params.orderby if text.strip())
        except q.QueryError as exc:
            raise BadRequest(str(exc)) from None
        count, rows = await self.store.query(rtype.name, parent, " AND ".join(where), args, order,
                                             params.first, params.last)
        coll_href = ctx.base + (f"machines/{parent}/{rtype.collection}" if parent else rtype.collection)
        items = []
        for row in rows:
            item = await self.render(rtype, row, ctx, QueryParams(expand=params.expand))
            if params.select:
                item = select_attributes(item, rtype, params.select - {"id", "count", "operations"} or None)
            items.append(item)
        doc = {"resourceURI": rtype.collection_uri, "id": coll_href, "count": count}
        if items:
            doc[rtype.items] = items
        if ctx.may_write and rtype.creatable and not parent:
            doc["operations"] = [{"rel": "add", "href": coll_href}]
        return Result(200, rtype, doc, item_type=rtype)

    def _resolver(self, rtype: ResourceType):
        def resolve(name: str) -> q.Column | None:
            attr = rtype.attribute(name)
            if attr is None or attr.write_only or attr.type not in ("string", "URI", "integer", "boolean", "dateTime", "map"):
                return None
            if attr.type == "map" and name != "properties":
                return None
            return column(name, {"URI": "string"}.get(attr.type, attr.type))
        return resolve

    # ---------------------------------------------------------------- write

    def _writer(self, ctx: Context) -> None:
        if not ctx.may_write:
            raise Forbidden(f"user '{ctx.user}' may read but not change resources")

    async def create(self, ctx: Context, collection: str, root: str | None, body: dict) -> Result:
        self._writer(ctx)
        if collection == "resourceMetadata":
            raise MethodNotAllowed("ResourceMetadata is provided by cimid and cannot be created", ["GET"])
        rtype = self.type_of(collection)
        if not rtype.creatable:
            raise MethodNotAllowed(f"{rtype.name} resources cannot be created by consumers", ["GET"])
        expected = rtype.create_wrapper or rtype.name
        if root is not None and root not in (expected, rtype.name):
            raise BadRequest(f"POST to {collection} takes a {expected}, not a {root}")
        if rtype.name == "Machine":
            return await self.machines.create(ctx, body)
        if rtype.create_wrapper:  # Credential: from a CredentialTemplate, by value or by reference
            request = validate(TYPES[rtype.create_wrapper], body, creating=True)
            require(TYPES[rtype.create_wrapper], request)
            async with self.store.write() as tx:
                template = await self.resolve_ref(tx, TYPES[rtype.create_wrapper].attribute(
                    rtype.template_attribute), request[rtype.template_attribute])
                attrs = {k: v for k, v in template.items() if k not in ("created", "updated", "_href")}
                attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
                return await self._insert(tx, ctx, rtype, attrs)
        attrs = validate(rtype, body, creating=True)
        require(rtype, attrs)
        if rtype.name == "MachineImage":
            machine_id = self._machine_named(attrs["imageLocation"])
            if machine_id is not None:  # DSP0263: an image whose location is a Machine captures it
                action = "snapshot" if attrs.get("type") == "SNAPSHOT" else "capture"
                extra = {k: v for k, v in attrs.items() if k in ("name", "description", "properties")}
                return await self.machines.act(ctx, machine_id, TYPES["Machine"].actions[action],
                                               {"imageAttributes": extra}, None)
            if self.drivers.compute is not None and self.drivers.compute.imports_images:
                async with self.store.write() as tx:
                    await self._check_references(tx, rtype, attrs)
                return await self.images.create(ctx, {**attrs, "type": attrs.get("type", "IMAGE")})
        async with self.store.write() as tx:
            await self._check_references(tx, rtype, attrs)
            if rtype.name == "MachineImage":
                attrs.setdefault("type", "IMAGE")
                attrs["state"] = "AVAILABLE"
            return await self._insert(tx, ctx, rtype, attrs)

    def _machine_named(self, location: str) -> str | None:
        if self.drivers.compute is None or "/machines/" not in location and not location.startswith("machines/"):
            return None
        try:
            collection, id = split_href(location)
        except BadRequest:
            return None
        return id if collection == "machines" else None

    async def _insert(self, tx: Transaction, ctx: Context, rtype: ResourceType, attrs: dict) -> Result:
        stamp = now()
        row = Row(rtype.name, new_id(), "", {**attrs, "created": stamp, "updated": stamp})
        await tx.insert(row)
        path = path_of(rtype, row)
        job = job_row(action="add", target=rtype.collection, affected=[path], state="SUCCESS",
                      message=f"{rtype.name} created")
        await tx.insert(job)
        return Result(201, rtype, present(rtype, row, ctx),
                      headers={"Location": ctx.base + path, "CIMI-Job-URI": ctx.base + f"jobs/{job.id}",
                               "ETag": etag(row)})

    async def _check_references(self, tx: Transaction, rtype: ResourceType, attrs: dict) -> None:
        """Store references as relative hrefs, after checking that each names an existing resource."""
        for attr in rtype.attributes:
            value = attrs.get(attr.name)
            if attr.type != "ref" or not isinstance(value, dict):
                continue
            target = TYPES[attr.target]
            if "href" in value:
                id = href_to_id(value["href"], target, attr.name)
                if await tx.get(target.name, id) is None:
                    raise BadRequest(f"{attr.name}: '{value['href']}' does not name an existing {target.name}")
                overrides = {k: v for k, v in value.items() if k != "href"}
                if overrides:
                    raise BadRequest(f"{attr.name}: a stored {rtype.name} refers to a {target.name} by href "
                                     "alone; give overrides when creating from it")
                attrs[attr.name] = {"href": f"{target.collection}/{id}"}
            else:
                await self._check_references(tx, target, value)

    async def resolve_ref(self, tx: Transaction, attr, value: dict) -> dict:
        """A by-value or by-reference(+overrides) template attribute -> the attributes it stands for."""
        target = TYPES[attr.target]
        if "href" not in value:
            await self._check_references(tx, target, value)
            return dict(value)
        id = href_to_id(value["href"], target, attr.name)
        row = await tx.get(target.name, id)
        if row is None:
            raise BadRequest(f"{attr.name}: '{value['href']}' does not name an existing {target.name}")
        resolved = {k: v for k, v in row.attrs.items() if k not in ("state",)}
        resolved["_href"] = f"{target.collection}/{id}"
        for key, override in value.items():
            if key == "href":
                continue
            if override is None:
                resolved.pop(key, None)  # null / empty element erases the template's value
            else:
                resolved[key] = override
        require(target, resolved, attr.name)
        return resolved

    async def update(self, ctx: Context, collection: str, id: str, body: dict, select: set[str] | None,
                     if_match: str | None, root: str | None = None) -> Result:
        """`root`: the XML root element or the JSON resourceURI's type, None when the body names none."""
        self._writer(ctx)
        if collection == "resourceMetadata":
            raise MethodNotAllowed("ResourceMetadata is read-only", ["GET"])
        rtype = self.type_of(collection)
        if not rtype.editable:
            raise MethodNotAllowed(f"{rtype.name} resources cannot be updated", ["GET", "DELETE"])
        if root is not None and root != rtype.name:  # both dialects: a body of another type is refused
            raise BadRequest(f"PUT to {collection} takes a {rtype.name}, not a {root}")
        if select and "*" not in select:
            extra = set(body) - select - {"resourceURI", "id"}
            if extra:
                raise BadRequest(f"attributes not named in $select: {', '.join(sorted(extra))}")
        changes = validate(rtype, body, creating=False)
        async with self.store.write() as tx:
            row = await tx.get(rtype.name, id)
            if row is None:
                raise NotFound(f"there is no {rtype.name} '{id}'")
            check_if_match(row, if_match)
            if row.state in rtype.transitional_states:
                raise Conflict(f"{rtype.name} '{id}' is {row.state}; wait for its Job to finish")
            writable = [a.name for a in rtype.attributes if a.writable]
            names = [n for n in writable if not select or "*" in select or n in select]
            await self._check_references(tx, rtype, changes)
            for name in names:  # an attribute left out of a full (or $select-ed) update is removed
                if name in changes:
                    row.attrs[name] = changes[name]
                elif not rtype.attribute(name).write_only:  # a consumer cannot echo back what it never saw
                    row.attrs.pop(name, None)
            require(rtype, row.attrs)
            row.attrs["updated"] = now()
            await tx.update(row)
            path = path_of(rtype, row)
            job = job_row(action="edit", target=path, affected=[path], state="SUCCESS",
                          message=f"{rtype.name} updated")
            await tx.insert(job)
        return Result(200, rtype, present(rtype, row, ctx),
                      headers={"CIMI-Job-URI": ctx.base + f"jobs/{job.id}", "ETag": etag(row)})

    async def delete(self, ctx: Context, collection: str, id: str, if_match: str | None) -> Result:
        self._writer(ctx)
        if collection == "resourceMetadata":
            raise MethodNotAllowed("ResourceMetadata is read-only", ["GET"])
        rtype = self.type_of(collection)
        if rtype.name == "Machine":
            return await self.machines.delete(ctx, id, if_match)
        async with self.store.write() as tx:
            row = await tx.get(rtype.name, id)
            if row is None:
                raise NotFound(f"there is no {rtype.name} '{id}'")
            check_if_match(row, if_match)
            if rtype.name == "Job" and row.state not in JOB_FINISHED:
                raise Conflict(f"Job '{id}' is {row.state}; stop it first, or wait for it to finish")
            if rtype.name == "MachineImage":
                if row.state == "CREATING":
                    raise Conflict(f"MachineImage '{id}' is still being made; wait for its Job")
                await self.images.check_unused(tx, id)
            await tx.delete(rtype.name, id)
            if rtype.name == "MachineImage" and self.drivers.compute is not None:
                await self.drivers.compute.delete_image(id)
            path = path_of(rtype, row)
            job = job_row(action="delete", target=path, affected=[], state="SUCCESS",
                          message=f"{rtype.name} deleted")
            await tx.insert(job)
        return Result(200, TYPES["Job"], present(TYPES["Job"], job, ctx),
                      headers={"CIMI-Job-URI": ctx.base + f"jobs/{job.id}"})

    async def action(self, ctx: Context, collection: str, id: str, operation: str, body: dict,
                     if_match: str | None, root: str | None = None) -> Result:
        self._writer(ctx)
        rtype = self.type_of(collection)
        if root == "MachineImage" and rtype.name == "Machine" and operation in ("capture", "snapshot"):
            # capture and snapshot also take the new image's representation (name, description, properties)
            attrs = validate(TYPES["MachineImage"], body, creating=True)
            extra = {k: v for k, v in attrs.items() if k in ("name", "description", "properties")}
            return await self.machines.act(ctx, id, rtype.actions[operation], {"imageAttributes": extra},
                                           if_match)
        request = validate(TYPES["Action"], body, creating=True)
        require(TYPES["Action"], request)
        name = re.split(r"[/:#]", request["action"].strip().rstrip("/"))[-1]  # lenient: by its last segment
        if name != operation:
            raise BadRequest(f"the Action document asks for '{name}' but was sent to the '{operation}' operation")
        if name not in rtype.actions:
            known = ("capture", "snapshot", "restore", "start", "stop", "restart", "pause", "suspend")
            if name in known:
                raise NotImplementedByProvider(f"{rtype.name} does not support '{ACTION_BASE}{name}' here")
            raise NotFound(f"{rtype.name} has no operation '{name}'")
        if rtype.name == "Job":
            return await self.stop_job(ctx, id, if_match)
        return await self.machines.act(ctx, id, rtype.actions[name], request, if_match)

    async def stop_job(self, ctx: Context, id: str, if_match: str | None) -> Result:
        async with self.store.write() as tx:
            job = await tx.get("Job", id)
            if job is None:
                raise NotFound(f"there is no Job '{id}'")
            check_if_match(job, if_match)
            if job.state in JOB_FINISHED or job.state == "STOPPING":
                raise Conflict(f"Job '{id}' is already {job.state}")
            if job.attrs.get("parentJob"):
                raise Conflict("stop the parent Job; nested Jobs follow it")
            if job.state == "QUEUED":
                kind = job.internal.get("kind")
                set_job_state(job, "STOPPED", "stopped by request before it began")
                if kind == "machine":
                    await self.machines.settle_unstarted(tx, job)
                elif kind == "image":  # nothing was downloaded: the image goes
                    await self.images.finish(tx, job, "STOPPED", "stopped before it began", None)
                await end_nested(tx, job, "STOPPED", "stopped by request before it began")
            elif job.internal.get("stoppable"):
                set_job_state(job, "STOPPING", "stop requested; the current step finishes first")
                self.jobs.stop_requested.add(id)
            else:
                raise Conflict(f"Job '{id}' is in a step that cannot be interrupted; it cannot be stopped now")
            await tx.update(job)
        return Result(202, TYPES["Job"], present(TYPES["Job"], job, ctx),
                      headers={"CIMI-Job-URI": ctx.base + f"jobs/{id}", "Location": ctx.base + f"jobs/{id}"})
