"""Compute driver over libvirt.

The sandbox profile uses libvirt's in-process test driver (`compute.uri = "sandbox"`, one fake host per
state directory, no disks); the host profile uses `qemu:///system` with `compute.virt_type` from the
config (never auto-detected: /dev/kvm can exist without working hardware virtualisation), real disk
images, copy-on-write overlays and a cloud-init seed per machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import libvirt

from cimid.errors import DriverError
from cimid.hookspecs import MachineSpec

from . import images, seed

log = logging.getLogger("cimid.libvirt")
DOMAIN_PREFIX = "cimid-"
KB = 1024  # CIMI capacities are in kilobytes; cimid reads them as 1024 bytes, like its memory in KiB
# libvirt keeps running and stopped domains; these states map onto CIMI's.
_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "ERROR",
    libvirt.VIR_DOMAIN_RUNNING: "STARTED",
    libvirt.VIR_DOMAIN_BLOCKED: "STARTED",
    libvirt.VIR_DOMAIN_PAUSED: "PAUSED",
    libvirt.VIR_DOMAIN_SHUTDOWN: "STOPPING",
    libvirt.VIR_DOMAIN_SHUTOFF: "STOPPED",
    libvirt.VIR_DOMAIN_CRASHED: "ERROR",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "SUSPENDED",
}
_SANDBOX_NODE = "<node><cpu><mhz>2000</mhz><nodes>1</nodes><sockets>1</sockets><cores>2</cores>" \
                "<threads>1</threads><active>2</active></cpu><memory>25165824</memory></node>\n"
_ARCHES = {"x86_64": "x86_64", "x86": "i686", "ARM": "aarch64"}
MAX_IMAGE_BYTES = 1 << 40

Watcher = Callable[[str, str, str], None]  # (machine id, CIMI state, reason)


def _silence(ctx, err) -> None:
    """libvirt prints every error to stderr by default; cimid reports them itself."""


libvirt.registerErrorHandler(_silence, None)
_events_loop: asyncio.AbstractEventLoop | None = None  # libvirt takes one event implementation per process


def _register_events() -> bool:
    """Deliver libvirt's events into this asyncio loop (libvirtaio); False if another loop has them."""
    global _events_loop
    loop = asyncio.get_running_loop()
    if _events_loop is None:
        import libvirtaio
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
        _events_loop = loop
    return _events_loop is loop


def event_state(event: int, detail: int) -> tuple[str, str] | None:
    """A lifecycle event -> (CIMI state, reason), or None for events that change no state."""
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED or event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
        return "STARTED", "the machine runs"
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        return "PAUSED", "the machine was paused"
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return "ERROR", "the guest crashed"
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED:
            return "ERROR", "the guest crashed"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED:
            return "ERROR", "the hypervisor failed the machine"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED:
            return "SUSPENDED", "the machine's memory was saved to disk"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
            return "STOPPED", "the guest shut itself down"
        return "STOPPED", "the machine was powered off"
    return None


