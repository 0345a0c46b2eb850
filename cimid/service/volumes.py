"""Volumes: made from a VolumeTemplate (by value, or by reference with overrides) in a storage pool,
grown, snapshotted into VolumeImages and restored from them, attached to Machines (MachineVolume, a
Machine's `volumes`). Every check (pool, capacity against the pool's free space, quota, who uses the
volume) is made before any host work starts; the host work is a Job, and a Job that fails leaves no
row, file or attachment behind."""

from __future__ import annotations

import asyncio
import logging
import re

from ..errors import BadRequest, Conflict, DriverError, Unavailable
from ..hookspecs import MachineSpec
from ..model import Action, Attribute, ResourceType
from ..model.machines import Machine
from ..model.volumes import (POOL_TYPE_PREFIX, MachineVolume, Volume, VolumeConfiguration, VolumeCreate,
                             VolumeImage, VolumeTemplate, VolumeVolumeImage)
from ..model.validate import require, validate
from ..store.db import Row, Transaction
from .events import Alarm, model_changed, state_changed
from .hrefs import href_to_id, new_id, now, path_of, split_href
from .present import Context, Result, check_if_match
from .resources import ResourceService
from .runner import INTERRUPTED, JobKind, job_result
from .sweeps import start_sweep

log = logging.getLogger("cimid.volumes")
KIND = "volume"  # the Job kind
# Beyond any disk a host could hold (1 PiB in KB): refused as input, not weighed against a pool.
ABSURD_KB = 1 << 40
DEVICE = re.compile(r"^vd[b-z]$")  # virtio disks after the boot disk (vda)


def own_devices(disk_count: int) -> list[str]:
    """The guest disk names of a machine's own disks: vda (its image, or the volume it boots from), then its
    configuration's other disks in order."""
    return [f"vd{chr(ord('a') + i)}" for i in range(max(disk_count, 1))]


# A VolumeTemplate given by reference with overrides, as a MachineTemplate's volumeTemplates items give it.
VOLUME_TEMPLATE_REF = Attribute("volumeTemplate", "ref", target="VolumeTemplate", by_value=True)


def pool_name(volume_type: str | None) -> str | None:
    """The pool a VolumeConfiguration's type names; None: the default pool."""
    if volume_type and volume_type.startswith(POOL_TYPE_PREFIX):
        return volume_type[len(POOL_TYPE_PREFIX):]
    return None


