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
from . import hrefs
from .hrefs import stamp
from .metrics import MetricFamily
from .present import Context, Result
from .resources import ResourceService
from .runner import job_result, present_job
from .sweeps import start_sweep

log = logging.getLogger("cimid.jobs")


class Jobs(ResourceService):
    _retention: asyncio.Task | None = None

    async def start(self) -> None:
        self._retention = await start_sweep("job retention", self.purge)

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
        cutoff = stamp(hrefs.clock() - dt.timedelta(minutes=minutes))  # the test API's clock, if fixed
        await job_queries.purge_finished(self.store, cutoff)
