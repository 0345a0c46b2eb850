"""Compute driver on real QEMU through libvirt (`compute.uri`, qemu:///system by default).

`compute.virt_type` comes from the config, never auto-detected: /dev/kvm can exist without working
hardware virtualisation. Every machine gets a directory under `compute.disk_dir` with a copy-on-write
overlay on its image (kept by the image store it was made with), its other disks, a cloud-init seed and
its serial log.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import libvirt
from cimid_dir import disks

from cimid.errors import DriverError
from cimid.hookspecs import ImageStore, InterfaceSpec, MachineSpec

from . import seed
from .domains import ARCHES, DOMAIN_PREFIX, LibvirtDomains
from .namespaces import guest_mount_namespaces, libvirtd_proc

DETACH_POLLS = 600  # tenths of a second a guest gets to release a hot-unplugged disk
KB = 1024  # CIMI capacities are in kilobytes; cimid reads them as 1024 bytes, like its memory in KiB


class LibvirtCompute(LibvirtDomains):
    name = "libvirt"

    def __init__(self, config, images: ImageStore | None):
        section = config["compute"]
        super().__init__(config, section["uri"])
        self.images = images
        self.domain_type = section["virt_type"]
        self.disk_dir = Path(section["disk_dir"] or config.state_dir / "disks")

    async def open(self) -> None:
        if self.images is None:
            raise DriverError("the libvirt compute driver needs an image store that keeps files "
                              "(images.driver = \"dir\")", unavailable=True)
        await super().open()

    async def health(self) -> dict[str, str]:
        facts = await super().health()

        def virt_types():
            conn = self._connection()
            kinds = {}
            for virt in ("kvm", "qemu"):
                try:
                    conn.getDomainCapabilities(None, "x86_64", None, virt)
                    kinds[virt] = "offered by libvirt"
                except libvirt.libvirtError as exc:
                    kinds[virt] = f"unavailable ({exc.get_error_message()})"
            return ", ".join(f"{k} {v}" for k, v in kinds.items())
        facts["virt_types"] = await self._call(virt_types)
        facts["virt_type"] = (f"{self.domain_type} (from the config: libvirt offers kvm wherever /dev/kvm "
                              "exists, even where hardware virtualisation does not work)")
        if self.uri.startswith("qemu:///"):  # a local libvirtd: can guests start?
            facts["guest_mount_namespaces"] = guest_mount_namespaces(libvirtd_proc())
        existing = next(p for p in (self.disk_dir, *self.disk_dir.parents) if p.exists())
        facts["disk_dir"] = f"{self.disk_dir} ({shutil.disk_usage(existing).free // 2**20} MiB free)"
        return facts

    # ---------------------------------------------------------------- machines

    def machine_dir(self, machine_id: str) -> Path:
        return self.disk_dir / machine_id

    def console_log(self, machine_id: str) -> Path:
        return self.machine_dir(machine_id) / "console.log"

    def domain_xml(self, spec: MachineSpec) -> str:
        arch = ARCHES.get(spec.cpu_arch or "", "x86_64")
        directory = self.machine_dir(spec.id)
        devices = []
        for path in sorted(directory.glob("disk*.qcow2"), key=lambda p: int(p.stem[4:])):
            target = f"vd{chr(ord('a') + int(path.stem[4:]))}"  # disk0 is vda (absent: a boot volume is)
            devices.append(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                           f"<source file={quoteattr(str(path))}/><target dev='{target}' bus='virtio'/></disk>")
        seed_iso = directory / "seed.iso"
        # The pc machine's IDE CD-ROM: cloud kernels often lack AHCI, so a SATA drive could go unseen.
        devices.append(f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
                       f"<source file={quoteattr(str(seed_iso))}/><target dev='hdc' bus='ide'/><readonly/></disk>")
        devices.extend(interface_xml(iface) for iface in spec.interfaces)
        return (
            f"<domain type='{self.domain_type}'>"
            f"<name>{DOMAIN_PREFIX}{escape(spec.id)}</name>"
            f"<title>{escape(spec.name or spec.id)}</title>"
            f"<memory unit='KiB'>{spec.memory}</memory>"
            f"<vcpu>{spec.cpu}</vcpu>"
            f"<os><type arch='{arch}' machine='pc'>hvm</type><boot dev='hd'/></os>"
            "<features><acpi/><apic/></features>"
            "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>"
            f"<devices>{''.join(devices)}"
            f"<serial type='pty'><log file={quoteattr(str(self.console_log(spec.id)))} append='on'/>"
            "<target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>"
            "</devices></domain>"
        )

    async def adopt(self, machines: list[tuple[MachineSpec, str]]) -> None:
        """qemu:///system keeps its domains across cimid's restarts: nothing to rebuild."""

    async def create(self, spec: MachineSpec) -> None:
        await self._make_disks(spec)
        try:
            await self._call(lambda: self._connection().defineXML(self.domain_xml(spec)))
        except DriverError:
            disks.remove_tree(self.machine_dir(spec.id))
            raise

    def _image_file(self, image_id: str | None) -> Path:
        base = self.images.image_path(image_id) if image_id else None
        if base is None:
            raise DriverError(f"the MachineImage {image_id} is not in the image store; import it first")
        return base

    async def _make_disks(self, spec: MachineSpec) -> None:
        base = None if spec.boot_volume else self._image_file(spec.image_id)
        directory = self.machine_dir(spec.id)
        disks.make_reachable(directory)
        try:
            sizes = [d["capacity"] * KB for d in spec.disks]
            if base is not None:
                # The image goes on the first disk, grown to the first configured capacity if that is larger.
                info = await self.images.image_info(spec.image_id)
                boot_size = max(info["virtual_size"], sizes[0]) if sizes else None
                await disks.create_overlay(base, info["format"], directory / "disk0.qcow2",
                                           boot_size if boot_size != info["virtual_size"] else None)
            for index, size in enumerate(sizes[1:], start=1):
                await disks.create_sparse(directory / f"disk{index}.qcow2", size)
            await asyncio.to_thread(seed.build_seed, directory / "seed.iso", instance_id=spec.id,
                                    hostname=seed.hostname_of(spec.name, f"cimi-{spec.id[:8]}"),
                                    credential=spec.credential, user_data_b64=spec.user_data,
                                    interfaces=spec.interfaces)
        except BaseException:
            disks.remove_tree(directory)
            raise

    async def delete(self, machine_id: str) -> None:
        await super().delete(machine_id)
        await asyncio.to_thread(disks.remove_tree, self.machine_dir(machine_id))

    # ---------------------------------------------------------------- images of machines

    async def capture(self, machine_id: str, image_id: str) -> dict:
        """A standalone copy of the machine's boot disk in the image store (the machine is paused
        meanwhile if it runs, so the copy is consistent)."""
        paused = await self._call(self._pause_if_running, machine_id)
        try:
            boot_disk = self.machine_dir(machine_id) / "disk0.qcow2"
            return await self.images.add_image(image_id, lambda dest: disks.flatten(boot_disk, dest))
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
        base = self._image_file(image_id)
        was_active = await self._call(lambda: self._require(machine_id).isActive())
        if was_active:
            await self._call(lambda: self._require(machine_id).destroy())
        disk = self.machine_dir(machine_id) / "disk0.qcow2"
        info = await self.images.image_info(image_id)
        fresh = disk.with_name("disk0.new.qcow2")
        await disks.create_overlay(base, info["format"], fresh, None)
        fresh.replace(disk)
        if was_active:
            await self._call(lambda: self._require(machine_id).create())

    async def boot_image(self, machine_id: str) -> str | None:
        disk = self.machine_dir(machine_id) / "disk0.qcow2"
        backing = await disks.backing_file(disk) if disk.exists() else None
        if backing is None:
            return None
        image_id = Path(backing).name.split(".", 1)[0]
        return image_id if self.images.image_path(image_id) == Path(backing) else None

    # ---------------------------------------------------------------- volumes

    @staticmethod
    def volume_disk_xml(device: str, disk: dict) -> str:
        kind = "block" if disk["kind"] == "block" else "file"
        source = f"<source dev={quoteattr(disk['path'])}/>" if kind == "block" else \
            f"<source file={quoteattr(disk['path'])}/>"
        return (f"<disk type='{kind}' device='disk'><driver name='qemu' type='{disk['format']}'/>{source}"
                f"<target dev='{device}' bus='virtio'/></disk>")

    async def attach_volume(self, machine_id: str, device: str, disk: dict) -> None:
        xml = self.volume_disk_xml(device, disk)

        def plug(dom: libvirt.virDomain) -> None:
            # CONFIG: kept across restarts; LIVE: hot-plugged. Tried at once (a hot-plug is the case to be
            # quick), then CONFIG alone if the guest does not run. libvirt refuses a target the domain
            # has, live or defined, changing nothing.
            try:
                dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
                    raise
                dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

        def attach():
            try:
                plug(self._require(machine_id, reuse=True))  # the kept handle: no look-up on the hot path
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                plug(self._require(machine_id))  # the handle was stale (undefined behind cimid's back)
        await self._call(attach)

    def _detach(self, machine_id: str, find: Callable[[str], str | None], what: str) -> None:
        """Unplug the device `find` picks out of a domain's XML, from its definition and (running) live.
        A running guest lets go of it only when it has acknowledged the unplug (ACPI), which libvirt may
        not wait for: it is detached once the live domain lacks it. Blocking: run through _call."""
        dom = self._domain(machine_id)
        if dom is None:
            return
        for flags, xml_flags in ((libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_XML_INACTIVE),
                                 (libvirt.VIR_DOMAIN_AFFECT_LIVE, 0)):
            if flags == libvirt.VIR_DOMAIN_AFFECT_LIVE and not dom.isActive():
                continue
            element = find(dom.XMLDesc(xml_flags))
            if element is not None:
                dom.detachDeviceFlags(element, flags)
        for _ in range(DETACH_POLLS):
            if not dom.isActive() or find(dom.XMLDesc(0)) is None:
                return
            time.sleep(0.1)
        raise DriverError(f"the guest did not release {what} within {DETACH_POLLS // 10} s; it stays "
                          "attached (is the guest's OS up and handling ACPI hot-unplug?)")

    async def detach_volume(self, machine_id: str, device: str, source: str | None = None) -> None:
        await self._call(lambda: self._detach(machine_id, lambda xml: _disk_element(xml, device, source), device))

    async def has_volume(self, machine_id: str, device: str, source: str) -> bool:
        def look() -> bool:
            dom = self._domain(machine_id)
            return dom is not None and _disk_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), device,
                                                     source) is not None
        return await self._call(look)

    async def resize_volume(self, machine_id: str, device: str, capacity_kb: int) -> None:
        def resize():
            dom = self._require(machine_id)
            if dom.isActive():  # a stopped guest reads the new size from the file when it starts
                dom.blockResize(device, capacity_kb * KB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        await self._call(resize)

    # ---------------------------------------------------------------- network interfaces

    async def attach_interface(self, machine_id: str, iface: InterfaceSpec) -> None:
        xml = interface_xml(iface)

        def attach():
            dom = self._require(machine_id)
            if iface.mac.lower() in _macs(dom):
                raise DriverError(f"the machine already has an interface with MAC {iface.mac}")
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG  # kept across restarts; LIVE: hot-plugged now
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.attachDeviceFlags(xml, flags)
        await self._call(attach)

    async def detach_interface(self, machine_id: str, mac: str) -> None:
        mac = mac.lower()

        await self._call(lambda: self._detach(machine_id, lambda xml: _interface_element(xml, mac),
                                              f"the interface {mac}"))

    async def interfaces(self, machine_id: str) -> list[str]:
        return await self._call(lambda: sorted(_macs(self._require(machine_id))))

    async def console(self, machine_id: str, max_bytes: int) -> str:
        path = self.console_log(machine_id)
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode("utf-8", "replace")


def tap_name(mac: str) -> str:
    """The host end of a NIC: "cv" and the MAC's hex digits (14 characters, under IFNAMSIZ), so that an
    interface's tap is found by its MAC, and libvirt's own vnetN names are never taken."""
    return "cv" + mac.lower().replace(":", "")


def interface_xml(iface: InterfaceSpec) -> str:
    mtu = f"<mtu size='{int(iface.mtu)}'/>" if iface.mtu else ""
    return (f"<interface type='bridge'><mac address={quoteattr(iface.mac.lower())}/>"
            f"<source bridge={quoteattr(iface.bridge)}/><target dev={quoteattr(tap_name(iface.mac))}/>"
            f"<model type='virtio'/>{mtu}</interface>")


def _macs(dom) -> set[str]:
    """The MACs of the domain's NICs, as defined and as running."""
    found = set()
    for xml_flags in (libvirt.VIR_DOMAIN_XML_INACTIVE, 0):
        root = ElementTree.fromstring(dom.XMLDesc(xml_flags))
        found |= {m.get("address").lower() for m in root.findall("./devices/interface/mac")}
    return found


def _interface_element(domain_xml: str, mac: str) -> str | None:
    """The <interface> of a domain with that MAC, as XML (libvirt matches a detach by MAC)."""
    for nic in ElementTree.fromstring(domain_xml).findall("./devices/interface"):
        found = nic.find("mac")
        if found is not None and found.get("address", "").lower() == mac:
            return ElementTree.tostring(nic, encoding="unicode")
    return None


def _disk_element(domain_xml: str, device: str, source: str | None = None) -> str | None:
    """The <disk> of a domain whose target is `device` (and, if given, whose source is the file or block
    device `source`), as XML (what detachDeviceFlags matches)."""
    for disk in ElementTree.fromstring(domain_xml).findall("./devices/disk"):
        target, found = disk.find("target"), disk.find("source")
        if target is None or target.get("dev") != device:
            continue
        if source is None or (found is not None and source in (found.get("file"), found.get("dev"))):
            return ElementTree.tostring(disk, encoding="unicode")
    return None
