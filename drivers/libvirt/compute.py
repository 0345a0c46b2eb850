"""Compute driver over libvirt.

The sandbox profile uses libvirt's in-process test driver (`compute.uri = "sandbox"`, one fake host per
state directory); the host profile uses `qemu:///system` with `compute.virt_type` from the config (never
auto-detected: /dev/kvm can exist without working hardware virtualisation).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from xml.sax.saxutils import escape

import libvirt

from cimid.errors import DriverError
from cimid.hookspecs import MachineSpec

DOMAIN_PREFIX = "cimid-"
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


def _silence(ctx, err) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_silence, None)


class LibvirtCompute:
    name = "libvirt"

    def __init__(self, config):
        section = config["compute"]
        self.sandbox = section["uri"] == "sandbox"
        self.state_dir = config.state_dir
        self.uri = f"test://{config.state_dir / 'sandbox-node.xml'}" if self.sandbox else section["uri"]
        self.domain_type = "test" if self.sandbox else section["virt_type"]
        self.delay = section["operation_delay"]
        self.stop_timeout = 120.0
        self._conn: libvirt.virConnect | None = None
        # One thread: libvirt calls block, and the event loop must not.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="libvirt")

    async def _call(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except libvirt.libvirtError as exc:
            raise DriverError(f"libvirt: {exc.get_error_message()}",
                              unavailable=exc.get_error_code() in (libvirt.VIR_ERR_NO_CONNECT,
                                                                   libvirt.VIR_ERR_SYSTEM_ERROR)) from None

    def _connection(self) -> libvirt.virConnect:
        if self._conn is None or not self._conn.isAlive():
            if self.sandbox:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                (self.state_dir / "sandbox-node.xml").write_text(_SANDBOX_NODE)
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise DriverError(f"cannot reach libvirt at {self.uri}: {exc.get_error_message()}",
                                  unavailable=True) from None
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

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
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
            return {"connection": f"{self.uri} answers (libvirt {conn.getLibVersion()})",
                    "virt_type": self.domain_type,
                    "domains": str(len(conn.listAllDomains()))}
        return await self._call(probe)

    def domain_xml(self, spec: MachineSpec) -> str:
        arch = {"x86": "i686", "ARM": "aarch64"}.get(spec.cpu_arch or "", "x86_64")
        return (
            f"<domain type='{self.domain_type}'>"
            f"<name>{DOMAIN_PREFIX}{escape(spec.id)}</name>"
            f"<title>{escape(spec.name or spec.id)}</title>"
            f"<memory unit='KiB'>{spec.memory}</memory>"
            f"<vcpu>{spec.cpu}</vcpu>"
            f"<os><type arch='{arch}'>hvm</type></os>"
            "<features><acpi/></features>"
            "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
            "</domain>"
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
        await self._call(lambda: self._connection().defineXML(self.domain_xml(spec)))

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
            """Return True when the guest was asked to shut down and we must wait for it."""
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
