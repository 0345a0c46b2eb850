"""Jobs as resources: read, deleted once finished, stopped through their kind's own callback, and
forgotten after the retention time."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from ..model import Action, ResourceType
from ..model.jobs import JOB_STATES
from ..store import jobs as job_queries
from ..store.db import Row
from .metrics import MetricFamily
from .present import Context, Result
from .resources import ResourceService
from .runner import job_result, present_job

log = logging.getLogger("cimid.jobs")


class Jobs(ResourceService):
    _retention: asyncio.Task | None = None

    async def start(self) -> None:
        await self.purge()
        self._retention = asyncio.get_running_loop().create_task(self._retention_loop())

    async def stop(self) -> None:
        if self._retention:
            self._retention.cancel()

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        return {"JobRetention": self.config["jobs"]["retention_minutes"]}

    def present(self, rtype: ResourceType, row: Row, ctx: Context) -> dict:
        return present_job(row, ctx)

    async def metric_families(self) -> list[MetricFamily]:
        counts = await job_queries.count_by_state(self.store)
        family = MetricFamily("cimid_jobs", "gauge", "Jobs kept, by state (finished ones until jobs.retention_minutes)")
        family.samples = [(family.name, {"state": state}, counts.get(state, 0)) for state in JOB_STATES]
        return [family]

    async def act(self, ctx: Context, rtype: ResourceType, id: str, action: Action, request: dict,
                  if_match: str | None) -> Result:
        job = await self.jobs.stop(id, if_match, ctx)
        return job_result(ctx, job, 202, location=f"jobs/{id}")

    async def purge(self) -> None:
        minutes = self.config["jobs"]["retention_minutes"]
        cutoff = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)).strftime(
            "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        await job_queries.purge_finished(self.store, cutoff)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.purge()
            except Exception:  # keep purging later; one bad minute must not end retention
                log.exception("job retention failed")