class LibvirtCompute:
    name = "libvirt"

    def __init__(self, config):
        section = config["compute"]
        self.sandbox = section["uri"] == "sandbox"
        self.imports_images = not self.sandbox  # the sandbox keeps images as catalogue entries only
        self.state_dir = config.state_dir
        self.image_dir = Path(section["image_dir"] or config.state_dir / "images")
        self.disk_dir = Path(section["disk_dir"] or config.state_dir / "disks")
        self.uri = f"test://{config.state_dir / 'sandbox-node.xml'}" if self.sandbox else section["uri"]
        self.domain_type = "test" if self.sandbox else section["virt_type"]
        self.delay = section["operation_delay"]
        self.stop_timeout = float(section["stop_timeout"])
        self._conn: libvirt.virConnect | None = None
        self._events = False
        self._watchers: list[Watcher] = []
        # libvirt calls block, and the event loop must not: they run on threads, one per concurrent Job plus
        # one for state reads, so one machine's slow start does not hold up another's (libvirt
        # connections are thread-safe; only (re)connecting is serialised).
        self._executor = concurrent.futures.ThreadPoolExecutor(config["jobs"]["max_concurrent"] + 1,
                                                               thread_name_prefix="libvirt")
        self._connecting = threading.Lock()

    async def _call(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except libvirt.libvirtError as exc:
            raise DriverError(f"libvirt: {exc.get_error_message()}",
                              unavailable=exc.get_error_code() in (libvirt.VIR_ERR_NO_CONNECT,
                                                                   libvirt.VIR_ERR_SYSTEM_ERROR)) from None

    def _connection(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is not None and conn.isAlive():
            return conn
        with self._connecting:
            return self._reconnect()

    def _reconnect(self) -> libvirt.virConnect:
        if self._conn is None or not self._conn.isAlive():
            if self.sandbox:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                (self.state_dir / "sandbox-node.xml").write_text(_SANDBOX_NODE)
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise DriverError(f"cannot reach libvirt at {self.uri}: {exc.get_error_message()}",
                                  unavailable=True) from None
            if self._events:
                self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
        return self._conn

    def _domain(self, machine_id: str) -> libvirt.virDomain | None:
        try:
            return self._connection().lookupByName(DOMAIN_PREFIX + machine_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _require(self, machine_id: str) -> libvirt.virDomain:
        dom = self._domain(machine_id)
        if dom is None:
            raise DriverError(f"the hypervisor has no domain {DOMAIN_PREFIX}{machine_id}")
        return dom

    async def _simulated_latency(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)

    # ---------------------------------------------------------------- lifecycle of the driver

    async def open(self) -> None:
        self._events = _register_events()
        await self._call(self._connection)

    async def close(self) -> None:
        def close():
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
        await self._call(close)
        self._executor.shutdown(wait=True)

    async def health(self) -> dict[str, str]:
        def probe():
            conn = self._connection()
            v = conn.getLibVersion()
            facts = {"connection": f"{self.uri} answers (libvirt {v // 1000000}.{v // 1000 % 1000}.{v % 1000})",
                     "domains": str(len(conn.listAllDomains()))}
            if self.sandbox:
                facts["virt_type"] = "test (sandbox)"
                return facts
            kinds = {}
            for virt in ("kvm", "qemu"):
                try:
                    conn.getDomainCapabilities(None, "x86_64", None, virt)
                    kinds[virt] = "offered by libvirt"
                except libvirt.libvirtError as exc:
                    kinds[virt] = f"unavailable ({exc.get_error_message()})"
            facts["virt_types"] = ", ".join(f"{k} {v}" for k, v in kinds.items())
            facts["virt_type"] = (f"{self.domain_type} (from the config: libvirt offers kvm wherever /dev/kvm "
                                  "exists, even where hardware virtualisation does not work)")
            return facts
        facts = await self._call(probe)
        if not self.sandbox and self.uri.startswith("qemu:///"):  # a local libvirtd: can guests start?
            from .namespaces import guest_mount_namespaces, libvirtd_proc
            facts["guest_mount_namespaces"] = guest_mount_namespaces(libvirtd_proc())
        if not self.sandbox:
            import shutil
            for label, directory in (("image_dir", self.image_dir), ("disk_dir", self.disk_dir)):
                existing = next(p for p in (directory, *directory.parents) if p.exists())
                facts[label] = f"{directory} ({shutil.disk_usage(existing).free // 2**20} MiB free)"
        return facts

    def watch(self, callback: Watcher) -> None:
        self._watchers.append(callback)

    def _on_event(self, conn, dom, event, detail, opaque) -> None:
        name = dom.name()
        mapped = event_state(event, detail)
        if mapped and name.startswith(DOMAIN_PREFIX):
            for callback in self._watchers:
                callback(name[len(DOMAIN_PREFIX):], *mapped)

    # ---------------------------------------------------------------- images

    def image_path(self, image_id: str) -> Path | None:
        for fmt in ("qcow2", "raw"):
            path = self.image_dir / f"{image_id}.{fmt}"
            if path.exists():
                return path
        return None

    async def import_image(self, image_id: str, location: str, checksum: str | None, progress) -> dict:
        images.make_reachable(self.image_dir)
        download = self.image_dir / f"{image_id}.download"
        try:
            await images.fetch(location, download, checksum, progress, MAX_IMAGE_BYTES)
            info = await images.inspect(download)
            path = self.image_dir / f"{image_id}.{info['format']}"
            download.chmod(0o644)
            download.replace(path)
            return info
        finally:
            download.unlink(missing_ok=True)

    async def delete_image(self, image_id: str) -> None:
        if self.image_dir.exists():
            for path in self.image_dir.glob(f"{image_id}.*"):  # the image, or what an interrupted import left
                path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- machines

    def machine_dir(self, machine_id: str) -> Path:
        return self.disk_dir / machine_id

    def console_log(self, machine_id: str) -> Path:
        return self.machine_dir(machine_id) / "console.log"

    def domain_xml(self, spec: MachineSpec) -> str:
        arch = _ARCHES.get(spec.cpu_arch or "", "x86_64")
        head = (
            f"<domain type='{self.domain_type}'>"
            f"<name>{DOMAIN_PREFIX}{escape(spec.id)}</name>"
            f"<title>{escape(spec.name or spec.id)}</title>"
            f"<memory unit='KiB'>{spec.memory}</memory>"
            f"<vcpu>{spec.cpu}</vcpu>"
        )
        if self.sandbox:
            return head + f"<os><type arch='{arch}'>hvm</type></os><features><acpi/></features></domain>"
        directory = self.machine_dir(spec.id)
        disks = []
        for index, path in enumerate(sorted(directory.glob("disk*.qcow2"))):
            disks.append(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                         f"<source file={quoteattr(str(path))}/><target dev='vd{chr(ord('a') + index)}' "
                         "bus='virtio'/></disk>")
        seed_iso = directory / "seed.iso"
        # The pc machine's IDE CD-ROM: cloud kernels often lack AHCI, so a SATA drive could go unseen.
        disks.append(f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
                     f"<source file={quoteattr(str(seed_iso))}/><target dev='hdc' bus='ide'/><readonly/></disk>")
        return head + (
            f"<os><type arch='{arch}' machine='pc'>hvm</type><boot dev='hd'/></os>"
            "<features><acpi/><apic/></features>"
            "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
            f"<devices>{''.join(disks)}"
            f"<serial type='pty'><log file={quoteattr(str(self.console_log(spec.id)))} append='on'/>"
            "<target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>"
            "</devices></domain>"
        )

    async def adopt(self, machines: list[tuple[MachineSpec, str]]) -> None:
        if not self.sandbox:
            return  # qemu:///system keeps its domains across our restarts

        def rebuild():
            conn = self._connection()
            for spec, state in machines:
                if self._domain(spec.id) is not None:
                    continue
                dom = conn.defineXML(self.domain_xml(spec))
                if state in ("STARTED", "PAUSED", "SUSPENDED"):
                    dom.create()
                if state == "PAUSED":
                    dom.suspend()
                elif state == "SUSPENDED":
                    dom.managedSave()
        await self._call(rebuild)

    async def create(self, spec: MachineSpec) -> None:
        await self._simulated_latency()
        if not self.sandbox:
            await self._make_disks(spec)
        try:
            await self._call(lambda: self._connection().defineXML(self.domain_xml(spec)))
        except DriverError:
            if not self.sandbox:
                images.remove_tree(self.machine_dir(spec.id))
            raise

    async def _make_disks(self, spec: MachineSpec) -> None:
        base = self.image_path(spec.image_id) if spec.image_id else None
        if base is None:
            raise DriverError(f"the MachineImage {spec.image_id} is not in the image store; import it first")
        directory = self.machine_dir(spec.id)
        images.make_reachable(directory)
        try:
            sizes = [d["capacity"] * KB for d in spec.disks]
            # The image goes on the first disk, grown to the first configured capacity if that is larger.
            info = await images.inspect(base)
            boot_size = max(info["virtual_size"], sizes[0]) if sizes else None
            await images.create_overlay(base, info["format"], directory / "disk0.qcow2",
                                        boot_size if boot_size != info["virtual_size"] else None)
            for index, size in enumerate(sizes[1:], start=1):
                await images.create_sparse(directory / f"disk{index}.qcow2", size)
            await asyncio.to_thread(seed.build_seed, directory / "seed.iso", instance_id=spec.id,
                                    hostname=seed.hostname_of(spec.name, f"cimi-{spec.id[:8]}"),
                                    credential=spec.credential, user_data_b64=spec.user_data)
        except BaseException:
            images.remove_tree(directory)
            raise

    async def start(self, machine_id: str) -> None:
        await self._simulated_latency()

        def start():
            dom = self._require(machine_id)
            state, _ = dom.state()
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                dom.pMWakeup()
            elif not dom.isActive():
                dom.create()  # restores a managed save image if there is one
        await self._call(start)

    async def stop(self, machine_id: str, force: bool) -> None:
        await self._simulated_latency()

        def stop() -> bool:
            """True when the guest was asked to shut down and we must wait for it."""
            dom = self._require(machine_id)
            if not dom.isActive():
                if dom.hasManagedSaveImage():
                    dom.managedSaveRemove()
                return False
            if force:
                dom.destroy()
                return False
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()  # a frozen guest cannot hear the ACPI button
            dom.shutdown()
            return True

        if await self._call(stop):
            # Poll from the event loop, so the libvirt thread stays free for other machines meanwhile.
            deadline = time.monotonic() + self.stop_timeout
            while await self._call(lambda: self._require(machine_id).isActive()):
                if time.monotonic() > deadline:
                    raise DriverError(f"the guest did not shut down within {self.stop_timeout:.0f} s; "
                                      "stop it with force=true")
                await asyncio.sleep(0.2)

    async def pause(self, machine_id: str) -> None:
        await self._simulated_latency()
        await self._call(lambda: self._require(machine_id).suspend())

    async def suspend(self, machine_id: str) -> None:
        await self._simulated_latency()
        await self._call(lambda: self._require(machine_id).managedSave())

    async def delete(self, machine_id: str) -> None:
        await self._simulated_latency()

        def delete():
            dom = self._domain(machine_id)
            if dom is None:
                return
            if dom.isActive():
                dom.destroy()
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            dom.undefineFlags(flags)
        await self._call(delete)
        if not self.sandbox:
            await asyncio.to_thread(images.remove_tree, self.machine_dir(machine_id))

    async def state(self, machine_id: str) -> str | None:
        def state():
            dom = self._domain(machine_id)
            if dom is None:
                return None
            code, _ = dom.state()
            if code == libvirt.VIR_DOMAIN_SHUTOFF and dom.hasManagedSaveImage():
                return "SUSPENDED"
            return _STATES.get(code, "ERROR")
        return await self._call(state)

    # ---------------------------------------------------------------- images of machines

    async def capture(self, machine_id: str, image_id: str) -> dict:
        """A standalone copy of the machine's boot disk in the image store (the machine is paused
        meanwhile if it runs, so the copy is consistent)."""
        if self.sandbox:
            return {"format": "qcow2", "virtual_size": 0, "location": f"urn:cimid:sandbox:image:{image_id}"}
        paused = await self._call(self._pause_if_running, machine_id)
        try:
            images.make_reachable(self.image_dir)
            dest = self.image_dir / f"{image_id}.qcow2"
            await images.flatten(self.machine_dir(machine_id) / "disk0.qcow2", dest)
            dest.chmod(0o644)
            return {**await images.inspect(dest), "location": dest.as_uri()}
        finally:
            if paused:
                await self._call(lambda: self._require(machine_id).resume())

    def _pause_if_running(self, machine_id: str) -> bool:
        dom = self._require(machine_id)
        if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
            dom.suspend()
            return True
        return False

    async def restore(self, machine_id: str, image_id: str) -> None:
        """The boot disk becomes a fresh overlay on the image; a running machine is restarted on it."""
        if self.sandbox:
            return
        base = self.image_path(image_id)
        if base is None:
            raise DriverError(f"the MachineImage {image_id} has no data in the image store")
        was_active = await self._call(lambda: self._require(machine_id).isActive())
        if was_active:
            await self._call(lambda: self._require(machine_id).destroy())
        disk = self.machine_dir(machine_id) / "disk0.qcow2"
        info = await images.inspect(base)
        fresh = disk.with_name("disk0.new.qcow2")
        await images.create_overlay(base, info["format"], fresh, None)
        fresh.replace(disk)
        if was_active:
            await self._call(lambda: self._require(machine_id).create())

    async def console(self, machine_id: str, max_bytes: int) -> str:
        path = self.console_log(machine_id)
        if self.sandbox or not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode("utf-8", "replace")
