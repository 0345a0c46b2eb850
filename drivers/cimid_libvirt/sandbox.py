"""The sandbox's compute driver: libvirt's in-process test driver, one fake host per state directory.

Machines are real libvirt domains there, so start, stop, pause, managed save and the lifecycle events
that follow a change made behind cimid's back behave as on a real host, through the same code
(domains.LibvirtDomains). They have no disks: capture and restore only check the machine exists, and the
console is empty. The test driver forgets everything when the process ends, so `adopt` rebuilds the
stored machines at start-up. `compute.operation_delay` makes every verb wait, so clients see the
transitional states (STARTING, STOPPING...) a real host shows.
"""

from __future__ import annotations

import asyncio
from xml.sax.saxutils import escape


from cimid.errors import DriverError
from cimid.hookspecs import InterfaceSpec, MachineSpec

from .domains import ARCHES, DOMAIN_PREFIX, LibvirtDomains

NODE_FILE = "sandbox-node.xml"
# The fake host: 2 cores, 24 GiB; the test driver reads it when the connection opens.
_NODE = "<node><cpu><mhz>2000</mhz><nodes>1</nodes><sockets>1</sockets><cores>2</cores>" \
        "<threads>1</threads><active>2</active></cpu><memory>25165824</memory></node>\n"


class SandboxCompute(LibvirtDomains):
    name = "libvirt-test"

    def __init__(self, config):
        super().__init__(config, f"test://{config.state_dir / NODE_FILE}")
        self.state_dir = config.state_dir
        self.delay = config["compute"]["operation_delay"]
        self._volumes: dict[str, dict[str, dict]] = {}  # machine id -> device -> StorageDriver.attachment()
        self._interfaces: dict[str, dict[str, InterfaceSpec]] = {}  # machine id -> MAC -> its NIC

    async def _before_operation(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)

    def _reconnect(self):
        if self._conn is None or not self._conn.isAlive():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / NODE_FILE).write_text(_NODE)
        return super()._reconnect()

    async def health(self) -> dict[str, str]:
        return {**await super().health(), "virt_type": "test (libvirt's in-process test driver)"}

    @staticmethod
    def domain_xml(spec: MachineSpec) -> str:
        arch = ARCHES.get(spec.cpu_arch or "", "x86_64")
        return (f"<domain type='test'><name>{DOMAIN_PREFIX}{escape(spec.id)}</name>"
                f"<title>{escape(spec.name or spec.id)}</title><memory unit='KiB'>{spec.memory}</memory>"
                f"<vcpu>{spec.cpu}</vcpu><os><type arch='{arch}'>hvm</type></os>"
                "<features><acpi/></features></domain>")

    async def adopt(self, machines: list[tuple[MachineSpec, str]]) -> None:
        def rebuild():
            conn = self._connection()
            for spec, state in machines:
                self._interfaces.setdefault(spec.id, {i.mac: i for i in spec.interfaces})
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
        await self._before_operation()
        await self._call(lambda: self._connection().defineXML(self.domain_xml(spec)))
        self._interfaces[spec.id] = {i.mac: i for i in spec.interfaces}

    async def capture(self, machine_id: str, image_id: str) -> dict:
        """A diskless machine yields an image with no data: a catalogue entry, as the sandbox's images are."""
        await self._call(self._require, machine_id)
        return {"format": "qcow2", "virtual_size": 0, "location": f"urn:cimid:sandbox:image:{image_id}"}

    async def restore(self, machine_id: str, image_id: str) -> None:
        await self._call(self._require, machine_id)

    async def boot_image(self, machine_id: str) -> str | None:
        return None  # no disks: a restore changes nothing a failure could leave half-done

    # libvirt's test driver has no device hot-plug: attachments are kept here, checked against the domain.

    async def attach_volume(self, machine_id: str, device: str, disk: dict) -> None:
        await self._before_operation()
        await self._call(self._require, machine_id)
        attached = self._volumes.setdefault(machine_id, {})
        if device in attached:
            raise DriverError(f"machine {machine_id} already has a disk {device}")
        attached[device] = dict(disk)

    async def detach_volume(self, machine_id: str, device: str, source: str | None = None) -> None:
        await self._before_operation()
        attached = self._volumes.get(machine_id, {})
        if source is None or attached.get(device, {}).get("path") == source:
            attached.pop(device, None)

    async def resize_volume(self, machine_id: str, device: str, capacity_kb: int) -> None:
        await self._call(self._require, machine_id)

    async def has_volume(self, machine_id: str, device: str, source: str) -> bool:
        return self._volumes.get(machine_id, {}).get(device, {}).get("path") == source

    def attached(self, machine_id: str) -> dict[str, dict]:
        """The volumes the fake host has attached to the machine, by device (for the fast tier's checks)."""
        return dict(self._volumes.get(machine_id, {}))

    # ... and so are network interfaces (NICs), by MAC.

    async def attach_interface(self, machine_id: str, iface: InterfaceSpec) -> None:
        await self._before_operation()
        await self._call(self._require, machine_id)
        nics = self._interfaces.setdefault(machine_id, {})
        if iface.mac in nics:
            raise DriverError(f"machine {machine_id} already has an interface {iface.mac}")
        nics[iface.mac] = iface

    async def detach_interface(self, machine_id: str, mac: str) -> None:
        await self._before_operation()
        self._interfaces.get(machine_id, {}).pop(mac, None)

    async def interfaces(self, machine_id: str) -> list[str]:
        return list(self._interfaces.get(machine_id, {}))

    def nics(self, machine_id: str) -> dict[str, InterfaceSpec]:
        """The NICs the fake host gave the machine, by MAC (for the fast tier's checks)."""
        return dict(self._interfaces.get(machine_id, {}))

    async def delete(self, machine_id: str) -> None:
        await super().delete(machine_id)
        self._volumes.pop(machine_id, None)
        self._interfaces.pop(machine_id, None)

    async def forget(self) -> None:
        self._volumes.clear()
        self._interfaces.clear()
        await self._forget_domains()

    async def _forget_domains(self) -> None:
        """The test driver keeps a private fake host per connection: a new connection is an empty host,
        which is much faster than undefining a thousand domains one by one."""
        def reconnect():
            with self._connecting:
                self._drop_connection()
                self._reconnect()
        await self._call(reconnect)

    async def console(self, machine_id: str, max_bytes: int) -> str:
        return ""  # the test driver's domains run no guest, so they print nothing
