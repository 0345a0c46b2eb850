"""Machines: template resolution, the CIMI state machine, and the Jobs that drive the compute driver."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from ..errors import BadRequest, Conflict, DriverError, NotFound, Unavailable
from ..hookspecs import MachineSpec
from ..model import TYPES, Action
from ..model.resources import MachineCreate, MachineTemplate
from ..model.validate import require, validate
from ..store.db import Row, Transaction
from .jobs import INTERRUPTED, end_nested, job_row, set_job_state
from .presentation import Context, Result, check_if_match, href_to_id, new_id, now, present

log = logging.getLogger("cimid.machines")
Machine = TYPES["Machine"]


def settle(machine: Row, observed: str | None) -> None:
    """Take the state the host reports (nothing known: ERROR); remember it if it is a stable one, which
    is what a volatile backend (the sandbox) rebuilds the machine in after a restart."""
    machine.attrs["state"] = observed or "ERROR"
    if observed and observed != "ERROR":
        machine.internal["stable"] = observed


class Machines:
    def __init__(self, provider):
        self.provider = provider
        self.store = provider.store
        self.driver = provider.drivers.compute
        self.ready = False
        provider.jobs.register("machine", self.run_step, self.observe, self.finish)
        if self.driver is not None:
            self.driver.watch(self.on_event)

    async def ensure_driver(self) -> None:
        """Machine changes need a hypervisor that answers; reads of stored Machines do not."""
        if self.ready:
            return
        try:
            await self.driver.open()
        except DriverError as exc:
            raise Unavailable(f"the hypervisor is not available: {exc}") from None
        self.ready = True

    # ---------------------------------------------------------------- create

    async def create(self, ctx: Context, body: dict):
        request = validate(MachineCreate, body, creating=True)
        require(MachineCreate, request)
        await self.ensure_driver()
        config = self.provider.config["compute"]
        async with self.store.write() as tx:
            template = await self.provider.resolve_ref(tx, MachineCreate.attribute("machineTemplate"),
                                                       request["machineTemplate"])
            for name in ("machineConfig", "machineImage"):
                if not template.get(name):
                    raise BadRequest(f"the machineTemplate needs a {name}")
            parts = {}
            for name in ("machineConfig", "machineImage", "credential"):
                value = template.get(name)
                if value:
                    parts[name] = await self.provider.resolve_ref(tx, MachineTemplate.attribute(name), value)
            conf = parts["machineConfig"]
            image = parts["machineImage"]
            if self.driver.imports_images and not image.get("_href"):
                raise BadRequest("this provider boots only imported MachineImages: give machineImage by "
                                 "reference (POST the image to machineImages first)")
            if image.get("state", "AVAILABLE") != "AVAILABLE":
                raise Conflict(f"the MachineImage is {image['state']}, not AVAILABLE")
            initial = template.get("initialState") or config["default_initial_state"]
            stamp = now()
            machine_id = new_id()
            attrs = {"created": stamp, "updated": stamp, "state": "CREATING"}
            attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
            attrs.update({k: conf[k] for k in ("cpu", "memory", "cpuArch", "cpuSpeed") if k in conf})
            credential = parts.get("credential")
            spec = MachineSpec(
                id=machine_id, name=attrs.get("name", ""), cpu=conf["cpu"], memory=conf["memory"],
                cpu_arch=conf.get("cpuArch"), disks=conf.get("disks", []),
                image_location=image.get("imageLocation"), user_data=template.get("userData"),
                image_id=image["_href"].rsplit("/", 1)[1] if image.get("_href") else None,
                credential={k: credential[k] for k in ("userName", "password", "key") if k in credential}
                if credential else None,
            )
            machine = Row("Machine", machine_id, "", attrs, {"spec": asdict(spec), "stable": None,
                                                            "image": image.get("_href")})
            await tx.insert(machine)
            for disk in spec.disks:
                disk_attrs = {"created": stamp, "capacity": disk["capacity"]}
                if disk.get("initialLocation"):
                    disk_attrs["initialLocation"] = disk["initialLocation"]
                await tx.insert(Row("Disk", new_id(), machine_id, disk_attrs))
            steps = [{"op": "create", "transitional": "CREATING"}]
            if initial == "STARTED":
                steps.append({"op": "start", "transitional": "STARTING"})
            job = await self._queue(tx, machine, "add", steps, target="machines",
                                    success=f"Machine created, {initial}")
        return self._accepted(ctx, machine, job)

    # ---------------------------------------------------------------- actions and delete

    async def act(self, ctx: Context, id: str, action: Action, request: dict, if_match: str | None):
        await self.ensure_driver()
        async with self.store.write() as tx:
            machine = await self._load(tx, id)
            check_if_match(machine, if_match)
            if machine.state not in action.from_states:
                raise Conflict(f"cannot {action.name} Machine '{id}' while it is {machine.state}; "
                               f"{action.name} needs one of {', '.join(action.from_states)}")
            force = bool(request.get("force", False))
            if action.name in ("capture", "snapshot"):
                return await self._capture(tx, ctx, machine, action, request.get("imageAttributes", {}))
            if action.name == "restore":
                image_id = await self._restorable(tx, request.get("image"))
                steps = [{"op": "restore", "image": image_id, "transitional": "RESTORING"}]
            elif action.name == "restart" and machine.state == "STOPPED":
                steps = [{"op": "start", "transitional": "STARTING"}]
            elif action.name == "restart":
                steps = [{"op": "stop", "force": force, "transitional": "STOPPING"},
                         {"op": "start", "transitional": "STARTING"}]
            else:
                steps = [{"op": action.name, "force": force, "transitional": action.transitional}]
            job = await self._queue(tx, machine, action.uri, steps, target=f"machines/{id}",
                                    success=f"Machine {action.final}")
        return self._accepted(ctx, machine, job)

    async def _capture(self, tx: Transaction, ctx: Context, machine: Row, action: Action, attrs: dict):
        """A new MachineImage (IMAGE for capture, SNAPSHOT for snapshot), made by a Job."""
        stamp = now()
        kind = "IMAGE" if action.name == "capture" else "SNAPSHOT"
        image_attrs = {"name": f"{machine.attrs.get('name') or machine.id} {action.name}", **attrs,
                       "created": stamp, "updated": stamp, "state": "CREATING", "type": kind,
                       "imageLocation": ctx.base + f"machines/{machine.id}"}
        if kind == "SNAPSHOT" and machine.internal.get("image"):
            image_attrs["relatedImage"] = {"href": machine.internal["image"]}
        image = Row("MachineImage", new_id(), "", image_attrs)
        await tx.insert(image)
        steps = [{"op": "capture", "image": image.id, "transitional": "CAPTURING"}]
        job = await self._queue(tx, machine, action.uri, steps, target=f"machines/{machine.id}",
                                success=f"MachineImage {kind} made", affected=[f"machineImages/{image.id}"])
        return Result(202, TYPES["Job"], present(TYPES["Job"], job, ctx),
                      headers={"CIMI-Job-URI": ctx.base + f"jobs/{job.id}",
                               "Location": ctx.base + f"machineImages/{image.id}"})

    async def _restorable(self, tx: Transaction, ref: dict | None) -> str:
        if not ref or "href" not in ref:
            raise BadRequest("restore needs an image: {\"href\": \"<a MachineImage of this provider>\"}")
        image_id = href_to_id(ref["href"], TYPES["MachineImage"], "image")
        image = await tx.get("MachineImage", image_id)
        if image is None:
            raise BadRequest(f"image: '{ref['href']}' does not name an existing MachineImage")
        if image.state != "AVAILABLE":
            raise Conflict(f"MachineImage '{image_id}' is {image.state}, not AVAILABLE")
        return image_id

    async def delete(self, ctx: Context, id: str, if_match: str | None):
        await self.ensure_driver()
        async with self.store.write() as tx:
            machine = await self._load(tx, id)
            check_if_match(machine, if_match)
            if machine.state in Machine.transitional_states:
                raise Conflict(f"Machine '{id}' is {machine.state}; wait for its Job to finish")
            job = await self._queue(tx, machine, "delete", [{"op": "delete", "transitional": "DELETING"}],
                                    target=f"machines/{id}", success="Machine deleted")
        return self._accepted(ctx, machine, job)

    async def _load(self, tx: Transaction, id: str) -> Row:
        machine = await tx.get("Machine", id)
        if machine is None:
            raise NotFound(f"there is no Machine '{id}'")
        return machine

    async def _queue(self, tx: Transaction, machine: Row, action: str, steps: list[dict], *, target: str,
                     success: str, affected: list[str] = ()) -> Row:
        """Persist the Job (and nested Jobs for several steps), mark the machine transitional."""
        path = f"machines/{machine.id}"
        internal = {"kind": "machine", "machine": machine.id, "steps": steps, "prior": machine.state,
                    "success_message": success, "stoppable": True}
        job = job_row(action=action, target=target, affected=[path, *affected], state="QUEUED",
                      internal=internal)
        if len(steps) > 1:
            job.attrs["nestedJobs"] = []
            for step in steps:
                nested = job_row(action=step["op"], target=path, affected=[path], state="QUEUED", parent=job.id)
                await tx.insert(nested)
                step["job"] = nested.id
                job.attrs["nestedJobs"].append({"href": f"jobs/{nested.id}"})
        await tx.insert(job)
        if machine.state != "CREATING":
            machine.attrs["state"] = steps[0]["transitional"]
            await tx.update(machine)
        tx.after_commit.append(lambda: self.provider.jobs.submit(job.id))
        log.info("job %s %s QUEUED for machine %s", job.id, action, machine.id)
        return job

    def _accepted(self, ctx: Context, machine: Row, job: Row):
        headers = {"CIMI-Job-URI": ctx.base + f"jobs/{job.id}", "Location": ctx.base + f"machines/{machine.id}"}
        return Result(202, TYPES["Job"], present(TYPES["Job"], job, ctx), headers=headers)

    # ---------------------------------------------------------------- job steps

    async def run_step(self, job: Row, step: dict) -> None:
        machine_id = job.internal["machine"]
        op = step["op"]
        if op == "create":
            machine = await self.store.get("Machine", machine_id)
            await self.driver.create(MachineSpec(**machine.internal["spec"]))
        elif op in ("stop",):
            await self.driver.stop(machine_id, step.get("force", False))
        elif op in ("start", "pause", "suspend", "delete"):
            await getattr(self.driver, op)(machine_id)
        elif op == "capture":
            return await self.driver.capture(machine_id, step["image"])
        elif op == "restore":
            await self.driver.restore(machine_id, step["image"])
        else:
            raise DriverError(f"unknown step '{op}'")

    async def observe(self, job: Row) -> str | None:
        return await self._read_state(job.internal["machine"])

    async def _read_state(self, machine_id: str) -> str | None:
        try:
            return await self.driver.state(machine_id)
        except DriverError as exc:
            log.warning("cannot read the state of machine %s: %s", machine_id, exc)
            return None

    async def finish(self, tx: Transaction, job: Row, outcome: str, message: str, observed) -> None:
        machine = await tx.get("Machine", job.internal["machine"])
        if machine is None:
            return
        if outcome == "STEP":
            if machine.state != message:
                machine.attrs["state"] = message
                await tx.update(machine)
            return
        last = job.internal["steps"][-1]
        if outcome == "SUCCESS" and last["op"] == "delete":
            await tx.delete("Machine", machine.id)
            return
        if last["op"] == "capture":
            await self._settle_capture(tx, machine, last, outcome == "SUCCESS")
        if outcome == "SUCCESS" and last["op"] == "restore":
            machine.internal["image"] = f"machineImages/{last['image']}"  # the disk now stands on it
        if outcome == "SUCCESS" and observed is None:
            set_job_state(job, "FAILED", "the hypervisor no longer knows this machine")
        settle(machine, observed)
        await tx.update(machine)

    async def _settle_capture(self, tx: Transaction, machine: Row, step: dict, succeeded: bool) -> None:
        image = await tx.get("MachineImage", step["image"])
        if image is None:
            return
        if not succeeded:
            await tx.delete("MachineImage", image.id)
            return
        image.attrs["state"] = "AVAILABLE"
        image.attrs["imageLocation"] = step["result"]["location"]
        await tx.update(image)
        if image.attrs["type"] == "SNAPSHOT":
            await tx.insert(Row("MachineSnapshot", new_id(), machine.id, {
                "created": now(), "snapshot": {"href": f"machineImages/{image.id}"}}))
            machine.attrs["latestSnapshot"] = {"href": f"machineImages/{image.id}"}

    def on_event(self, machine_id: str, state: str, reason: str) -> None:
        """The host changed a machine by itself (a guest powered off, crashed): follow it."""
        if self.store.is_open:  # events can still arrive while cimid shuts down
            asyncio.get_running_loop().create_task(self._follow(machine_id, state, reason))

    async def _follow(self, machine_id: str, state: str, reason: str) -> None:
        if not self.store.is_open:
            return
        async with self.store.write() as tx:
            machine = await tx.get("Machine", machine_id)
            if machine is None or machine.state in Machine.transitional_states or machine.state == state:
                return  # a Job is at work, and it reads the state back when it ends
            previous = machine.state
            settle(machine, state)
            await tx.update(machine)
            path = f"machines/{machine_id}"
            # A Job records what happened and why, where a consumer can find it.
            await tx.insert(job_row(action="urn:x-cimid:event:state", target=path, affected=[path],
                                    state="FAILED" if state == "ERROR" else "SUCCESS",
                                    message=f"{reason}: {previous} -> {state}"))
        log.info("machine %s: %s (%s -> %s)", machine_id, reason, previous, state)

    async def console(self, ctx: Context, id: str, max_bytes: int) -> str:
        await self.provider.load(Machine, id)
        try:
            return await self.driver.console(id, max_bytes)
        except DriverError as exc:
            raise Unavailable(f"the console cannot be read: {exc}") from None

    async def settle_unstarted(self, tx: Transaction, job: Row) -> None:
        """A QUEUED Job was stopped: nothing reached the host, so undo only what the request recorded."""
        machine = await tx.get("Machine", job.internal["machine"])
        if machine is None:
            return
        first = job.internal["steps"][0]
        if first["op"] == "create":
            await tx.delete("Machine", machine.id)
        else:
            if first["op"] == "capture":
                await tx.delete("MachineImage", first["image"])
            machine.attrs["state"] = job.internal["prior"]
            await tx.update(machine)

    # ---------------------------------------------------------------- restart

    async def recover(self) -> None:
        """After a restart: rebuild volatile backends, resume Jobs that never began, fail interrupted ones,
        and re-read every machine left in a transitional state from the hypervisor."""
        try:
            await self.ensure_driver()
        except Unavailable as exc:
            log.warning("%s; machine changes answer 503 until it is", exc)
            return
        machines = await self.store.select("kind = 'Machine'")
        await self.driver.adopt([(MachineSpec(**m.internal["spec"]), m.internal.get("stable"))
                                 for m in machines if m.internal.get("stable")])
        pending = await self.store.select(
            "kind = 'Job' AND state IN ('QUEUED', 'RUNNING', 'STOPPING')"
            " AND json_extract(doc, '$.parentJob') IS NULL")
        resumed = set()
        for job in pending:
            if job.internal.get("kind") != "machine":
                continue
            if job.state == "QUEUED" and not job.internal.get("begun"):
                resumed.add(job.internal["machine"])
                self.provider.jobs.submit(job.id)
                log.info("job %s resumed after restart", job.id)
                continue
            observed = await self.observe(job)
            async with self.store.write() as tx:
                job = await tx.get("Job", job.id)
                await end_nested(tx, job, "FAILED", INTERRUPTED)
                set_job_state(job, "FAILED", INTERRUPTED)
                await tx.update(job)
                machine = await tx.get("Machine", job.internal["machine"])
                if machine is not None:
                    if observed is None and machine.state == "DELETING":
                        await tx.delete("Machine", machine.id)  # it was gone already
                    else:
                        settle(machine, observed)
                        await tx.update(machine)
        transitional = ", ".join(f"'{state}'" for state in Machine.transitional_states)
        for machine in await self.store.select(f"kind = 'Machine' AND state IN ({transitional})"):
            if machine.id in resumed:
                continue
            observed = await self._read_state(machine.id)
            async with self.store.write() as tx:
                current = await tx.get("Machine", machine.id)
                settle(current, observed)
                await tx.update(current)
            log.info("machine %s was %s at start-up; the hypervisor says %s", machine.id, machine.state,
                     observed or "nothing (ERROR)")
