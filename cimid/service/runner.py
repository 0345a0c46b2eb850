"""The JobRunner: Jobs persisted before the response goes out, run in-process, reconciled after a restart.

A host Job is a list of steps (one driver call each). With more than one step, each step is a nested Job.
Stop is honoured for a Job still QUEUED, and for a running Job before its next step begins (the current
step finishes first); a driver call already under way is never interrupted, since the host would be
left in an unknown state. A Job in its last step cannot be stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import Conflict, DriverError, NotFound
from ..model import collection_type
from ..model.jobs import JOB_FINISHED, Job
from ..store import jobs as job_queries
from ..store.db import Row, Store, Transaction
from .events import Alarm
from .hrefs import new_id, now
from .present import Context, Result, check_if_match, operations, present

log = logging.getLogger("cimid.jobs")

INTERRUPTED = ("interrupted: cimid stopped while this Job was running; the state of its resource was "
               "re-read from the hypervisor")


def job_row(*, action: str, target: str, affected: list[str], state: str, owner: str, message: str = "",
            parent: str | None = None, internal: dict | None = None) -> Row:
    """target/affected are relative hrefs, e.g. 'machines/abc'."""
    stamp = now()
    attrs = {
        "name": action.rsplit("/", 1)[-1], "created": stamp, "updated": stamp, "state": state,
        "targetResource": {"href": target},
        "affectedResources": [{"href": h} for h in affected],
        "action": action,
        "progress": 100 if state in JOB_FINISHED else 0,
        "timeOfStatusChange": stamp,
    }
    if state == "SUCCESS":
        attrs["returnCode"] = 0
    if message:
        attrs["statusMessage"] = message
    if parent:
        attrs["parentJob"] = {"href": f"jobs/{parent}"}
    return Row(Job.name, new_id(), "", attrs, internal or {}, owner=owner)


def set_job_state(row: Row, state: str, message: str | None = None) -> None:
    row.attrs["state"] = state
    row.attrs["timeOfStatusChange"] = now()
    if state in JOB_FINISHED:
        row.attrs["progress"] = 100
        row.attrs["returnCode"] = 0 if state == "SUCCESS" else 1
        row.internal.pop("stoppable", None)
    if message is not None:
        row.attrs["statusMessage"] = message
    log.info("job %s %s %s by %s%s", row.id, row.attrs.get("action", ""), state, row.owner or "the provider",
             f": {message}" if message else "")


async def alarm_if_failed(tx: Transaction, job: Row) -> None:
    """A top-level Job that failed raises an alarm about the resource it worked on (the first it affects:
    the Machine of a machine Job, the image being imported)."""
    if job.state != "FAILED" or job.attrs.get("parentJob"):
        return
    affected = job.attrs.get("affectedResources") or [job.attrs["targetResource"]]
    path = affected[0]["href"]
    collection, _, id = path.partition("/")
    rtype = collection_type(collection)
    subject = await tx.get(rtype.name, id) if rtype and id else None
    tx.emit(Alarm(rtype.name if rtype else "Job", path, job.attrs.get("returnCode", 1),
                  f"{job.attrs.get('name')} failed: {job.attrs.get('statusMessage', '')} (jobs/{job.id})",
                  owner=job.owner, name=subject.attrs.get("name", "") if subject else "", initiator=job.owner))


async def end_nested(tx: Transaction, job: Row, state: str, message: str) -> None:
    """Give every nested Job of `job` that has not finished the parent's ending."""
    for step in job.internal.get("steps", ()):
        nested = await tx.get(Job.name, step["job"]) if step.get("job") else None
        if nested is not None and nested.state not in JOB_FINISHED:
            set_job_state(nested, state, message)
            await tx.update(nested)


def present_job(job: Row, ctx: Context) -> dict:
    # A running Job can be stopped only while its current step is not the last.
    return present(Job, job, ctx,
                   lambda href: operations(Job, job, ctx, href, lambda _: bool(job.internal.get("stoppable"))))


def job_result(ctx: Context, job: Row, status: int, location: str | None = None) -> Result:
    """An answer that is a Job: 200 for a change made at once, 202 for one that will run; `location` is
    the resource it works on."""
    headers = {"CIMI-Job-URI": ctx.base + f"jobs/{job.id}"}
    if location is not None:
        headers["Location"] = ctx.base + location
    return Result(status, Job, present_job(job, ctx), headers=headers)


@dataclass(frozen=True)
class JobKind:
    """How one family's Jobs run. Each callback gets the Job row; `step` is one entry of its steps."""

    # (job, step) -> what the step made (kept in the step as "result"), or None; raises DriverError.
    run_step: Callable[[Row, dict], Awaitable[object]]
    # What the host now says about the Job's target, read outside any transaction (driver calls are slow).
    observe: Callable[[Row], Awaitable[object]]
    # Settles the target inside the transaction that records the outcome: (tx, job, outcome, message,
    # observed); outcome "STEP" means a step begins (message: its transitional state). It may return a
    # different (outcome, message) when what it found contradicts the steps' (a machine the host lost).
    finish: Callable[[Transaction, Row, str, str, object], Awaitable[tuple[str, str] | None]]
    # The Job was stopped while QUEUED: nothing reached the host, so undo only what the request recorded.
    abandon: Callable[[Transaction, Row], Awaitable[None]]
    # Whether the host itself durably keeps what the Job's steps did, so that its last commit need not reach
    # the disk before the Event says so: after a power cut the Job is found unfinished, and finish (given
    # INTERRUPTED and what observe read) settles it from the host, SUCCESS again where the host says so.
    outcome_kept_by_host: Callable[[Row], bool] = lambda _job: False


