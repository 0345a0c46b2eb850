"""MachineImages on a driver that keeps real image data: import as a Job (download, checksum, inspection),
deletion refused while a Machine's disk is built on the image."""

from __future__ import annotations

import logging

from ..errors import Conflict
from ..model import TYPES
from ..store.db import Row, Transaction
from .jobs import INTERRUPTED, job_row, set_job_state
from .presentation import Context, Result, new_id, now, present

log = logging.getLogger("cimid.images")
PROGRESS_STEP = 5  # percent between two progress writes


class Images:
    def __init__(self, provider):
        self.provider = provider
        self.store = provider.store
        self.driver = provider.drivers.compute
        provider.jobs.register("image", self.run_step, self.observe, self.finish)

    async def create(self, ctx: Context, attrs: dict):
        await self.provider.machines.ensure_driver()
        stamp = now()
        async with self.store.write() as tx:
            image = Row("MachineImage", new_id(), "", {**attrs, "created": stamp, "updated": stamp,
                                                       "state": "CREATING"})
            await tx.insert(image)
            path = f"machineImages/{image.id}"
            job = job_row(action="add", target="machineImages", affected=[path], state="QUEUED",
                          internal={"kind": "image", "image": image.id, "steps": [{"op": "import"}],
                                    "success_message": "MachineImage imported", "stoppable": True})
            await tx.insert(job)
            tx.after_commit.append(lambda: self.provider.jobs.submit(job.id))
        return Result(202, TYPES["Job"], present(TYPES["Job"], job, ctx),
                      headers={"Location": ctx.base + path, "CIMI-Job-URI": ctx.base + f"jobs/{job.id}"})

    async def run_step(self, job: Row, step: dict):
        image = await self.store.get("MachineImage", job.internal["image"])
        reported = [0]

        async def progress(percent: int) -> None:
            if percent - reported[0] >= PROGRESS_STEP:
                reported[0] = percent
                await self.provider.jobs.report_progress(job.id, percent)

        checksum = (image.attrs.get("properties") or {}).get("checksum")
        return await self.driver.import_image(image.id, image.attrs["imageLocation"], checksum, progress)

    async def observe(self, job: Row):
        return None

    async def finish(self, tx: Transaction, job: Row, outcome: str, message: str, observed) -> None:
        if outcome == "STEP":
            return
        image = await tx.get("MachineImage", job.internal["image"])
        if image is None:
            return
        if outcome == "SUCCESS":
            image.attrs["state"] = "AVAILABLE"
            await tx.update(image)
        else:  # nothing half-made stays behind: the Job keeps the reason
            await tx.delete("MachineImage", image.id)
            await self.driver.delete_image(image.id)

    async def check_unused(self, tx: Transaction, image_id: str) -> None:
        users = await tx.conn.execute_fetchall(
            "SELECT count(*) FROM resources WHERE kind = 'Machine' AND json_extract(internal, '$.image') = ?",
            (f"machineImages/{image_id}",))
        if users[0][0]:
            raise Conflict(f"MachineImage '{image_id}' is the base of {users[0][0]} Machine disk(s); "
                           "delete those Machines first")

    async def recover(self) -> None:
        """After a restart: imports that never began run now; an interrupted one failed, and leaves nothing."""
        pending = await self.store.select("kind = 'Job' AND state IN ('QUEUED', 'RUNNING', 'STOPPING')"
                                          " AND json_extract(internal, '$.kind') = 'image'")
        for job in pending:
            if job.state == "QUEUED" and not job.internal.get("begun"):
                self.provider.jobs.submit(job.id)
                continue
            async with self.store.write() as tx:
                job = await tx.get("Job", job.id)
                await self.finish(tx, job, "FAILED", INTERRUPTED, None)
                set_job_state(job, "FAILED", INTERRUPTED)
                await tx.update(job)
