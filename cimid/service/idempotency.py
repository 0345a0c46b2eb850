"""Idempotent POSTs: a request carrying an Idempotency-Key runs once per consumer and key; a retry gets the
first answer again instead of a second resource.

- The key is reserved in the store, in a transaction of its own, before the request runs; a retry while
  the first still runs gets 409, and the same key with another request (method, path or body) 422.
- The top-level Job the request makes is recorded beside the key in the same transaction as the change
  itself (`store.db.insert_recorder`), so if cimid dies before the answer is stored, a retry after the
  restart still finds what was made: it gets an answer rebuilt from that Job (same status, Location and
  CIMI-Job-URI; the body is the Job as it is now). A reservation with no Job made nothing, and its retry
  runs the request.
- The answer (status, the headers that matter, the body) is stored once the request ends. A 5xx is not
  kept (unless a Job was made), so the retry runs again; a 4xx is the answer to that request, and is kept.
- Keys are forgotten `server.idempotency_minutes` after they were first used.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import Conflict, UnprocessableContent
from ..model.jobs import JOB_FINISHED, Job
from ..store import idempotency as keys
from ..store.db import Row, Store, Transaction, insert_recorder
from .hrefs import now
from .present import Context, Result
from .runner import job_result
from .sweeps import start_sweep

log = logging.getLogger("cimid.idempotency")


@dataclass(frozen=True)
class StoredAnswer:
    """The first answer, as it was sent."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Claim:
    """A key reserved for one request that is running now."""

    consumer: str
    key: str
    recorded: bool = False  # a Job the request made is committed beside the key
    closed: bool = False  # the request ended: Jobs it started record nothing more


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class IdempotentRequests:
    def __init__(self, store: Store, minutes: int):
        self.store, self.minutes = store, minutes
        self._running: set[tuple[str, str]] = set()  # (consumer, key) of requests under way in this process
        self._retention: asyncio.Task | None = None

    async def start(self) -> None:
        self._retention = await start_sweep("idempotency key retention", self.purge)

    async def stop(self) -> None:
        if self._retention:
            self._retention.cancel()

    def _cutoff(self) -> str:
        return _stamp(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=self.minutes))

    async def begin(self, ctx: Context, key: str, fingerprint: str) -> Claim | StoredAnswer | Result:
        """A Claim to run the request under `key`, or the answer a retry gets (a StoredAnswer, or a Result
        rebuilt from the Job the first request made before cimid stopped)."""
        ident = (ctx.user, key)
        if ident in self._running:  # checked and taken with no await between: one runner per key
            entry = await keys.get(self.store, *ident)
            if entry is not None and entry.answered:  # it ended meanwhile
                return self._replay(entry, fingerprint)
            if entry is not None:
                self._same_request(entry, fingerprint)
            raise Conflict(f"a request with Idempotency-Key '{key}' is still running; retry once it has answered")
        self._running.add(ident)
        try:
            entry = await keys.reserve(self.store, *ident, fingerprint, now(), self._cutoff())
            if entry is None:
                return Claim(*ident)
            if entry.answered or entry.recorded:
                self._running.discard(ident)
                return self._replay(entry, fingerprint) if entry.answered else await self._rebuilt(ctx, entry,
                                                                                                   fingerprint)
            # Reserved by a request cimid never finished (no one here runs it), and it made no Job, so it
            # changed nothing: this one runs in its place.
            self._same_request(entry, fingerprint)
            await keys.renew(self.store, *ident, now())
            log.info("Idempotency-Key %r of %s: the first request ended with cimid, before it changed anything; "
                     "running its retry", key, ctx.user)
            return Claim(*ident)
        except BaseException:
            self._running.discard(ident)
            raise

    @staticmethod
    def _same_request(entry: keys.Entry, fingerprint: str) -> None:
        if entry.fingerprint != fingerprint:
            raise UnprocessableContent(
                f"Idempotency-Key '{entry.key}' was already used for another request (another method, path or "
                "body); use a new key for a new request")

    def _replay(self, entry: keys.Entry, fingerprint: str) -> StoredAnswer:
        self._same_request(entry, fingerprint)
        return StoredAnswer(entry.status, entry.headers, entry.body)

    async def _rebuilt(self, ctx: Context, entry: keys.Entry, fingerprint: str) -> Result:
        """The answer to a request that made a Job but was never answered (cimid stopped in between)."""
        self._same_request(entry, fingerprint)
        recorded = entry.recorded
        job = await self.store.get(Job.name, recorded["job"])
        if job is not None:
            return job_result(ctx, job, recorded["status"], recorded.get("location"))
        headers = {"CIMI-Job-URI": ctx.base + f"jobs/{recorded['job']}"}  # the Job was purged since
        if recorded.get("location"):
            headers["Location"] = ctx.base + recorded["location"]
        return Result(recorded["status"], headers=headers)

    @contextmanager
    def recording(self, claim: Claim) -> Iterator[None]:
        """While the request runs: the first top-level Job it inserts is recorded beside its key, in the
        same transaction."""

        async def record(tx: Transaction, job: Row) -> None:
            if claim.closed or claim.recorded or job.kind != Job.name or "parentJob" in job.attrs:
                return  # only the request's own (top-level) Job
            # What the answer says of this Job: to run (202; a hot-plug's is stored RUNNING already) or done
            # at once (201 for an add, 200 otherwise).
            status = 202 if job.state not in JOB_FINISHED else 201 if job.attrs.get("action") == "add" else 200
            affected = job.attrs.get("affectedResources") or []
            # The resource made or acted on: the last one a Job lists (a capture lists the Machine, then the image).
            location = affected[-1]["href"] if affected and status != 200 else None
            await keys.record(tx, claim.consumer, claim.key, {"job": job.id, "status": status, "location": location})
            tx.after_commit.append(lambda: setattr(claim, "recorded", True))

        token = insert_recorder.set(record)
        try:
            yield
        finally:
            insert_recorder.reset(token)

    async def finish(self, claim: Claim, answer: StoredAnswer | None) -> None:
        """Keep the answer for retries; forget the key after a 5xx or an exception (`answer` None), unless the
        request made a Job. A failure to store is logged, not raised: the client must still get its answer,
        and a retry is rebuilt from the recorded Job."""
        claim.closed = True
        try:
            if answer is None or answer.status >= 500:
                await keys.release(self.store, claim.consumer, claim.key)
            else:
                await keys.answer(self.store, claim.consumer, claim.key, answer.status, answer.headers, answer.body)
        except Exception:
            log.exception("the answer to Idempotency-Key %r of %s was not stored", claim.key, claim.consumer)
        finally:
            self._running.discard((claim.consumer, claim.key))

    async def purge(self) -> None:
        await keys.purge(self.store, self._cutoff())