class JobRunner:
    def __init__(self, store: Store, max_concurrent: int):
        self.store = store
        self.slots = asyncio.Semaphore(max_concurrent)
        self.tasks: dict[str, asyncio.Task] = {}
        self.stop_requested: set[str] = set()
        self.kinds: dict[str, JobKind] = {}

    def register(self, name: str, kind: JobKind) -> None:
        self.kinds[name] = kind

    async def queue(self, tx: Transaction, kind: str, *, action: str, target: str, affected: list[str],
                    steps: list[dict], success: str, owner: str, begin: bool = False, **internal) -> Row:
        """Persist a QUEUED Job of `kind` (with a nested Job per step when there are several); it runs once
        the transaction commits. `internal` is kept for the kind's callbacks. begin=True stores it RUNNING
        with its first step begun instead, as its own first commit would: a quick Job (a hot-plug) saves
        that commit, and a crash before its driver call fails it at the restart rather than running it."""
        job = job_row(action=action, target=target, affected=affected, state="QUEUED", owner=owner,
                      internal={"kind": kind, "steps": steps, "success_message": success, "stoppable": True,
                                **internal})
        if len(steps) > 1:
            job.attrs["nestedJobs"] = []
            for step in steps:
                nested = job_row(action=step["op"], target=affected[0], affected=affected[:1], state="QUEUED",
                                 parent=job.id, owner=owner)
                await tx.insert(nested)
                step["job"] = nested.id
                job.attrs["nestedJobs"].append({"href": f"jobs/{nested.id}"})
        if begin:
            self._begin(job)
            await self._begin_step(tx, self.kinds[kind], job, 0)
        await tx.insert(job)
        # A begun Job is run from the row just committed (no read back); a queued one is read when its turn comes.
        tx.after_commit.append(lambda: self.submit(job.id, job if begin else None))
        if not begin:  # a begun one said RUNNING as it began
            log.info("job %s %s QUEUED (%s)", job.id, action, kind)
        return job

    def submit(self, job_id: str, begun: Row | None = None) -> None:
        """Run a persisted QUEUED Job in the background (call after the commit that stored it); `begun`: the
        row of a Job stored begun, as committed."""
        task = asyncio.get_running_loop().create_task(self._run(job_id, begun), name=f"job-{job_id}")
        self.tasks[job_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(job_id, None))

    async def report_progress(self, job_id: str, percent: int) -> None:
        async with self.store.write() as tx:
            job = await tx.get(Job.name, job_id)
            if job is not None and job.state == "RUNNING" and job.attrs.get("progress") != percent:
                job.attrs["progress"] = percent
                await tx.update(job)

    async def drain(self) -> None:
        """Wait for every running Job (tests and orderly shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks.values()), return_exceptions=True)

    async def shutdown(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self.tasks.values()), return_exceptions=True)

    async def _run(self, job_id: str, begun: Row | None = None) -> None:
        """Each commit is where a crash must find the Job: one as it begins (RUNNING, with its first step
        begun, before any driver call; for a Job queued with begin=True, the request's own commit), one
        between two steps (the one ended and the next begun), and one with the last step's outcome and the
        Job's. A Job killed before that last commit is begun and unfinished, so a restart fails it and
        settles its target from the host (recover); what its last step made (a step's `result`) is read
        only on SUCCESS, so nothing is lost by recording it then."""
        async with self.slots:
            job = begun or await self.store.get(Job.name, job_id)
            if job is not None and job.state == "QUEUED":
                async with self.store.write() as tx:
                    job = await tx.get(Job.name, job_id)
                    if job.state == "QUEUED":
                        self._begin(job)
                        await self._begin_step(tx, self.kinds[job.internal["kind"]], job, 0)
                        await tx.update(job)
            if job is None or job.state not in ("RUNNING", "STOPPING") or not job.internal.get("begun"):
                return  # stopped while it waited
            kind = self.kinds[job.internal["kind"]]
            steps = job.internal["steps"]
            outcome, message = "SUCCESS", job.internal.get("success_message", "done")
            index = 0
            while True:
                step = steps[index]
                result = None
                try:
                    result = await kind.run_step(job, step)
                except DriverError as exc:
                    outcome, message = "FAILED", str(exc)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a driver bug must fail the Job, not leave it RUNNING
                    log.exception("job %s: step %s raised", job_id, step.get("op"))
                    outcome, message = "FAILED", f"internal error in the driver: {exc}"
                step_ended = (outcome, message)  # a stop asked for now ends the Job, not this step
                if outcome != "SUCCESS" or index + 1 == len(steps):
                    break
                if job_id in self.stop_requested:
                    outcome, message = "STOPPED", f"stopped by request before step {index + 2} of {len(steps)}"
                    break
                async with self.store.write() as tx:
                    job = await tx.get(Job.name, job_id)
                    await self._end_step(tx, job, index, *step_ended, result)
                    index += 1
                    await self._begin_step(tx, kind, job, index)
                    await tx.update(job)
            self.stop_requested.discard(job_id)
            observed = await kind.observe(job)
            kept_by_host = outcome == "SUCCESS" and kind.outcome_kept_by_host(job)
            async with self.store.write(durable=not kept_by_host) as tx:
                job = await tx.get(Job.name, job_id)
                await self._end_step(tx, job, index, *step_ended, result)
                outcome, message = await kind.finish(tx, job, outcome, message, observed) or (outcome, message)
                await end_nested(tx, job, "STOPPED" if outcome == "STOPPED" else "FAILED", "not run: " + message)
                set_job_state(job, outcome, message)
                await tx.update(job)
                await alarm_if_failed(tx, job)

    # _begin, _begin_step and _end_step change `job` in memory; their caller updates it once, at the end of
    # its transaction.

    @staticmethod
    def _begin(job: Row) -> None:
        set_job_state(job, "RUNNING")
        job.internal["begun"] = True

    @staticmethod
    async def _begin_step(tx: Transaction, kind: JobKind, job: Row, index: int) -> None:
        steps = job.internal["steps"]
        step = steps[index]
        # A driver call is never interrupted, but a stop asked for now takes effect before the next step, so
        # it is accepted while a step other than the last runs (a single-step Job: never once RUNNING).
        job.internal["stoppable"] = index + 1 < len(steps)
        job.internal["step"] = index
        if step.get("job"):
            nested = await tx.get(Job.name, step["job"])
            set_job_state(nested, "RUNNING")
            await tx.update(nested)
        await kind.finish(tx, job, "STEP", step.get("transitional", ""), None)

    @staticmethod
    async def _end_step(tx: Transaction, job: Row, index: int, outcome: str, message: str, result: object) -> None:
        """Record how step `index` went: what it made (for the finisher, e.g. a captured image) and its
        nested Job's ending."""
        steps = job.internal["steps"]
        step = steps[index]
        if result is not None:
            step["result"] = result
        if step.get("job"):
            nested = await tx.get(Job.name, step["job"])
            set_job_state(nested, "SUCCESS" if outcome == "SUCCESS" else "FAILED",
                          f"step {index + 1} of {len(steps)} ({step['op']}) done" if outcome == "SUCCESS" else message)
            await tx.update(nested)
        job.attrs["progress"] = int(100 * (index + 1) / len(steps))

    async def stop(self, id: str, if_match: str | None, ctx: Context) -> Row:
        """A consumer's stop: at once for a QUEUED Job (its kind undoes what the request recorded), before
        the next step for a running one; refused where the current step is the last."""
        async with self.store.write() as tx:
            job = await tx.get(Job.name, id, ctx.scope)
            if job is None:
                raise NotFound(f"there is no Job '{id}'")
            check_if_match(job, if_match)
            if job.state in JOB_FINISHED or job.state == "STOPPING":
                raise Conflict(f"Job '{id}' is already {job.state}")
            if job.attrs.get("parentJob"):
                raise Conflict("stop the parent Job; nested Jobs follow it")
            if job.state == "QUEUED":
                set_job_state(job, "STOPPED", "stopped by request before it began")
                kind = self.kinds.get(job.internal.get("kind"))
                if kind is not None:
                    await kind.abandon(tx, job)
                await end_nested(tx, job, "STOPPED", "stopped by request before it began")
            elif job.internal.get("stoppable"):
                set_job_state(job, "STOPPING", "stop requested; the current step finishes first")
                self.stop_requested.add(id)
            else:
                raise Conflict(f"Job '{id}' is in a step that cannot be interrupted; it cannot be stopped now")
            await tx.update(job)
        return job

    async def recover(self, kind_name: str) -> list[Row]:
        """After a restart, for one kind: Jobs that never began run now (returned); interrupted ones fail,
        and their kind settles the target from what the host says now."""
        kind = self.kinds[kind_name]
        resumed = []
        for job in await job_queries.unfinished(self.store, kind_name):
            if job.state == "QUEUED" and not job.internal.get("begun"):
                resumed.append(job)
                self.submit(job.id)
                log.info("job %s resumed after restart", job.id)
                continue
            observed = await kind.observe(job)
            async with self.store.write() as tx:
                job = await tx.get(Job.name, job.id)
                await end_nested(tx, job, "FAILED", INTERRUPTED)
                # What the host says may settle it otherwise (a hot-plug libvirt finished: SUCCESS).
                settled = await kind.finish(tx, job, "FAILED", INTERRUPTED, observed)
                outcome, message = settled or ("FAILED", INTERRUPTED)
                set_job_state(job, outcome, message)
                await tx.update(job)
                await alarm_if_failed(tx, job)
        return resumed
