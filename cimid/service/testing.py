"""The test-control extension, assembled only with `--test-api` (server.test_api): reset, fault rules,
determinism. Production code carries no test branch for it:

- Faults wrap the JobRunner's kinds (`JobRunner.register` with a wrapped `JobKind`), so every operation
  that reaches the host, of every family that runs its work as Jobs, passes one place that knows the
  operation kind (`operation_kind`: the action asked for, or the first step's op: create, import ...), the
  resource (the Job's first affected resource, its type from the registry) and can match the rule's
  $filter against the stored row. A rule hits a Job once, at its first step. Without --test-api the kinds
  are the families' own, untouched.
- A catalogue entry (a configuration, template, credential, image ...) is made or deleted at once,
  without a host Job (201/200). A tester expects a "fail" rule on such a create or delete to fail all the
  same, so the generic create and delete call `Collaborators.at_once_hooks` once the body is valid and
  before the store changes: "fail" answers 500 with the rule's message and changes nothing, "slow" waits
  first; "error" fails it like "fail" (there is no Job whose end could set the state). A rule's $filter
  is matched against the stored resource, so it never matches a create (there is none yet).
- Reset walks the provider's services (the registry's families): each stops, forgets what it made on the
  host, the store is wiped in the same transaction, and each starts again, as at a fresh start-up (which
  seeds the catalogue). Families added later are covered by the same path.
- Determinism replaces the two sources of cimid.service.hrefs (ids and the clock).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import itertools
import logging
import math
import re

from ..errors import BadRequest, Conflict, DriverError, InternalError, NotFound
from ..model import collection_type
from ..model.registry import TOP_LEVEL
from ..model.types import SHARING
from ..store import reset as reset_queries
from ..store.db import Row
from ..store.query import QueryError
from . import hrefs
from .events import FaultApplied
from .hrefs import new_id, now, split_href
from .present import Context
from .provider import Provider
from .runner import JobKind

log = logging.getLogger("cimid.testing")

EXTENSION_URI = "urn:x-cimid:extension:test-control"
PATH = "testControl"  # under the base URI
RULES = f"{PATH}/faultRules"
RULE_URI = "urn:x-cimid:test-control:FaultRule"
RULE_KIND = "FaultRule"  # how rules are kept in the store (wiped by a reset like everything else)
EFFECTS = ("fail", "slow", "error")
DEFAULT_MESSAGE = "fault injected by the test-control extension"
_RULE_KEYS = {"name", "resourceType", "operationKinds", "effect", "message", "seconds", "count", "filter"}
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")

# What ResourceMetadata (of the CloudEntryPoint) lists for the extension, and the README documents.
OPERATIONS = [
    ("reset", "POST", PATH + "/reset",
     "Back to the seeded catalogue: every machine, volume, network, Job, Event and fault rule gone. Body "
     "(optional): {\"idSeed\": S, \"clock\": dateTime}: ids from a sequence seeded with S, the clock fixed at "
     "that time; without them random ids and the system clock."),
    ("faultRules", "GET", RULES, "The fault rules, as a collection."),
    ("addFaultRule", "POST", RULES,
     "A fault rule: {resourceType, operationKinds: [create|start|stop|delete|import|...], effect: "
     "fail|slow|error, message, seconds (slow), count (default 1), filter ($filter on the resource)}: the "
     "next `count` such operations fail with message, take `seconds` longer, or fail and leave the "
     "resource in ERROR. Each application is recorded as an Event."),
    ("removeFaultRule", "DELETE", RULES + "/{id}", "Remove a fault rule."),
    ("clock", "POST", PATH + "/clock",
     "{\"advance\": seconds} steps the fixed clock; {\"time\": dateTime} fixes it; GET reads it."),
]


def parse_time(text: object, what: str) -> dt.datetime:
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a dateTime such as 2030-01-01T00:00:00.000Z")
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{what} must be a dateTime such as 2030-01-01T00:00:00.000Z, not '{text[:40]}'") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def seeded_ids(seed: str):
    """Ids shaped like cimid's random ones (32 hex digits), the same sequence for the same seed."""
    counter = itertools.count(1)
    return lambda: hashlib.sha256(f"{seed}:{next(counter)}".encode()).hexdigest()[:32]