class Volumes(ResourceService):
    def __init__(self, family, parts):
        super().__init__(family, parts)
        self.pools = self.drivers.storage
        self.jobs.register(KIND, JobKind(self.run_step, self.observe, self.finish, self.abandon,
                                         self.outcome_kept_by_host))
        self._full: set[str] = set()  # pools over storage.full_alarm_percent, alarmed once
        self._space_lock = asyncio.Lock()
        self._space_watch: asyncio.Task | None = None
        self._looks: set[asyncio.Task] = set()  # looks at the space after a Job, ended by stop()

    async def ensure_storage(self) -> None:
        try:
            await self.drivers.open("storage")
        except DriverError as exc:
            raise Unavailable(f"the storage pools are not available: {exc}") from None

    async def ensure_compute(self) -> None:
        if self.drivers.compute is None:
            raise Unavailable("this provider runs no machines: volumes cannot be attached")
        try:
            await self.drivers.open("compute")
        except DriverError as exc:
            raise Unavailable(f"the hypervisor is not available: {exc}") from None

    async def start(self) -> None:
        try:
            await self.ensure_storage()
        except Unavailable as exc:
            log.warning("%s; volume changes answer 503 until they are", exc)
            return
        held: dict[str, tuple[dict, dict]] = {name: ({}, {}) for name in self.pools.pools}
        for volume in await self.store.all_of(Volume.name):
            if volume.internal.get("pool") in held and volume.state != "CREATING":
                held[volume.internal["pool"]][0][volume.id] = volume.attrs["capacity"]
        for image in await self.store.all_of(VolumeImage.name, ("AVAILABLE",)):
            if image.internal.get("pool") in held:
                held[image.internal["pool"]][1][image.id] = image.internal.get("capacity_kb", 0)
        for name, (volumes, images) in held.items():
            await self.pools.pool(name).adopt(volumes, images)
        await self.jobs.recover(KIND)
        self._full = set()
        self._space_watch = await start_sweep("storage pool space", self.check_space,
                                              self.config["storage"]["space_check_seconds"])

    async def stop(self) -> None:
        for task in [self._space_watch, *self._looks]:
            if task is not None:
                task.cancel()
        self._space_watch, self._looks = None, set()

    async def check_space(self) -> None:
        """An alarm Event in the provider's log when a pool gets fuller than storage.full_alarm_percent:
        once when it crosses, not at every look; it is armed again once the pool is below the mark. Looked
        at every storage.space_check_seconds (the guests' writes fill a pool too) and after each volume Job."""
        limit = self.config["storage"]["full_alarm_percent"]
        async with self._space_lock:  # two looks at once would both see the crossing
            for name, pool in self.pools.pools.items():
                try:
                    space = await pool.space()
                except DriverError as exc:
                    log.warning("cannot read the space of storage pool '%s': %s", name, exc)
                    continue
                total, free = space["total_kb"], space["free_kb"]
                full = 100 * (total - free) / total if total > 0 else 0
                if full <= limit:
                    self._full.discard(name)
                    continue
                if name in self._full:
                    continue
                async with self.store.write() as tx:
                    tx.emit(Alarm("CloudEntryPoint", "cloudEntryPoint", 1,
                                  f"storage pool '{name}' is {full:.1f} % full, over storage.full_alarm_percent "
                                  f"({limit} %): {free} of {total} KiB free", name=f"storage pool {name}"))
                self._full.add(name)
                log.warning("storage pool '%s' is %.1f %% full (%d of %d KiB free)", name, full, free, total)

    def _look_at_space(self) -> None:
        """After a volume Job's commit: look at the pools' space without waiting for the next round."""
        task = asyncio.get_running_loop().create_task(self._look(), name="storage pool space")
        self._looks.add(task)
        task.add_done_callback(self._looks.discard)

    async def _look(self) -> None:
        try:
            await self.check_space()
        except Exception:  # the next round looks again
            log.exception("looking at the storage pools' space failed")

    async def usage(self, reader, owner: str) -> dict[str, int]:
        _count, totals = await reader.usage(Volume.name, owner, ("capacity",))
        return {"volume_capacity": totals.get("capacity", 0)}

    def capabilities(self, rtype: ResourceType) -> dict[str, object]:
        if rtype is Volume:
            return {"VolumeTemplateByValue": True, "VolumeConfigByValue": True}
        return {}

    def _pool(self, volume_type: str | None):
        name = pool_name(volume_type) or self.pools.default
        pool = self.pools.pool(name)
        if pool is None:
            raise BadRequest(f"type: there is no storage pool '{name}'; the pools are "
                             f"{', '.join(sorted(self.pools.pools))} ({POOL_TYPE_PREFIX}<pool>)")
        return name, pool

    def _check_type(self, attrs: dict) -> None:
        """A VolumeConfiguration's type is a pool of this provider (or a CIMI type, which means the default)."""
        if attrs.get("type", "").startswith(POOL_TYPE_PREFIX):
            self._pool(attrs["type"])

    # ---------------------------------------------------------------- create

    async def create(self, ctx: Context, rtype: ResourceType, body: dict, parent: str = "") -> Result:
        if rtype is Volume:
            return await self._create_volume(ctx, body)
        if rtype is MachineVolume:
            return await self._attach(ctx, body, parent)
        if rtype is VolumeImage:
            return await self._create_image(ctx, body)
        if rtype is VolumeConfiguration:
            self._check_type(validate(rtype, body, creating=True))
        if rtype is VolumeTemplate:
            config = validate(rtype, body, creating=True).get("volumeConfig")
            if isinstance(config, dict) and "href" not in config:
                self._check_type(config)
        return await super().create(ctx, rtype, body, parent)

    async def _create_volume(self, ctx: Context, body: dict) -> Result:
        request = validate(VolumeCreate, body, creating=True)
        require(VolumeCreate, request)
        await self.ensure_storage()
        async with self.store.write() as tx:
            template = await self.references.resolve(tx, VolumeCreate.attribute("volumeTemplate"),
                                                     request["volumeTemplate"], ctx.scope)
            if not template.get("volumeConfig"):
                raise BadRequest("the volumeTemplate needs a volumeConfig")
            config, capacity, name, pool, image = await self._plan(tx, ctx, template, "volumeConfig")
            await self.check_quotas(tx, ctx, {"volume_capacity": capacity})
            await self._check_space(pool, name, capacity)
            stamp = now()
            attrs = {"created": stamp, "updated": stamp, "state": "CREATING", "capacity": capacity,
                     "bootable": bool(image and image.attrs.get("bootable"))}
            if config.get("type"):
                attrs["type"] = config["type"]
            attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
            volume = Row(Volume.name, new_id(), "", attrs, owner=ctx.user,
                         internal={"pool": name, "from_image": image.id if image else None})
            await tx.insert(volume)
            tx.emit(model_changed(Volume, volume, "created", ctx.user))
            job = await self._queue(tx, ctx, volume, "add", {"op": "create", "image": image.id if image else None},
                                    target=Volume.collection, success="Volume created")
        return job_result(ctx, job, 202, location=f"volumes/{volume.id}")

    async def _usable_image(self, tx: Transaction, ref: dict, scope: str | None, pool: str) -> Row:
        if "href" not in ref:
            raise BadRequest("volumeImage: give a VolumeImage by reference")
        image = await self.references.available(tx, VolumeImage, ref["href"], "volumeImage", scope)
        if image.internal.get("pool") != pool:
            raise BadRequest(f"VolumeImage '{image.id}' is kept in pool '{image.internal.get('pool')}', not in "
                             f"'{pool}' where this volume would be made")
        return image

    async def _plan(self, tx: Transaction, ctx: Context, template: dict, where: str):
        """What a resolved VolumeTemplate makes: (its configuration, the capacity in KB — at least its
        image's —, the pool's name, the pool, the VolumeImage or None)."""
        config = await self.references.resolve(tx, VolumeTemplate.attribute("volumeConfig"),
                                               template["volumeConfig"], ctx.scope)
        capacity = config["capacity"]
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise BadRequest(f"{where}.capacity: must be a positive number of kilobytes, not {capacity!r}")
        if capacity > ABSURD_KB:
            raise BadRequest(f"{where}.capacity: {capacity} KB is beyond any disk (at most {ABSURD_KB})")
        name, pool = self._pool(config.get("type"))
        image = None
        if template.get("volumeImage"):
            image = await self._usable_image(tx, template["volumeImage"], ctx.scope, name)
            capacity = max(capacity, image.internal.get("capacity_kb", 0))
        return config, capacity, name, pool, image

    @staticmethod
    async def _check_space(pool, name: str, needed_kb: int) -> None:
        space = await pool.space()
        if space.get("fill_percent", 0) > space.get("fill_limit_percent", 100):  # a thin pool nearly full
            raise Conflict(f"storage pool '{name}' is {space['fill_percent']:.1f}% full, over its limit of "
                           f"{space['fill_limit_percent']}%; new volumes are refused until it has room")
        if needed_kb > space["free_kb"]:
            raise Conflict(f"storage pool '{name}' has {space['free_kb']} KB free; this needs {needed_kb} KB")

    # ---------------------------------------------------------------- attach and detach

    async def _attach(self, ctx: Context, body: dict, machine_id: str) -> Result:
        attrs = validate(MachineVolume, body, creating=True)
        require(MachineVolume, attrs)
        device = attrs.get("initialLocation")
        if device is not None and not DEVICE.match(device):
            raise BadRequest(f"initialLocation: '{device}' is not a guest disk name this provider gives "
                             "(vdb to vdz; vda is the boot disk)")
        await self.ensure_storage()
        await self.ensure_compute()
        async with self.store.write() as tx:
            machine = await self.changeable(tx, ctx, Machine, machine_id)
            if machine.state in Machine.transitional_states or machine.state == "ERROR":
                raise Conflict(f"Machine '{machine_id}' is {machine.state}; volumes are attached to a machine "
                               "that is STARTED, STOPPED, PAUSED or SUSPENDED")
            volume = await self.changeable(tx, ctx, Volume, href_to_id(attrs["volume"]["href"], Volume, "volume"))
            if volume.state != "AVAILABLE":
                raise Conflict(f"Volume '{volume.id}' is {volume.state}, not AVAILABLE")
            # The volume's attachments and the machine's, in one look.
            related = await tx.children_or_referring(MachineVolume.name, machine_id, "volume", volume.id)
            users = [mv for mv in related if mv.internal["volume"] == volume.id]
            if any(mv.parent == machine_id for mv in users):
                raise Conflict(f"Volume '{volume.id}' is already attached to Machine '{machine_id}'")
            if users and not self.pools.pool(volume.internal["pool"]).shareable:
                raise Conflict(f"Volume '{volume.id}' is in use by Machine '{users[0].parent}' "
                               f"(machines/{users[0].parent}); its pool is not shareable")
            # The disks cimid gave the machine, from the store (no look at the host: a disk added behind
            # cimid's back is refused by the hypervisor in the Job, which then fails changing nothing).
            taken = set(own_devices(len(machine.internal["spec"]["disks"])))
            taken |= {mv.internal["device"] for mv in related if mv.parent == machine_id}
            if device is None:
                device = next((f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"vd{c}" not in taken), None)
                if device is None:
                    raise Conflict(f"Machine '{machine_id}' has no free disk name left")
            elif device in taken:
                raise Conflict(f"initialLocation: Machine '{machine_id}' already has a disk '{device}'")
            stamp = now()
            mv_attrs = {"created": stamp, "updated": stamp, "initialLocation": device,
                        "volume": {"href": f"volumes/{volume.id}"}}
            mv_attrs.update({k: attrs[k] for k in ("name", "description", "properties") if k in attrs})
            attachment = Row(MachineVolume.name, new_id(), machine_id, mv_attrs, owner=ctx.user,
                             internal={"device": device, "volume": volume.id})
            await tx.insert(attachment)
            tx.emit(model_changed(MachineVolume, attachment, "created", ctx.user))
            path = path_of(MachineVolume, attachment.id, machine_id)
            job = await self._queue(tx, ctx, volume, "add",
                                    {"op": "attach", "machine": machine_id, "device": device,
                                     "attachment": attachment.id},
                                    target=f"machines/{machine_id}/volumes", success="Volume attached",
                                    affected=[path], begin=True)  # a hot-plug: no commit of its own to begin
        await asyncio.sleep(0)  # the Job reaches the hypervisor before this answer is rendered and sent
        return job_result(ctx, job, 202, location=path)

    # ---------------------------------------------------------------- volumes of a MachineTemplate

    async def plan_for_machine(self, tx: Transaction, ctx: Context, machine_id: str, template: dict,
                               spec: MachineSpec) -> bool:
        """Check, before any work, the volumes a new machine's template attaches (`volumes`) and makes
        (`volumeTemplates`), and record them: new Volumes CREATING, a MachineVolume for each, pending
        until the machine's Job realises them (realise_for_machine) and settles them (settle_for_machine).
        A machine without a machineImage (`spec.boot_volume`) boots from the first bootable one, as vda."""
        attach, make = template.get("volumes") or [], template.get("volumeTemplates") or []
        boot = spec.boot_volume
        if not attach and not make:
            return False
        devices = own_devices(len(spec.disks))
        chosen: list[tuple[Row, str | None]] = []
        for index, item in enumerate(attach):
            where = f"machineTemplate.volumes[{index}]"
            volume_id = href_to_id(item["href"], Volume, where)
            volume = await tx.get(Volume.name, volume_id, ctx.scope)
            if volume is None or not ctx.may_change(volume):
                raise BadRequest(f"{where}: '{item['href']}' does not name a Volume of yours")
            if volume.state != "AVAILABLE":
                raise Conflict(f"{where}: Volume '{volume_id}' is {volume.state}, not AVAILABLE")
            users = await self._attachments(tx, volume_id)
            if users and not self.pools.pool(volume.internal["pool"]).shareable:
                raise Conflict(f"{where}: Volume '{volume_id}' is in use by Machine '{users[0].parent}' "
                               f"(machines/{users[0].parent}); its pool is not shareable")
            if any(v.id == volume_id for v, _ in chosen):
                raise BadRequest(f"{where}: Volume '{volume_id}' is named twice")
            chosen.append((volume, item.get("initialLocation")))
        needed: dict[str, int] = {}
        made: list[tuple[dict, str | None, str, Row | None]] = []
        for index, item in enumerate(make):
            where = f"machineTemplate.volumeTemplates[{index}]"
            volume_template = {k: v for k, v in item.items() if k != "initialLocation"}
            if "href" in volume_template:
                volume_template = await self.references.resolve(tx, VOLUME_TEMPLATE_REF, volume_template, ctx.scope)
            if not volume_template.get("volumeConfig"):
                raise BadRequest(f"{where}: needs a volumeConfig (or an href to a VolumeTemplate)")
            config, capacity, name, _pool, image = await self._plan(tx, ctx, volume_template,
                                                                    f"{where}.volumeConfig")
            needed[name] = needed.get(name, 0) + capacity
            made.append(({"capacity": capacity, "type": config.get("type")}, item.get("initialLocation"), name,
                         image))
        await self.check_quotas(tx, ctx, {"volume_capacity": sum(needed.values())})
        for name, total in needed.items():
            await self._check_space(self.pools.pool(name), name, total)
        stamp = now()
        for attrs, device, name, image in made:
            volume_attrs = {"created": stamp, "updated": stamp, "state": "CREATING", "capacity": attrs["capacity"],
                            "bootable": bool(image and image.attrs.get("bootable"))}
            if attrs["type"]:
                volume_attrs["type"] = attrs["type"]
            volume = Row(Volume.name, new_id(), "", volume_attrs, owner=ctx.user,
                         internal={"pool": name, "from_image": image.id if image else None, "made_for": machine_id})
            await tx.insert(volume)
            tx.emit(model_changed(Volume, volume, "created", ctx.user))
            chosen.append((volume, device))
        booting = None
        if boot:
            booting = next((volume for volume, _ in chosen if volume.attrs.get("bootable")), None)
            if booting is None:
                raise BadRequest("the machineTemplate has no machineImage and none of its volumes is bootable "
                                 "(a Volume made from a VolumeImage whose bootable is true)")
            chosen = [(volume, "vda" if volume is booting else device) for volume, device in chosen]
        for volume, device in chosen:
            if volume is booting:
                continue
            if device is not None and not DEVICE.match(device):
                raise BadRequest(f"initialLocation: '{device}' is not a guest disk name this provider gives "
                                 "(vdb to vdz; vda is the boot disk)")
            if device is not None and device in devices:
                raise BadRequest(f"initialLocation: '{device}' is taken (by the machine's own disks or another "
                                 "volume)")
            devices.append(device)
        free = [f"vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"vd{c}" not in devices]
        for volume, device in chosen:
            if device is None:
                if not free:
                    raise BadRequest("the machineTemplate names more volumes than the machine has disk names")
                device = free.pop(0)
            attachment = Row(MachineVolume.name, new_id(), machine_id,
                             {"created": stamp, "updated": stamp, "initialLocation": device,
                              "volume": {"href": f"volumes/{volume.id}"}}, owner=ctx.user,
                             internal={"device": device, "volume": volume.id, "pending_for": machine_id})
            await tx.insert(attachment)
        return True

    async def realise_for_machine(self, machine_id: str) -> None:
        """In the new machine's Job, after its domain is defined: make its template's new volumes, and
        attach every volume it names (before it first starts)."""
        await self.ensure_storage()
        for attachment in await self.store.referring(MachineVolume.name, "pending_for", machine_id):
            volume = await self.store.get(Volume.name, attachment.internal["volume"])
            pool = self.pools.pool(volume.internal["pool"])
            if volume.internal.get("made_for") == machine_id and await pool.volume(volume.id) is None:
                await pool.create_volume(volume.id, volume.attrs["capacity"], volume.internal.get("from_image"))
            await self.drivers.compute.attach_volume(machine_id, attachment.internal["device"],
                                                     await pool.attachment(volume.id))

    async def settle_for_machine(self, tx: Transaction, machine_id: str, succeeded: bool, owner: str) -> None:
        """The new machine's Job ended: its volumes are ready, or (it failed or was stopped) every volume
        made for it is removed and every attachment undone, so nothing half-made stays."""
        for attachment in await tx.referring(MachineVolume.name, "pending_for", machine_id):
            volume = await tx.get(Volume.name, attachment.internal["volume"])
            made_here = volume is not None and volume.internal.get("made_for") == machine_id
            if succeeded:
                attachment.internal.pop("pending_for")
                await tx.update(attachment)
                if made_here:
                    volume.internal.pop("made_for")
                    volume.attrs["state"] = "AVAILABLE"
                    await tx.update(volume)
                    tx.emit(state_changed(Volume, volume, "CREATING", "made with its machine", owner))
                continue
            await tx.delete(MachineVolume.name, attachment.id)
            if self.drivers.compute is not None:
                try:
                    await self.drivers.compute.detach_volume(machine_id, attachment.internal["device"])
                except DriverError as exc:
                    log.warning("machine %s: %s could not be detached: %s", machine_id,
                                attachment.internal["device"], exc)
            if made_here:
                await tx.delete(Volume.name, volume.id)
                await self.pools.pool(volume.internal["pool"]).delete_volume(volume.id)
                tx.emit(model_changed(Volume, volume, "deleted", owner, "Volume not made: its machine's Job failed"))

    async def _attachments(self, tx: Transaction, volume_id: str) -> list[Row]:
        return await tx.referring(MachineVolume.name, "volume", volume_id)

    async def delete(self, ctx: Context, rtype: ResourceType, id: str, if_match: str | None,
                     parent: str | None = None) -> Result:
        if rtype is MachineVolume:
            return await self._detach(ctx, id, parent, if_match)
        if rtype is Volume:
            return await self._delete_volume(ctx, id, if_match)
        return await super().delete(ctx, rtype, id, if_match, parent)

    async def _detach(self, ctx: Context, id: str, machine_id: str, if_match: str | None) -> Result:
        await self.ensure_compute()
        async with self.store.write() as tx:
            attachment = await self.changeable(tx, ctx, MachineVolume, id, machine_id)
            check_if_match(attachment, if_match)
            if attachment.internal.get("detaching"):
                raise Conflict(f"MachineVolume '{id}' is being detached already")
            if attachment.internal["device"] == "vda":
                raise Conflict(f"MachineVolume '{id}' is the boot disk of Machine '{machine_id}'; deleting the "
                               "machine frees it (the Volume stays)")
            attachment.internal["detaching"] = True
            await tx.update(attachment)
            volume = await tx.get(Volume.name, attachment.internal["volume"])
            path = path_of(MachineVolume, id, machine_id)
            job = await self._queue(tx, ctx, volume, "delete",
                                    {"op": "detach", "machine": machine_id, "device": attachment.internal["device"],
                                     "attachment": id},
                                    target=path, success="Volume detached", affected=[path])
        return job_result(ctx, job, 202, location=path)

    async def before_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        if rtype is VolumeImage:
            users = await tx.count_referring("from_image", row.id)
            if row.state == "CREATING":
                raise Conflict(f"VolumeImage '{row.id}' is still being made; wait for its Job")
            if users:
                raise Conflict(f"VolumeImage '{row.id}' is the base of {users} volume(s); delete them first")

    async def after_delete(self, tx: Transaction, rtype: ResourceType, row: Row) -> None:
        if rtype is VolumeImage:  # no longer among its volume's images
            for association in await tx.referring(VolumeVolumeImage.name, "image", row.id):
                await tx.delete(VolumeVolumeImage.name, association.id)
        if rtype is VolumeImage and row.internal.get("pool"):
            pool = self.pools.pool(row.internal["pool"])
            if pool is not None:
                await pool.delete_image(row.id)

    async def _delete_volume(self, ctx: Context, id: str, if_match: str | None) -> Result:
        await self.ensure_storage()
        async with self.store.write() as tx:
            volume = await self.changeable(tx, ctx, Volume, id)
            check_if_match(volume, if_match)
            if volume.state in Volume.transitional_states:
                raise Conflict(f"Volume '{id}' is {volume.state}; wait for its Job to finish")
            users = await self._attachments(tx, id)
            if users:
                names = ", ".join(f"Machine '{mv.parent}' (machines/{mv.parent})" for mv in users)
                raise Conflict(f"Volume '{id}' is attached to {names}; detach it first")
            job = await self._queue(tx, ctx, volume, "delete", {"op": "delete", "transitional": "DELETING"},
                                    target=f"volumes/{id}", success="Volume deleted")
        return job_result(ctx, job, 202, location=f"volumes/{id}")

    # ---------------------------------------------------------------- update: grow

    async def update(self, ctx: Context, rtype: ResourceType, id: str, body: dict, select: set[str] | None,
                     if_match: str | None) -> Result:
        if rtype is VolumeConfiguration:
            self._check_type(validate(rtype, body, creating=False))
        if rtype is not Volume:
            return await super().update(ctx, rtype, id, body, select, if_match)
        changes = validate(Volume, body, creating=False)
        wanted = changes.get("capacity")
        if wanted is None and (not select or "*" in select or "capacity" in select):
            # A full update replaces every writable attribute, and a volume cannot lose its capacity.
            raise BadRequest("Volume needs 'capacity' (a full update gives every attribute; use $select to "
                             "change only some)")
        if wanted is not None and wanted > ABSURD_KB:
            raise BadRequest(f"capacity: {wanted} KB is beyond any disk (at most {ABSURD_KB})")
        await self.ensure_storage()
        async with self.store.write() as tx:
            volume = await self.changeable(tx, ctx, Volume, id)
            current = volume.attrs["capacity"]
            if wanted is None or wanted == current:
                pass
            elif wanted < current:
                raise BadRequest(f"capacity: a volume cannot shrink (from {current} KB to {wanted} KB); only "
                                 "growing is supported")
            else:
                if volume.state != "AVAILABLE":
                    raise Conflict(f"Volume '{id}' is {volume.state}; wait for its Job to finish")
                await self.check_quotas(tx, ctx, {"volume_capacity": wanted - current})
                await self._check_space(self.pools.pool(volume.internal["pool"]), volume.internal["pool"],
                                        wanted - current)
        # The rest (name, description, properties) is a plain edit; the capacity changes when the grow's
        # Job has done it.
        plain = {k: v for k, v in body.items() if k != "capacity"}
        plain["capacity"] = current
        result = await super().update(ctx, rtype, id, plain, select and (select - {"capacity"}) | {"capacity"},
                                      if_match)
        if wanted is None or wanted <= current:
            return result
        async with self.store.write() as tx:
            volume = await tx.get(Volume.name, id)
            steps = {"op": "grow", "capacity": wanted}
            job = await self._queue(tx, ctx, volume, "edit", steps, target=f"volumes/{id}",
                                    success=f"Volume grown to {wanted} KB")
        return job_result(ctx, job, 202, location=f"volumes/{id}")

    # ---------------------------------------------------------------- images: snapshot, import; restore

    async def _create_image(self, ctx: Context, body: dict) -> Result:
        attrs = validate(VolumeImage, body, creating=True)
        require(VolumeImage, attrs)
        await self.ensure_storage()
        location = attrs["imageLocation"]
        source = self._volume_of(location)
        asked_pool = self._image_pool(attrs)
        async with self.store.write() as tx:
            stamp = now()
            image = Row(VolumeImage.name, new_id(), "", {**attrs, "created": stamp, "updated": stamp,
                                                         "state": "CREATING"}, **self.ownership(ctx, VolumeImage))
            if source is not None:  # DSP0263: an image whose location is a Volume is a snapshot of it
                volume = await self.changeable(tx, ctx, Volume, source)
                if volume.state != "AVAILABLE":
                    raise Conflict(f"Volume '{source}' is {volume.state}, not AVAILABLE")
                if asked_pool not in (None, volume.internal["pool"]):
                    raise BadRequest(f"properties.pool: a snapshot of Volume '{source}' is kept in its pool "
                                     f"'{volume.internal['pool']}', not in '{asked_pool}'")
                await self._check_space(self.pools.pool(volume.internal["pool"]), volume.internal["pool"],
                                        volume.attrs["capacity"])
                image.attrs["imageLocation"] = f"{ctx.base}volumes/{source}"
                image.attrs.setdefault("bootable", bool(volume.attrs.get("bootable")))
                image.internal.update(pool=volume.internal["pool"], volume=source)
                await tx.insert(image)
                tx.emit(model_changed(VolumeImage, image, "created", ctx.user))
                job = await self._queue(tx, ctx, volume, Volume.actions["snapshot"].uri,
                                        {"op": "snapshot", "image": image.id, "transitional": "CAPTURING"},
                                        target=f"volumes/{source}", success="VolumeImage made",
                                        affected=[f"volumeImages/{image.id}"])
            else:
                if not location.startswith(("http://", "https://", "file://")):
                    raise BadRequest(f"imageLocation: '{location[:200]}' is neither a Volume of this provider "
                                     "nor an http(s):// or file:// URL to import")
                image.internal.update(pool=asked_pool or self.pools.default)
                await tx.insert(image)
                tx.emit(model_changed(VolumeImage, image, "created", ctx.user))
                job = await self.jobs.queue(tx, KIND, action="add", target=VolumeImage.collection,
                                            affected=[f"volumeImages/{image.id}"], steps=[{"op": "import"}],
                                            success="VolumeImage imported", owner=ctx.user, image=image.id)
        return job_result(ctx, job, 202, location=f"volumeImages/{image.id}")

    def _image_pool(self, attrs: dict) -> str | None:
        """The pool a VolumeImage names in `properties.pool` (None: the default pool, or for a snapshot its
        volume's); a VolumeImage has no `type` to name it by as a VolumeConfiguration does."""
        name = (attrs.get("properties") or {}).get("pool")
        if name is None:
            return None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"properties.pool: must be the name of a storage pool, not {name!r}")
        if self.pools.pool(name) is None:
            raise BadRequest(f"properties.pool: there is no storage pool '{name}'; the pools are "
                             f"{', '.join(sorted(self.pools.pools))}")
        return name

    @staticmethod
    def _volume_of(location: str) -> str | None:
        try:
            collection, id = split_href(location)
        except BadRequest:
            return None
        if collection != Volume.collection or ("://" in location and "/cimi/" not in location):
            return None
        return id

    async def act(self, ctx: Context, rtype: ResourceType, id: str, action: Action, request: dict,
                  if_match: str | None) -> Result:
        if rtype is not Volume:
            return await super().act(ctx, rtype, id, action, request, if_match)
        if action.name == "snapshot":
            return await self._create_image(ctx, {"imageLocation": f"{ctx.base}volumes/{id}"})
        await self.ensure_storage()
        async with self.store.write() as tx:
            volume = await self.changeable(tx, ctx, Volume, id)
            check_if_match(volume, if_match)
            if volume.state not in action.from_states:
                raise Conflict(f"cannot restore Volume '{id}' while it is {volume.state}")
            ref = request.get("image")
            if not ref or "href" not in ref:
                raise BadRequest("restore needs an image: {\"href\": \"<a VolumeImage taken of this volume>\"}")
            image_id = href_to_id(ref["href"], VolumeImage, "image")
            image = await tx.get(VolumeImage.name, image_id, ctx.scope)
            if image is None:
                raise BadRequest(f"image: '{ref['href']}' does not name an existing VolumeImage")
            if image.internal.get("volume") != id:
                raise BadRequest(f"image: VolumeImage '{image_id}' was not taken of Volume '{id}'; a volume is "
                                 "restored from its own snapshots")
            if image.state != "AVAILABLE":
                raise Conflict(f"VolumeImage '{image_id}' is {image.state}, not AVAILABLE")
            users = await self._attachments(tx, id)
            if users:  # a guest holding the disk open would go on writing to the replaced data
                raise Conflict(f"Volume '{id}' is attached to Machine '{users[0].parent}' "
                               f"(machines/{users[0].parent}); detach it before restoring it")
            job = await self._queue(tx, ctx, volume, action.uri,
                                    {"op": "restore", "image": image_id, "transitional": "RESTORING"},
                                    target=f"volumes/{id}", success="Volume restored")
        return job_result(ctx, job, 202, location=f"volumes/{id}")

    # ---------------------------------------------------------------- Jobs

    async def _queue(self, tx: Transaction, ctx: Context, volume: Row, action: str, step: dict, *, target: str,
                     success: str, affected: list[str] = (), begin: bool = False) -> Row:
        job = await self.jobs.queue(tx, KIND, action=action, target=target,
                                    affected=[f"volumes/{volume.id}", *affected], steps=[step], success=success,
                                    owner=ctx.user, begin=begin, volume=volume.id, prior=volume.state)
        if step.get("transitional") and volume.state != "CREATING":
            previous = volume.state
            volume.attrs["state"] = step["transitional"]
            await tx.update(volume)
            tx.emit(state_changed(Volume, volume, previous, f"{step['op']} asked by {ctx.user}", ctx.user))
        return job

    async def run_step(self, job: Row, step: dict):
        op = step["op"]
        if op == "import":
            return await self._import(job)
        volume = await self.store.get(Volume.name, job.internal["volume"])
        pool = self.pools.pool(volume.internal["pool"])
        if op == "create":
            await pool.create_volume(volume.id, volume.attrs["capacity"], step.get("image"))
        elif op == "delete":
            await pool.delete_volume(volume.id)
        elif op == "grow":
            await self.ensure_compute_for_job()
            live = []  # the attachments whose guest runs: it sees the new size at once
            for mv in await self.store.referring(MachineVolume.name, "volume", volume.id):
                if self.drivers.compute is not None and \
                        await self.drivers.compute.state(mv.parent) in ("STARTED", "PAUSED"):
                    live.append(mv)
            await pool.grow_volume(volume.id, step["capacity"], bool(live))
            for mv in live:
                await self.drivers.compute.resize_volume(mv.parent, mv.internal["device"], step["capacity"])
        elif op == "attach":
            await self.ensure_compute_for_job()
            await self.drivers.compute.attach_volume(step["machine"], step["device"], await pool.attachment(volume.id))
        elif op == "detach":
            await self.ensure_compute_for_job()
            await self.drivers.compute.detach_volume(step["machine"], step["device"])
        elif op == "snapshot":
            return await pool.snapshot_volume(volume.id, step["image"])
        elif op == "restore":
            await pool.restore_volume(volume.id, step["image"])
        else:
            raise DriverError(f"unknown step '{op}'")
        return None

    async def ensure_compute_for_job(self) -> None:
        if self.drivers.compute is None:
            return
        await self.drivers.open("compute")

    async def _import(self, job: Row):
        image = await self.store.get(VolumeImage.name, job.internal["image"])
        pool = self.pools.pool(image.internal["pool"])
        reported = [0]

        async def progress(percent: int) -> None:
            if percent - reported[0] >= 5:
                reported[0] = percent
                await self.jobs.report_progress(job.id, percent)

        checksum = (image.attrs.get("properties") or {}).get("checksum")
        return await pool.import_image(image.id, image.attrs["imageLocation"], checksum, progress)

    async def observe(self, job: Row):
        """What the pool holds for the volume now (None: nothing, or no volume in this Job)."""
        volume_id = job.internal.get("volume")
        if volume_id is None or job.internal["steps"][-1]["op"] in ("attach", "detach"):
            return None  # an attachment's Job settles from its own outcome, not from the pool (no qemu-img run)
        volume = await self.store.get(Volume.name, volume_id)
        pool = self.pools.pool(volume.internal["pool"]) if volume else None
        try:
            return await pool.volume(volume_id) if pool else None
        except DriverError as exc:
            log.warning("cannot read volume %s: %s", volume_id, exc)
            return None

    async def finish(self, tx: Transaction, job: Row, outcome: str, message: str,
                     observed) -> tuple[str, str] | None:
        step = job.internal["steps"][-1]
        op = step["op"]
        if outcome != "STEP" and op not in ("attach", "detach"):  # an attachment takes no room in a pool
            tx.after_commit.append(self._look_at_space)
        if op == "import":
            return await self._finish_import(tx, job, outcome, message, step)
        if outcome == "STEP" and not step.get("transitional"):
            return  # a step with no transitional state (an attach, a detach): nothing to show
        if op in ("attach", "detach"):
            return await self._finish_attachment(tx, job, step, outcome == "SUCCESS", message)
        volume = await tx.get(Volume.name, job.internal["volume"])
        if volume is None:
            return
        if outcome == "STEP":
            if volume.state != step["transitional"]:
                previous = volume.state
                volume.attrs["state"] = step["transitional"]
                await tx.update(volume)
                tx.emit(state_changed(Volume, volume, previous, "its Job began", job.owner))
            return
        succeeded = outcome == "SUCCESS"
        pool = self.pools.pool(volume.internal["pool"])
        if op == "create" and not succeeded:
            await tx.delete(Volume.name, volume.id)
            await pool.delete_volume(volume.id)  # nothing half-made stays
            tx.emit(model_changed(Volume, volume, "deleted", job.owner, f"Volume not made: {message}"))
            return
        if op == "delete" and (succeeded or observed is None):
            await tx.delete(Volume.name, volume.id)
            tx.emit(model_changed(Volume, volume, "deleted", job.owner))
            return
        if op == "snapshot":
            await self._settle_snapshot(tx, step, succeeded, pool, job.owner, message)
        previous = volume.state
        if observed is not None:
            volume.attrs["capacity"] = observed["capacity_kb"]  # what the host has, grown or not
        volume.attrs["state"] = "AVAILABLE" if observed is not None else "ERROR"
        await tx.update(volume)
        tx.emit(state_changed(Volume, volume, previous, message, job.owner))

    def outcome_kept_by_host(self, job: Row) -> bool:
        """A hot-plug's outcome is in the domain's definition, which libvirt has written to the disk before
        it answered; after a power cut that lost the Job's last commit, _finish_attachment reads it back."""
        return job.internal["steps"][-1]["op"] == "attach"

    async def _finish_attachment(self, tx: Transaction, job: Row, step: dict, succeeded: bool,
                                 message: str) -> tuple[str, str] | None:
        """An attach or detach ended: its MachineVolume stays or goes with the outcome (the Volume's own
        state never changed)."""
        op = step["op"]
        found = False  # attached after all: the hypervisor has it
        if op == "attach" and not succeeded and self.drivers.compute is not None:
            # Cut short (cimid killed, or a power cut lost the Job's last commit) the hypervisor may have
            # attached it already: kept if it has (the restart reads what libvirt stored), else undone, so that
            # the host matches the store (detaching a disk the machine lacks is not an error). Only this
            # volume's disk: the failure may be the hypervisor refusing a name another disk has, which stays.
            volume = await tx.get(Volume.name, job.internal["volume"])
            try:
                if volume is None:
                    raise DriverError("its Volume is gone")
                source = (await self.pools.pool(volume.internal["pool"]).attachment(volume.id))["path"]
                found = message == INTERRUPTED and await self.drivers.compute.has_volume(
                    step["machine"], step["device"], source)
                if not found:
                    await self.drivers.compute.detach_volume(step["machine"], step["device"], source)
            except DriverError as exc:
                log.warning("machine %s: %s could not be detached after a failed attach: %s", step["machine"],
                            step["device"], exc)
        attachment = await tx.get(MachineVolume.name, step["attachment"])
        if attachment is None:
            return None
        succeeded = succeeded or found
        if succeeded == (op == "detach"):
            await tx.delete(MachineVolume.name, attachment.id)
            tx.emit(model_changed(MachineVolume, attachment, "deleted", job.owner,
                                  "Volume detached" if succeeded else f"Volume not attached: {message}"))
        elif op == "detach":
            attachment.internal.pop("detaching", None)
            await tx.update(attachment)
        else:  # attached: said on the Event stream, so a client need not poll
            said = f"Volume attached as {step['device']}"
            if found:
                said += " (found on the hypervisor after a restart)"
            tx.emit(model_changed(MachineVolume, attachment, "changed", job.owner, said))
            if found:
                return "SUCCESS", said
        return None

    async def _settle_snapshot(self, tx: Transaction, step: dict, succeeded: bool, pool, owner: str,
                               message: str) -> None:
        image = await tx.get(VolumeImage.name, step["image"])
        if image is None:
            return
        if not succeeded:
            await tx.delete(VolumeImage.name, image.id)
            await pool.delete_image(image.id)
            tx.emit(model_changed(VolumeImage, image, "deleted", owner, f"VolumeImage not made: {message}"))
            return
        image.attrs["state"] = "AVAILABLE"
        image.internal["capacity_kb"] = step["result"]["capacity_kb"]
        await tx.update(image)
        tx.emit(state_changed(VolumeImage, image, "CREATING", "snapshotted", owner))
        stamp = now()  # listed in the volume's images
        await tx.insert(Row(VolumeVolumeImage.name, new_id(), image.internal["volume"], owner=image.owner,
                            attrs={"created": stamp, "updated": stamp, "volumeImage": {"href": f"volumeImages/{image.id}"}},
                            internal={"image": image.id}))

    async def _finish_import(self, tx: Transaction, job: Row, outcome: str, message: str, step: dict) -> None:
        if outcome == "STEP":
            return
        image = await tx.get(VolumeImage.name, job.internal["image"])
        if image is None:
            return
        pool = self.pools.pool(image.internal["pool"])
        if outcome == "SUCCESS":
            image.attrs["state"] = "AVAILABLE"
            image.internal["capacity_kb"] = step["result"]["capacity_kb"]
            await tx.update(image)
            tx.emit(state_changed(VolumeImage, image, "CREATING", message, job.owner))
        else:
            await tx.delete(VolumeImage.name, image.id)
            await pool.delete_image(image.id)
            tx.emit(model_changed(VolumeImage, image, "deleted", job.owner, f"VolumeImage not imported: {message}"))

    async def abandon(self, tx: Transaction, job: Row) -> None:
        """Stopped while QUEUED: nothing reached the host; undo what the request recorded."""
        step = job.internal["steps"][0]
        if step["op"] in ("import", "snapshot"):
            image = await tx.get(VolumeImage.name, step.get("image") or job.internal.get("image"))
            if image is not None:
                await tx.delete(VolumeImage.name, image.id)
        if step["op"] == "attach":
            await tx.delete(MachineVolume.name, step["attachment"])
        if step["op"] == "detach":
            attachment = await tx.get(MachineVolume.name, step["attachment"])
            if attachment is not None:
                attachment.internal.pop("detaching", None)
                await tx.update(attachment)
        volume = await tx.get(Volume.name, job.internal["volume"]) if job.internal.get("volume") else None
        if volume is None:
            return
        if step["op"] == "create":
            await tx.delete(Volume.name, volume.id)
            tx.emit(model_changed(Volume, volume, "deleted", job.owner, "Volume not made: its Job was stopped"))
        elif volume.state != job.internal["prior"]:
            previous = volume.state
            volume.attrs["state"] = job.internal["prior"]
            await tx.update(volume)
            tx.emit(state_changed(Volume, volume, previous, "its Job was stopped before it began", job.owner))

    async def forget_host(self, tx: Transaction) -> None:
        await self.ensure_storage()
        for pool in self.pools.pools.values():
            await pool.forget()
