"""What both libvirt compute drivers share: one connection used from worker threads, lifecycle events
delivered into the asyncio loop, and the machine verbs that are the same libvirt calls on any hypervisor
(start, stop, pause, suspend, undefine, state). Disks, seeds, captures and consoles differ, so the
subclasses (compute.LibvirtCompute on QEMU, sandbox.SandboxCompute on the test driver) own them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

import libvirt

from cimid.errors import DriverError

log = logging.getLogger("cimid.libvirt")
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
ARCHES = {"x86_64": "x86_64", "x86": "i686", "ARM": "aarch64"}

Watcher = Callable[[str, str, str], None]  # (machine id, CIMI state, reason)


def _silence(ctx, err) -> None:
    """libvirt prints every error to stderr by default; cimid reports them itself."""


libvirt.registerErrorHandler(_silence, None)
_events_thread: threading.Thread | None = None  # libvirt takes one event implementation per process
_events_lock = threading.Lock()


def _run_events() -> None:
    """libvirt's own event loop, in C, on a thread of its own: it delivers the lifecycle events and keeps
    connections alive. Not libvirtaio on the asyncio loop: there every libvirt call from a worker thread
    calls back into Python (to switch its socket's watch off and on) and so waits for the interpreter lock
    while the loop renders an answer; a hot-plug's attachDeviceFlags took ~3 ms longer for it."""
    global _events_thread
    with _events_lock:
        if _events_thread is None:
            libvirt.virEventRegisterDefaultImpl()

            def run() -> None:
                while True:
                    if libvirt.virEventRunDefaultImpl() < 0:  # it releases the interpreter lock while it waits
                        log.error("libvirt's event loop failed; trying again in a second")
                        time.sleep(1)  # not a busy loop

            _events_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
            _events_thread.start()


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


class LibvirtDomains:
    """Machines as libvirt domains named cimid-<machine id> on the connection `uri`."""

    name: str

    def __init__(self, config, uri: str):
        self.uri = uri
        self.stop_timeout = float(config["compute"]["stop_timeout"])
        self._conn: libvirt.virConnect | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where watchers are called (set by open)
        self._watchers: list[Watcher] = []
        # libvirt calls block, and the event loop must not: they run on threads, one per concurrent Job plus
        # one for state reads, so one machine's slow start does not hold up another's (libvirt
        # connections are thread-safe; only (re)connecting is serialised).
        self._executor = concurrent.futures.ThreadPoolExecutor(config["jobs"]["max_concurrent"] + 1,
                                                               thread_name_prefix="libvirt")
        self._connecting = threading.Lock()
        # Domain handles by machine id, on the current connection: a hot-plug need not look its domain up
        # (a libvirtd round trip). Dropped with the connection, and when cimid undefines the domain.
        self._handles: dict[str, libvirt.virDomain] = {}

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
            self._handles.clear()  # handles of a dead connection are dead too
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise DriverError(f"cannot reach libvirt at {self.uri}: {exc.get_error_message()}",
                                  unavailable=True) from None
            self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
        return self._conn

    def _domain(self, machine_id: str, reuse: bool = False) -> libvirt.virDomain | None:
        """The machine's domain, looked up (every verb that must see the host as it is now), or with
        `reuse` the handle kept from an earlier look-up, which may be stale if the domain was undefined
        behind cimid's back: a call on it then fails with VIR_ERR_NO_DOMAIN."""
        conn = self._connection()
        if reuse and (held := self._handles.get(machine_id)) is not None:
            return held
        try:
            dom = conn.lookupByName(DOMAIN_PREFIX + machine_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                self._handles.pop(machine_id, None)
                return None
            raise
        self._handles[machine_id] = dom
        return dom

    def _require(self, machine_id: str, reuse: bool = False) -> libvirt.virDomain:
        dom = self._domain(machine_id, reuse)
        if dom is None:
            raise DriverError(f"the hypervisor has no domain {DOMAIN_PREFIX}{machine_id}")
        return dom

    async def _before_operation(self) -> None:
        """Called before every machine verb; the sandbox waits here to look like a real host."""

    # ---------------------------------------------------------------- lifecycle of the driver

    async def open(self) -> None:
        _run_events()  # before the connection: it registers for events
        self._loop = asyncio.get_running_loop()
        await self._call(self._connection)

    def _drop_connection(self) -> None:
        """Close the connection, if any (on a libvirt thread); a dead one is not an error."""
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None
            self._handles.clear()

    async def close(self) -> None:
        await self._call(self._drop_connection)
        self._executor.shutdown(wait=True)

    async def health(self) -> dict[str, str]:
        def probe():
            conn = self._connection()
            v = conn.getLibVersion()
            return {"connection": f"{self.uri} answers (libvirt {v // 1000000}.{v // 1000 % 1000}.{v % 1000})",
                    "domains": str(len(conn.listAllDomains()))}
        return await self._call(probe)

    def watch(self, callback: Watcher) -> None:
        self._watchers.append(callback)

    def _on_event(self, conn, dom, event, detail, opaque) -> None:
        """On libvirt's event thread: each watcher is called on the driver's loop."""
        name = dom.name()
        mapped = event_state(event, detail)
        if mapped and name.startswith(DOMAIN_PREFIX) and self._loop is not None:
            for callback in self._watchers:
                try:
                    self._loop.call_soon_threadsafe(callback, name[len(DOMAIN_PREFIX):], *mapped)
                except RuntimeError:  # the loop is closed: the driver has gone with it
                    return

    # ---------------------------------------------------------------- machine verbs

    async def start(self, machine_id: str) -> None:
        await self._before_operation()

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
        await self._before_operation()

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
        await self._before_operation()
        await self._call(lambda: self._require(machine_id).suspend())

    async def suspend(self, machine_id: str) -> None:
        await self._before_operation()
        await self._call(lambda: self._require(machine_id).managedSave())

    async def delete(self, machine_id: str) -> None:
        await self._before_operation()

        def delete():
            dom = self._domain(machine_id)
            if dom is None:
                return
            if dom.isActive():
                dom.destroy()
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            self._handles.pop(machine_id, None)
            dom.undefineFlags(flags)
        await self._call(delete)

    async def forget(self) -> None:
        def forget():
            self._handles.clear()
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            for dom in self._connection().listAllDomains():
                if dom.name().startswith(DOMAIN_PREFIX):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(flags)
        await self._call(forget)

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
