"""Machines: template resolution, the CIMI state machine, and the Jobs that drive the compute driver."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from ..errors import BadRequest, Conflict, DriverError, Unavailable
from ..hookspecs import MachineSpec
from ..model import Action, Extension, Family, ResourceType
from ..model.images import MachineImage
from ..model.machines import Disk, Machine, MachineCreate, MachineSnapshot
from ..model.catalogue import MachineTemplate
from ..model.events import EventLog
from ..model.registry import FAMILIES
from ..model.validate import require, validate
from ..store.db import Row, Transaction
from .events import Alarm, model_changed, state_changed
from .hrefs import new_id, now
from .present import Context, Result, check_if_match
from .resources import ResourceService
from .runner import JobKind, job_result

log = logging.getLogger("cimid.machines")
KIND = "machine"  # the Job kind
# The families that take part in a machine's create (volumes, networks), by name.
TEMPLATE_PARTS: dict[str, Family] = {f.name: f for f in FAMILIES if f.machine_template_parts}


def record_state(tx: Transaction, machine: Row, previous: str | None, reason: str, initiator: str = "") -> None:
    """A state Event for `machine` if its state is no longer `previous` (written with this transaction)."""
    record = state_changed(Machine, machine, previous, reason, initiator)
    if record is not None:
        tx.emit(record)


def settle(machine: Row, observed: str | None) -> None:
    """Take the state the host reports (nothing known: ERROR); remember it if it is a stable one, which
    is what a volatile backend (the sandbox) rebuilds the machine in after a restart."""
    machine.attrs["state"] = observed or "ERROR"
    if observed and observed != "ERROR":
        machine.internal["stable"] = observed


def _moved_by(machine: Row | None, state: str) -> bool:
    """Whether an event saying `state` would change the stored machine: not while a Job is at work on it (the
    Job reads the state back when it ends), nor where it is in that state already."""
    return machine is not None and machine.state not in Machine.transitional_states and machine.state != state


class Machines(ResourceService):
    def __init__(self, family, parts):
        super().__init__(family, parts)
        self.driver = self.drivers.compute
        self.jobs.register(KIND, JobKind(self.run_step, self.observe, self.finish, self.abandon))
        self.driver.watch(self.on_event)
        self._following = asyncio.Lock()  # the host's events are settled one at a time (_follow)

    async def ensure_driver(self) -> None:
        """Machine changes need a hypervisor that answers; reads of stored Machines do not."""
        try:
            await self.drivers.open("compute")
        except DriverError as exc:
            raise Unavailable(f"the hypervisor is not available: {exc}") from None

    async def usage(self, reader, owner: str) -> dict[str, int]:
        count, totals = await reader.usage(Machine.name, owner, ("cpu", "memory"))
        return {"machines": count, **totals}

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        if rtype is not Machine:
            return {}
        real_images = self.drivers.images is not None and self.drivers.images.imports_images
        caps = {"DefaultInitialState": self.config["compute"]["default_initial_state"],
                "InitialStates": "STARTED,STOPPED", "MachineTemplateByValue": True, "MachineConfigByValue": True,
                "MachineImageByValue": not real_images, "MachineCredentialByValue": True,
                "MachineStopForce": True, "MachineStopForceDefault": False, "RestoreFromImage": True}
        if real_images:  # a cloud-init NoCloud seed carrying cimi/user-data
            caps["UserData"] = "disk"
        return caps

    # ---------------------------------------------------------------- create

    async def create(self, ctx: Context, rtype: ResourceType, body: dict, parent: str = "") -> Result:
        request = validate(MachineCreate, body, creating=True)
        require(MachineCreate, request)
        await self.ensure_driver()
        config = self.config["compute"]
        async with self.store.write() as tx:
            template = await self.references.resolve(tx, MachineCreate.attribute("machineTemplate"),
                                                     request["machineTemplate"], ctx.scope)
            if not template.get("machineConfig"):
                raise BadRequest("the machineTemplate needs a machineConfig")
            # Without a machineImage the machine boots from a bootable volume its template names.
            boot_volume = not template.get("machineImage")
            if boot_volume and not (template.get("volumes") or template.get("volumeTemplates")):
                raise BadRequest("the machineTemplate needs a machineImage, or a bootable volume to boot from "
                                 "(in volumes or volumeTemplates)")
            parts = {}
            for name in ("machineConfig", "machineImage", "credential", "eventLogTemplate"):
                value = template.get(name)
                if value:
                    parts[name] = await self.references.resolve(tx, MachineTemplate.attribute(name), value,
                                                                ctx.scope)
            conf = parts["machineConfig"]
            image = parts.get("machineImage", {})
            await self.check_quotas(tx, ctx, {"machines": 1, "cpu": conf["cpu"], "memory": conf["memory"]})
            if boot_volume:
                pass
            elif self.drivers.images is not None and self.drivers.images.imports_images and not image.get("_href"):
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
                image_id=image["_href"].rsplit("/", 1)[1] if image.get("_href") else None, boot_volume=boot_volume,
                credential={k: credential[k] for k in ("userName", "password", "key") if k in credential}
                if credential else None,
            )
            part_steps = []  # what the other families (volumes, networks) make with the machine
            for family in TEMPLATE_PARTS.values():
                service = self.parts.service_of(family.types[0])
                asked = [name for name in family.machine_template_parts if template.get(name)]
                if service is None:
                    if asked:
                        raise BadRequest(f"this provider serves no {family.name.capitalize()}: the machineTemplate cannot name "
                                         f"{' or '.join(asked)}")
                    continue
                if await service.plan_for_machine(tx, ctx, machine_id, template, spec):
                    part_steps.append({"op": "part", "family": family.name, "transitional": "CREATING"})
            machine = Row(Machine.name, machine_id, "", attrs, owner=ctx.user,
                          internal={"spec": asdict(spec), "stable": None, "image": image.get("_href")})
            await tx.insert(machine)
            tx.emit(model_changed(Machine, machine, "created", ctx.user))
            await self.parts.service_of(EventLog).open_log(
                tx, Machine, machine, parts.get("eventLogTemplate", {}).get("persistence"))
            for disk in spec.disks[1:] if boot_volume else spec.disks:  # a boot volume stands for the first
                disk_attrs = {"created": stamp, "capacity": disk["capacity"]}
                if disk.get("initialLocation"):
                    disk_attrs["initialLocation"] = disk["initialLocation"]
                await tx.insert(Row(Disk.name, new_id(), machine_id, disk_attrs, owner=ctx.user))
            steps = [{"op": "create", "transitional": "CREATING"}, *part_steps]
            if initial == "STARTED":
                steps.append({"op": "start", "transitional": "STARTING"})
            job = await self._queue(tx, ctx, machine, "add", steps, target=Machine.collection,
                                    success=f"Machine created, {initial}")
        return job_result(ctx, job, 202, location=f"machines/{machine.id}")

    # ---------------------------------------------------------------- actions and delete

    async def action(self, ctx: Context, rtype: ResourceType, id: str, operation: str, root: str | None,
                     body: dict, if_match: str | None) -> Result:
        if root == MachineImage.name and operation in ("capture", "snapshot"):
            # capture and snapshot also take the new image's representation (name, description, properties)
            attrs = validate(MachineImage, body, creating=True)
            extra = {k: v for k, v in attrs.items() if k in ("name", "description", "properties")}
            return await self.act(ctx, rtype, id, rtype.actions[operation], {"imageAttributes": extra}, if_match)
        return await super().action(ctx, rtype, id, operation, root, body, if_match)

    async def act(self, ctx: Context, rtype: ResourceType, id: str, action: Action, request: dict,
                  if_match: str | None) -> Result:
        await self.ensure_driver()
        async with self.store.write() as tx:
            machine = await self.changeable(tx, ctx, Machine, id)
            check_if_match(machine, if_match)
            if machine.state not in action.from_states:
                raise Conflict(f"cannot {action.name} Machine '{id}' while it is {machine.state}; "
                               f"{action.name} needs one of {', '.join(action.from_states)}")
            force = bool(request.get("force", False))
            if action.name in ("capture", "snapshot", "restore") and machine.internal["spec"].get("boot_volume"):
                raise Conflict(f"Machine '{id}' boots from a Volume: {action.name} that volume "
                               "(its VolumeImages) instead")
            if action.name in ("capture", "snapshot"):
                return await self._capture(tx, ctx, machine, action, request.get("imageAttributes", {}))
            if action.name == "restore":
                image_id = await self._restorable(tx, request.get("image"), ctx.scope)
                steps = [{"op": "restore", "image": image_id, "transitional": "RESTORING"}]
            elif action.name == "restart" and machine.state == "STOPPED":
                steps = [{"op": "start", "transitional": "STARTING"}]
            elif action.name == "restart":
                steps = [{"op": "stop", "force": force, "transitional": "STOPPING"},
                         {"op": "start", "transitional": "STARTING"}]
            else:
                steps = [{"op": action.name, "force": force, "transitional": action.transitional}]
            job = await self._queue(tx, ctx, machine, action.uri, steps, target=f"machines/{id}",
                                    success=f"Machine {action.final}")
        return job_result(ctx, job, 202, location=f"machines/{machine.id}")

    async def _capture(self, tx: Transaction, ctx: Context, machine: Row, action: Action, attrs: dict):
        """A new MachineImage (IMAGE for capture, SNAPSHOT for snapshot), made by a Job."""
        stamp = now()
        kind = "IMAGE" if action.name == "capture" else "SNAPSHOT"
        image_attrs = {"name": f"{machine.attrs.get('name') or machine.id} {action.name}", **attrs,
                       "created": stamp, "updated": stamp, "state": "CREATING", "type": kind,
                       "imageLocation": ctx.base + f"machines/{machine.id}"}
        if kind == "SNAPSHOT" and machine.internal.get("image"):
            image_attrs["relatedImage"] = {"href": machine.internal["image"]}
        image = Row(MachineImage.name, new_id(), "", image_attrs, **self.ownership(ctx, MachineImage))
        await tx.insert(image)
        tx.emit(model_changed(MachineImage, image, "created", ctx.user))
        steps = [{"op": "capture", "image": image.id, "transitional": "CAPTURING"}]
        job = await self._queue(tx, ctx, machine, action.uri, steps, target=f"machines/{machine.id}",
                                success=f"MachineImage {kind} made", affected=[f"machineImages/{image.id}"])
        return job_result(ctx, job, 202, location=f"machineImages/{image.id}")

    async def _restorable(self, tx: Transaction, ref: dict | None, scope: str | None) -> str:
        if not ref or "href" not in ref:
            raise BadRequest("restore needs an image: {\"href\": \"<a MachineImage of this provider>\"}")
        return (await self.references.available(tx, MachineImage, ref["href"], "image", scope)).id

    async def delete(self, ctx: Context, rtype: ResourceType, id: str, if_match: str | None,
                     parent: str | None = None) -> Result:
        await self.ensure_driver()
        async with self.store.write() as tx:
            machine = await self.changeable(tx, ctx, Machine, id)
            check_if_match(machine, if_match)
            if machine.state in Machine.transitional_states:
                raise Conflict(f"Machine '{id}' is {machine.state}; wait for its Job to finish")
            job = await self._queue(tx, ctx, machine, "delete", [{"op": "delete", "transitional": "DELETING"}],
                                    target=f"machines/{id}", success="Machine deleted")
        return job_result(ctx, job, 202, location=f"machines/{machine.id}")

    async def _queue(self, tx: Transaction, ctx: Context, machine: Row, action: str, steps: list[dict], *,
                     target: str, success: str, affected: list[str] = ()) -> Row:
        """Persist the Job (and nested Jobs for several steps), mark the machine transitional."""
        job = await self.jobs.queue(tx, KIND, action=action, target=target,
                                    affected=[f"machines/{machine.id}", *affected], steps=steps, success=success,
                                    owner=ctx.user, machine=machine.id, prior=machine.state)
        if machine.state != "CREATING":
            previous = machine.state
            machine.attrs["state"] = steps[0]["transitional"]
            await tx.update(machine)
            record_state(tx, machine, previous, f"{action.rsplit('/', 1)[-1]} asked by {ctx.user}", ctx.user)
        return job

    # ---------------------------------------------------------------- job steps

    async def run_step(self, job: Row, step: dict) -> None:
        machine_id = job.internal["machine"]
        op = step["op"]
        if op == "create":
            machine = await self.store.get(Machine.name, machine_id)
            await self.driver.create(MachineSpec(**machine.internal["spec"]))
        elif op in ("stop",):
            await self.driver.stop(machine_id, step.get("force", False))
        elif op in ("start", "pause", "suspend", "delete"):
            await getattr(self.driver, op)(machine_id)
        elif op == "capture":
            return await self.driver.capture(machine_id, step["image"])
        elif op == "restore":
            await self.driver.restore(machine_id, step["image"])
        elif op in ("part", "volumes"):  # what another family makes with it, before it first starts
            await self._part_service(step).realise_for_machine(machine_id)
        else:
            raise DriverError(f"unknown step '{op}'")

    def _part_service(self, step: dict) -> ResourceService:
        # "volumes": the op of a Job stored before the families took part through machine_template_parts
        return self.parts.service_of(TEMPLATE_PARTS[step.get("family", "volumes")].types[0])

    async def _settle_parts(self, tx: Transaction, job: Row, machine_id: str, succeeded: bool) -> None:
        for step in job.internal["steps"]:
            if step["op"] in ("part", "volumes"):
                await self._part_service(step).settle_for_machine(tx, machine_id, succeeded, job.owner)

    async def observe(self, job: Row) -> tuple[str | None, str | None] | None:
        """(the state the host reports, for a restore the image the boot disk now stands on)."""
        machine_id = job.internal["machine"]
        state = await self._read_state(machine_id)
        boot_image = None
        if job.internal["steps"][-1]["op"] == "restore" and state is not None:
            try:
                boot_image = await self.driver.boot_image(machine_id)
            except DriverError as exc:
                log.warning("cannot read which image machine %s stands on: %s", machine_id, exc)
        return state, boot_image

    async def _read_state(self, machine_id: str) -> str | None:
        try:
            return await self.driver.state(machine_id)
        except DriverError as exc:
            log.warning("cannot read the state of machine %s: %s", machine_id, exc)
            return None

    async def finish(self, tx: Transaction, job: Row, outcome: str, message: str, observed) -> tuple[str, str] | None:
        machine = await tx.get(Machine.name, job.internal["machine"])
        if machine is None:
            return
        if outcome == "STEP":
            if machine.state != message:
                previous = machine.state
                machine.attrs["state"] = message
                await tx.update(machine)
                record_state(tx, machine, previous, f"Job {job.attrs.get('name')} began a step", job.owner)
            return
        observed, boot_image = observed or (None, None)
        last = job.internal["steps"][-1]
        await self._settle_parts(tx, job, machine.id, outcome == "SUCCESS")
        if last["op"] == "delete" and (outcome == "SUCCESS" or observed is None):
            await tx.delete(Machine.name, machine.id)  # deleted, or gone from the host already
            for family in TEMPLATE_PARTS.values():
                service = self.parts.service_of(family.types[0])
                if service is not None:
                    await service.machine_deleted(tx, machine.id, job.owner)
            if outcome != "SUCCESS":
                # A delete cut short once the domain was gone has not removed the disks yet (the driver's
                # delete is idempotent: no domain, so only what is left goes).
                try:
                    await self.driver.delete(machine.id)
                except DriverError as exc:
                    log.warning("machine %s: its leftovers could not be removed: %s", machine.id, exc)
            tx.emit(model_changed(Machine, machine, "deleted", job.owner))
            return
        previous = machine.state
        if last["op"] == "capture":
            await self._settle_capture(tx, machine, last, outcome == "SUCCESS")
        if outcome == "SUCCESS" and last["op"] == "restore":
            machine.internal["image"] = f"machineImages/{last['image']}"  # the disk now stands on it
        elif last["op"] == "restore" and boot_image:
            # A restore that failed or was cut short may have replaced the disk already: the image it
            # stands on is in use (it must not be deleted under the machine).
            machine.internal["image"] = f"machineImages/{boot_image}"
        settle(machine, observed)
        await tx.update(machine)
        record_state(tx, machine, previous, message, job.owner)
        if outcome == "SUCCESS" and observed is None:
            return "FAILED", "the hypervisor no longer knows this machine"
        return None

    async def _settle_capture(self, tx: Transaction, machine: Row, step: dict, succeeded: bool) -> None:
        image = await tx.get(MachineImage.name, step["image"])
        if image is None:
            return
        if not succeeded:
            await tx.delete(MachineImage.name, image.id)
            if self.drivers.images is not None:  # a capture cut short by a crash leaves its partial file
                await self.drivers.images.delete_image(image.id)
            tx.emit(model_changed(MachineImage, image, "deleted", detail="MachineImage not made: its Job failed"))
            return
        image.attrs["state"] = "AVAILABLE"
        image.attrs["imageLocation"] = step["result"]["location"]
        await tx.update(image)
        tx.emit(state_changed(MachineImage, image, "CREATING", "captured"))
        if image.attrs["type"] == "SNAPSHOT":
            await tx.insert(Row(MachineSnapshot.name, new_id(), machine.id, owner=machine.owner, attrs={
                "created": now(), "snapshot": {"href": f"machineImages/{image.id}"}}))
            machine.attrs["latestSnapshot"] = {"href": f"machineImages/{image.id}"}

    async def abandon(self, tx: Transaction, job: Row) -> None:
        """A QUEUED Job was stopped: nothing reached the host, so undo only what the request recorded."""
        machine = await tx.get(Machine.name, job.internal["machine"])
        if machine is None:
            return
        first = job.internal["steps"][0]
        await self._settle_parts(tx, job, machine.id, False)
        if first["op"] == "create":
            await tx.delete(Machine.name, machine.id)
            tx.emit(model_changed(Machine, machine, "deleted", job.owner, "Machine not made: its Job was stopped"))
        else:
            if first["op"] == "capture":
                await tx.delete(MachineImage.name, first["image"])
            previous = machine.state
            machine.attrs["state"] = job.internal["prior"]
            await tx.update(machine)
            record_state(tx, machine, previous, "its Job was stopped before it began", job.owner)

    # ---------------------------------------------------------------- the host changes by itself

    def on_event(self, machine_id: str, state: str, reason: str) -> None:
        """The host changed a machine by itself (a guest powered off, crashed): follow it."""
        if self.store.is_open:  # events can still arrive while cimid shuts down
            asyncio.get_running_loop().create_task(self._follow(machine_id, state, reason))

    async def _follow(self, machine_id: str, state: str, reason: str) -> None:
        """libvirt's events reach cimid on a thread of their own, in no fixed order with a Job's look at the
        host: one may be older news than what a Job just settled the machine with (its own start's, say).
        So an event is checked against the host before it changes anything: followed where the host agrees
        (a crash reads back as SHUTOFF: STOPPED agrees with the event's ERROR), dropped where it does not (a
        later event, or the next Job, brings what happened since). Events are settled one at a time, in the
        order they came (they are rare: a guest powering off or crashing)."""
        async with self._following:
            machine = await self.store.get(Machine.name, machine_id) if self.store.is_open else None
            if not _moved_by(machine, state):
                return
            now = await self._read_state(machine_id)
            if not self.store.is_open or (now != state and not (state == "ERROR" and now == "STOPPED")):
                return  # old news, or the host knows the machine no more
            async with self.store.write() as tx:
                machine = await tx.get(Machine.name, machine_id)
                if not _moved_by(machine, state):  # as read again under the write
                    return
                previous = machine.state
                settle(machine, state)
                await tx.update(machine)
                record_state(tx, machine, previous, reason)
                if state == "ERROR":  # a crash is an alarm too
                    tx.emit(Alarm(Machine.name, f"machines/{machine_id}", 1, reason, owner=machine.owner,
                                  name=machine.attrs.get("name", ""), severity="critical"))

    async def extension(self, ctx: Context, rtype: ResourceType, id: str, extension: Extension,
                        query: dict[str, str]) -> Result:
        """The serial console: the last `bytes` bytes the guest wrote, as text."""
        text = query.get("bytes", "65536")
        if not text.isdigit() or int(text) < 1:
            raise BadRequest(f"bytes must be a positive integer, not '{text}'")
        await self.load(ctx, rtype, id)
        try:
            return Result(200, text=await self.driver.console(id, int(text)))
        except DriverError as exc:
            raise Unavailable(f"the console cannot be read: {exc}") from None

    async def forget_host(self, tx: Transaction) -> None:
        await self.ensure_driver()
        await self.driver.forget()  # every machine at once (the sandbox: a new, empty fake host)

    # ---------------------------------------------------------------- restart

    async def start(self) -> None:
        """After a restart: rebuild volatile backends, resume Jobs that never began, fail interrupted ones,
        and re-read every machine left in a transitional state from the hypervisor."""
        try:
            await self.ensure_driver()
        except Unavailable as exc:
            log.warning("%s; machine changes answer 503 until it is", exc)
            return
        machines = await self.store.all_of(Machine.name)
        await self.driver.adopt([(MachineSpec(**m.internal["spec"]), m.internal.get("stable"))
                                 for m in machines if m.internal.get("stable")])
        resumed = {job.internal["machine"] for job in await self.jobs.recover(KIND)}
        for machine in await self.store.all_of(Machine.name, Machine.transitional_states):
            if machine.id in resumed:
                continue
            observed = await self._read_state(machine.id)
            async with self.store.write() as tx:
                current = await tx.get(Machine.name, machine.id)
                previous = current.state
                settle(current, observed)
                await tx.update(current)
                record_state(tx, current, previous, "re-read from the hypervisor after cimid restarted")
            log.info("machine %s was %s at start-up; the hypervisor says %s", machine.id, machine.state,
                     observed or "nothing (ERROR)")