def operation_kind(job: Row) -> str:
    """The operation a Job does, as fault rules name it: the action asked for (restart, capture, snapshot
    ...: a restart is not its stop step), or for a plain add, delete or edit its first step (create,
    import, attach, detach, delete, grow)."""
    action = str(job.attrs.get("action", ""))
    if "/" in action or ":" in action:
        return re.split(r"[/:]", action)[-1]
    steps = job.internal.get("steps") or [{}]
    return steps[0].get("op") or action


class TestControl:
    __test__ = False  # a class named Test*: not a test for pytest

    def __init__(self, provider: Provider):
        self.provider = provider
        self.store = provider.store
        self.jobs = provider.jobs
        self.fixed: dt.datetime | None = None  # the fixed clock's time, when there is one
        self.seed: str | None = None
        self._to_error: dict[str, tuple[str, str]] = {}  # Job id -> (type, id) to leave in ERROR at its end
        self._resetting = asyncio.Lock()
        for name, kind in list(self.jobs.kinds.items()):
            self.jobs.register(name, self._faulty(kind))
        provider.at_once_hooks.append(self._at_once)
        provider.metadata.extensions[PATH] = {
            "uri": EXTENSION_URI, "path": PATH,
            "operations": [{"name": name, "uri": f"{EXTENSION_URI}/{name}", "method": method,
                            "description": f"{method} {path}: {text}", "inputMessage": "application/json",
                            "outputMessage": "application/json"} for name, method, path, text in OPERATIONS]}

    def close(self) -> None:
        """Random ids and the system clock again (tests run several providers in one process)."""
        hrefs.use_sources()

    # ---------------------------------------------------------------- the extension's own document

    def describe(self, base: str) -> dict:
        return {"resourceURI": EXTENSION_URI, "id": base + PATH, "name": "test control",
                "description": "Reset, fault rules and determinism for testers (cimid serve --test-api)",
                "faultRules": {"href": base + RULES}, "clock": self.clock(),
                "idSeed": self.seed,
                "operations": [{"rel": f"{EXTENSION_URI}/{name}", "href": base + path}
                               for name, method, path, _ in OPERATIONS if method == "POST" and "{" not in path]}

    # ---------------------------------------------------------------- determinism

    def _determinism(self, seed: str | None, clock: dt.datetime | None) -> None:
        self.seed, self.fixed = seed, clock
        hrefs.use_sources(seeded_ids(seed) if seed is not None else None,
                          (lambda: self.fixed) if clock is not None else None)

    def clock(self) -> dict:
        return {"time": now(), "fixed": self.fixed is not None}

    def set_clock(self, body: dict) -> dict:
        unknown = set(body) - {"advance", "time"}
        if unknown or len(body) != 1:
            raise BadRequest("the clock takes one of {\"advance\": seconds} or {\"time\": dateTime}")
        if "time" in body:
            self.fixed = parse_time(body["time"], "time")
            hrefs.use_sources(hrefs.id_source, lambda: self.fixed)  # the id sequence goes on where it was
            return self.clock()
        seconds = body["advance"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise BadRequest("advance must be a number of seconds, 0 or more")
        if self.fixed is None:
            raise Conflict("the clock is not fixed: reset with {\"clock\": ...} or POST {\"time\": ...} first")
        self.fixed += dt.timedelta(seconds=seconds)
        return self.clock()

    # ---------------------------------------------------------------- reset

    async def reset(self, body: dict) -> dict:
        unknown = set(body) - {"idSeed", "clock"}
        if unknown:
            raise BadRequest(f"reset takes idSeed and clock, not {', '.join(sorted(unknown))}")
        seed = body.get("idSeed")
        if seed is not None and (not isinstance(seed, str) or not seed or len(seed) > 255):
            raise BadRequest("idSeed must be a non-empty string")
        clock = parse_time(body["clock"], "clock") if body.get("clock") is not None else None
        async with self._resetting:
            services = list(self.provider.services.values())
            await self.provider.idempotency.stop()
            for service in services:
                await service.stop()
            await self.jobs.shutdown()  # running Jobs end here; their rows go with the rest
            self.jobs.stop_requested.clear()
            self._to_error.clear()
            self._determinism(seed, clock)
            async with self.store.write() as tx, reset_queries.throwaway_deletes(tx):
                for service in services:
                    await service.forget_host(tx)
                await reset_queries.wipe(tx)
            for service in services:  # as at start-up: the catalogue is seeded again
                await service.start()
            await self.provider.idempotency.start()
        log.info("reset: back to the seeded catalogue%s%s", f", ids seeded with {seed!r}" if seed else "",
                 f", clock fixed at {now()}" if clock else "")
        return {"resourceURI": EXTENSION_URI + "/reset", "idSeed": seed, "clock": self.clock()}

    # ---------------------------------------------------------------- fault rules as resources

    def present(self, row: Row, base: str) -> dict:
        href = base + f"{RULES}/{row.id}"
        return {"resourceURI": RULE_URI, "id": href, **row.attrs, "operations": [{"rel": "delete", "href": href}]}

    async def rules(self, base: str) -> dict:
        rows = await self.store.all_of(RULE_KIND)
        doc = {"resourceURI": RULE_URI + "Collection", "id": base + RULES, "count": len(rows),
               "operations": [{"rel": "add", "href": base + RULES}]}
        if rows:
            doc["faultRules"] = [self.present(row, base) for row in rows]
        return doc

    async def rule(self, id: str, base: str) -> dict:
        row = await self.store.get(RULE_KIND, id)
        if row is None:
            raise NotFound(f"there is no fault rule '{id}'")
        return self.present(row, base)

    async def remove_rule(self, id: str) -> None:
        async with self.store.write() as tx:
            if await tx.get(RULE_KIND, id) is None:
                raise NotFound(f"there is no fault rule '{id}'")
            await tx.delete(RULE_KIND, id)

    async def add_rule(self, body: dict, base: str) -> dict:
        attrs = await self._valid_rule(body)
        stamp = now()
        row = Row(RULE_KIND, new_id(), "", {**attrs, "remaining": attrs["count"], "created": stamp,
                                            "updated": stamp})
        async with self.store.write() as tx:
            await tx.insert(row)
        return self.present(row, base)

    def _served(self) -> dict[str, object]:
        """Every served type with a collection of its own, by name, walked from the registry."""
        return {t.name: t for t in TOP_LEVEL.values() if self.provider.service_of(t) is not None}

    async def _valid_rule(self, body: dict) -> dict:
        unknown = set(body) - _RULE_KEYS - {"resourceURI"}
        if unknown:
            raise BadRequest(f"a fault rule has no {', '.join(sorted(unknown))}; it takes "
                             f"{', '.join(sorted(_RULE_KEYS))}")
        served = self._served()
        rtype = served.get(body.get("resourceType"))
        if rtype is None:
            raise BadRequest(f"resourceType must name a type this provider serves: {', '.join(sorted(served))}")
        kinds = body.get("operationKinds")
        if isinstance(kinds, str):
            kinds = [kinds]
        known = {"create", "delete", "import", *rtype.actions} - {a.name for a in SHARING}
        if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) and _KIND.fullmatch(k)
                                                               for k in kinds):
            raise BadRequest(f"operationKinds must be a non-empty list of operation kinds of a {rtype.name}: "
                             f"{', '.join(sorted(known))}")
        strange = sorted(set(kinds) - known)
        if strange:
            raise BadRequest(f"a {rtype.name} has no operation {', '.join(strange)}; its kinds are "
                             f"{', '.join(sorted(known))}")
        effect = body.get("effect", "fail")
        if effect not in EFFECTS:
            raise BadRequest(f"effect must be one of {', '.join(EFFECTS)}")
        if effect == "error" and "ERROR" not in rtype.states:
            raise BadRequest(f"a {rtype.name} has no ERROR state to be left in")
        attrs = {"resourceType": rtype.name, "operationKinds": sorted(set(kinds)), "effect": effect}
        if body.get("name") is not None:
            if not isinstance(body["name"], str) or len(body["name"]) > 255:
                raise BadRequest("name must be a string of at most 255 characters")
            attrs["name"] = body["name"]
        message = body.get("message", DEFAULT_MESSAGE)
        if not isinstance(message, str) or not message or len(message) > 1024:
            raise BadRequest("message must be a non-empty string of at most 1024 characters")
        attrs["message"] = message
        seconds = body.get("seconds")
        if effect == "slow" or seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                    or not 0 <= seconds <= 3600:
                raise BadRequest("seconds (how much longer a slow operation takes) must be a number from 0 to "
                                 "3600")
            attrs["seconds"] = seconds
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise BadRequest("count (how many operations the rule hits) must be an integer, 1 or more")
        attrs["count"] = count
        if body.get("filter") is not None:
            if not isinstance(body["filter"], str):
                raise BadRequest("filter must be a $filter expression")
            try:
                await self.store.matches(rtype.name, "", rtype.columns, [body["filter"]])
            except QueryError as exc:
                raise BadRequest(f"filter: {exc}") from None
            attrs["filter"] = body["filter"]
        return attrs

    # ---------------------------------------------------------------- faults where operations happen

    async def take(self, job: Row) -> dict | None:
        """The first live rule that matches `job`, spent by one (and recorded as an Event in the same
        commit); None when no rule does."""
        affected = job.attrs.get("affectedResources") or []
        if not affected:
            return None
        try:
            collection, id = split_href(affected[0]["href"])
        except BadRequest:
            return None
        rtype = collection_type(collection)
        if rtype is None:
            return None
        return await self._spend(rtype, operation_kind(job), f"{collection}/{id}", id, job.owner)

    async def _spend(self, rtype, kind: str, path: str, id: str | None, owner: str) -> dict | None:
        for rule in await self.store.all_of(RULE_KIND):
            attrs = rule.attrs
            if attrs["remaining"] < 1 or attrs["resourceType"] != rtype.name or kind not in attrs["operationKinds"]:
                continue
            if attrs.get("filter") and (id is None or not await self.store.matches(rtype.name, id, rtype.columns,
                                                                                   [attrs["filter"]])):
                continue
            async with self.store.write() as tx:
                current = await tx.get(RULE_KIND, rule.id)
                if current is None or current.attrs["remaining"] < 1:
                    continue  # spent or removed meanwhile
                current.attrs["remaining"] -= 1
                current.attrs["updated"] = now()
                await tx.update(current)
                tx.emit(FaultApplied(rtype.name, path, f"{RULES}/{rule.id}", kind, attrs["effect"],
                                     attrs["message"], owner=owner))
            return {**current.attrs, "target": (rtype.name, id)}
        return None

    async def _at_once(self, ctx: Context, rtype, kind: str, id: str | None) -> None:
        """Before a create or delete done at once (no Job): a matching "fail" rule answers 500 with its
        message and nothing is changed; a "slow" one waits first."""
        fault = await self._spend(rtype, kind, f"{rtype.collection}/{id}" if id else rtype.collection, id,
                                  ctx.user)
        if fault is None:
            return
        if fault["effect"] == "slow":
            await asyncio.sleep(fault["seconds"])
            return
        raise InternalError(fault["message"])

    def _faulty(self, kind: JobKind) -> JobKind:
        async def run_step(job: Row, step: dict):
            first = job.internal.get("step", 0) == 0  # a rule hits a Job once, before its first step
            fault = await self.take(job) if first else None
            if fault is None:
                return await kind.run_step(job, step)
            if fault["effect"] == "slow":
                await asyncio.sleep(fault["seconds"])
                return await kind.run_step(job, step)
            if fault["effect"] == "error":
                self._to_error[job.id] = fault["target"]
            raise DriverError(fault["message"])  # the host is not touched

        async def finish(tx, job: Row, outcome: str, message: str, observed) -> None:
            await kind.finish(tx, job, outcome, message, observed)
            if outcome != "STEP" and job.id in self._to_error:
                type_name, id = self._to_error.pop(job.id)
                row = await tx.get(type_name, id)
                if row is not None and row.state != "ERROR":  # whatever the host says: the rule says ERROR
                    row.attrs["state"] = "ERROR"
                    await tx.update(row)

        return dataclasses.replace(kind, run_step=run_step, finish=finish)
