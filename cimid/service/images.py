"""MachineImages. On a driver that keeps real image data an import is a Job (download, checksum,
inspection); elsewhere (the sandbox) an image is a catalogue entry. An image whose location is a resource
that can be captured (a Machine) is made by capturing it. Deleting an image is refused while a Machine's
disk is built on it."""

from __future__ import annotations

import logging

from ..errors import BadRequest, Conflict, DriverError, Unavailable
from ..model import ResourceType, collection_type
from ..model.images import MachineImage
from ..model.validate import require, validate
from ..store.db import Row, Transaction
from .events import model_changed, state_changed
from .hrefs import new_id, now, split_href
from .present import Context, Result
from .resources import ResourceService
from .runner import JobKind, job_result

log = logging.getLogger("cimid.images")
PROGRESS_STEP = 5  # percent between two progress writes
IMPORT = "image"  # the Job kind


class Images(ResourceService):
    def __init__(self, family, parts):
        super().__init__(family, parts)
        self.driver = self.drivers.images
        self.jobs.register(IMPORT, JobKind(self.run_step, self.observe, self.finish, self.abandon))

    @property
    def imports(self) -> bool:
        return self.driver is not None and self.driver.imports_images

    async def start(self) -> None:
        if self.imports:
            try:
                await self.drivers.open("images")
            except DriverError as exc:
                log.warning("image imports wait for the image store: %s", exc)
                return
            await self.jobs.recover(IMPORT)

    async def create(self, ctx: Context, rtype: ResourceType, body: dict, parent: str = "") -> Result:
        attrs = validate(rtype, body, creating=True)
        require(rtype, attrs)
        source = self._capturable(attrs["imageLocation"])
        if source is not None:  # DSP0263: an image whose location is a Machine captures it
            source_type, id = source
            action = source_type.actions["snapshot" if attrs.get("type") == "SNAPSHOT" else "capture"]
            extra = {k: v for k, v in attrs.items() if k in ("name", "description", "properties")}
            return await self.parts.service_of(source_type).act(ctx, source_type, id, action,
                                                                 {"imageAttributes": extra}, None)
        attrs.setdefault("type", "IMAGE")
        if self.imports:
            return await self._import(ctx, rtype, attrs)
        async with self.store.write() as tx:
            await self.references.check(tx, rtype, attrs, ctx.scope)
            return await self.insert(tx, ctx, rtype, {**attrs, "state": "AVAILABLE"})

    def _capturable(self, location: str) -> tuple[ResourceType, str] | None:
        """(type, id) when `location` names a served resource of this provider that can be captured."""
        try:
            collection, id = split_href(location)
        except BadRequest:
            return None
        if "://" in location and "/cimi/" not in location:
            return None  # somewhere else on the web
        source = collection_type(collection)
        if source is None or "capture" not in source.actions or self.parts.service_of(source) is None:
            return None
        return source, id

    async def _import(self, ctx: Context, rtype: ResourceType, attrs: dict) -> Result:
        try:
            await self.drivers.open("images")
        except DriverError as exc:
            raise Unavailable(f"the image store is not available: {exc}") from None
        stamp = now()
        async with self.store.write() as tx:
            await self.references.check(tx, rtype, attrs, ctx.scope)
            image = Row(rtype.name, new_id(), "", {**attrs, "created": stamp, "updated": stamp,
                                                   "state": "CREATING"}, **self.ownership(ctx, rtype))
            await tx.insert(image)
            tx.emit(model_changed(rtype, image, "created", ctx.user))
            path = f"{rtype.collection}/{image.id}"
            job = await self.jobs.queue(tx, IMPORT, action="add", target=rtype.collection, affected=[path],
                                        steps=[{"op": "import"}], success="MachineImage imported", owner=ctx.user,
                                        image=image.id)
        return job_result(ctx, job, 202, location=path)

    # ---------------------------------------------------------------- the import Job

    async def run_step(self, job: Row, step: dict):
        image = await self.store.get(MachineImage.name, job.internal["image"])
        reported = [0]

        async def progress(percent: int) -> None:
            if percent - reported[0] >= PROGRESS_STEP:
                reported[0] = percent
                await self.jobs.report_progress(job.id, percent)

        checksum = (image.attrs.get("properties") or {}).get("checksum")
        return await self.driver.import_image(image.id, image.attrs["imageLocation"], checksum, progress)

    async def observe(self, job: Row):
        return None

    async def finish(self, tx: Transaction, job: Row, outcome: str, message: str, observed) -> None:
        if outcome == "STEP":
            return
        image = await tx.get(MachineImage.name, job.internal["image"])
        if image is None:
            return
        if outcome == "SUCCESS":
            image.attrs["state"] = "AVAILABLE"
            await tx.update(image)
            tx.emit(state_changed(MachineImage, image, "CREATING", message, job.owner))
        else:  # nothing half-made stays behind: the Job keeps the reason
            await tx.delete(image.kind, image.id)
            tx.emit(model_changed(MachineImage, image, "deleted", job.owner, f"MachineImage not imported: {message}"))
            await self.driver.delete_image(image.id)

    async def abandon(self, tx: Transaction, job: Row) -> None:
        await self.finish(tx, job, "STOPPED", "stopped before it began", None)

    # ---------------------------------------------------------------- delete

    async def before_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        if row.state == "CREATING":
            raise Conflict(f"MachineImage '{row.id}' is still being made; wait for its Job")
        users = await tx.count_referring("image", f"{rtype.collection}/{row.id}")
        if users:
            raise Conflict(f"MachineImage '{row.id}' is the base of {users} disk(s); delete the resources "
                           "that stand on it first")

    async def after_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        if self.driver is not None:
            await self.driver.delete_image(row.id)
