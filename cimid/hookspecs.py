"""Hook specifications: how drivers plug into cimid.

Every driver, built-in or third-party, is a module or object registered under the `cimid` entry-point
group that implements some of these hooks. Each `cimid_*_driver` hook is `firstresult`: cimid calls it once
at start-up with the loaded configuration, and the first plugin that recognises the configured driver
name answers with a driver object; the others return None. A driver that stands on another family's
driver gets it as a hook argument (the compute driver gets the image store), never through a global.
Core code never calls `pm.hook` directly: it goes through the typed facade in `cimid.plugins.Drivers`.

Drivers know nothing about HTTP or CIMI wire formats: they take plain values and raise
`cimid.errors.DriverError` when the host refuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import pluggy

if TYPE_CHECKING:
    from .config import Config

hookspec = pluggy.HookspecMarker("cimid")
hookimpl = pluggy.HookimplMarker("cimid")


@dataclass(frozen=True)
class InterfaceSpec:
    """One network interface of a machine: a virtio NIC on a cimid bridge."""

    mac: str  # "52:54:00:xx:xx:xx", chosen by cimid and reserved in the network's DHCP server
    bridge: str  # the Linux bridge it joins (NetworkSpec.bridge)
    mtu: int | None = None  # None: the bridge's
    # Static addressing, written to the cloud-init `network-config` of the seed (create) or ignored by a
    # hot-add (the guest asks DHCP, which answers the same address from its reservation). None: DHCP.
    address: str | None = None  # "10.0.7.5/24"
    gateway: str | None = None
    dns: tuple[str, ...] = ()


@dataclass
class MachineSpec:
    """Everything a compute driver needs to realise one Machine."""

    id: str  # the Machine's id, stable for its whole life
    name: str
    cpu: int
    memory: int  # KiB
    cpu_arch: str | None = None
    disks: list[dict] = field(default_factory=list)  # [{"capacity": KB, "format": ..., "initialLocation": ...}]
    image_location: str | None = None
    image_id: str | None = None  # the MachineImage whose data the driver imported (None: given by value)
    boot_volume: bool = False  # the boot disk (vda) is a Volume, attached after create: make no disk from an image
    user_data: str | None = None  # Base64, as the consumer gave it
    credential: dict | None = None  # {"userName", "password", "key"}
    interfaces: list[InterfaceSpec] = field(default_factory=list)  # in the guest's order (eth0, eth1 ...)

    def __post_init__(self) -> None:
        # A spec read back from the store (dataclasses.asdict, then JSON) holds its interfaces as dicts.
        self.interfaces = [InterfaceSpec(**{**i, "dns": tuple(i.get("dns") or ())}) if isinstance(i, dict) else i
                           for i in self.interfaces]


class ComputeDriver(Protocol):
    """Runs Machines. Every method returns when the host has done the work (or raises DriverError).
    Boot disks come from, and captures go to, the ImageStore the driver was made with."""

    name: str

    async def open(self) -> None:
        """Connect to the hypervisor; raise DriverError(unavailable=True) if it does not answer."""

    async def close(self) -> None: ...

    async def health(self) -> dict[str, str]:
        """Human-readable facts for `cimid check`, e.g. {"connection": "qemu:///system answers"}."""

    def watch(self, callback: Callable[[str, str, str], None]) -> None:
        """Call `callback(machine_id, cimi_state, reason)` whenever the host changes a machine's state by
        itself (a guest powering off, a crash), from the event loop."""

    async def adopt(self, machines: list[tuple[MachineSpec, str]]) -> None:
        """Called once at start-up with every stored Machine and its last stable CIMI state, so a backend
        whose state does not outlive the process (the sandbox) can rebuild it. Persistent backends ignore it."""

    async def create(self, spec: MachineSpec) -> None:
        """Define the machine, stopped, with its disks and cloud-init seed. With `spec.boot_volume` it has
        no boot disk of its own: the volume attached as vda before its first start is the one it boots."""

    async def start(self, machine_id: str) -> None:
        """Boot it, or resume it from PAUSED or SUSPENDED."""

    async def stop(self, machine_id: str, force: bool) -> None:
        """Shut it down (graceful ACPI), or power it off when force is true."""

    async def pause(self, machine_id: str) -> None: ...

    async def suspend(self, machine_id: str) -> None:
        """Save its memory to disk and stop it (resumed by start)."""

    async def delete(self, machine_id: str) -> None:
        """Remove it and every file made for it; a machine the host does not know is not an error."""

    async def state(self, machine_id: str) -> str | None:
        """The CIMI state the host reports (STARTED, STOPPED, PAUSED, SUSPENDED, ERROR ...), None if unknown."""

    async def capture(self, machine_id: str, image_id: str) -> dict:
        """Copy the machine's boot disk, flattened, into the image store as `image_id` (ImageStore.add_image).

        :return: {"format", "virtual_size", "location"} of the new image (location: a URI of the copy)
        """

    async def restore(self, machine_id: str, image_id: str) -> None:
        """Make the machine's boot disk a fresh copy-on-write overlay on the image `image_id`."""

    async def boot_image(self, machine_id: str) -> str | None:
        """The id of the image the machine's boot disk stands on now, None if the driver cannot tell. Asked
        after a restore that did not succeed: it may have replaced the disk before it failed or was cut short."""

    async def console(self, machine_id: str, max_bytes: int) -> str:
        """The last `max_bytes` of what the guest wrote to its serial console."""

    async def attach_volume(self, machine_id: str, device: str, disk: dict) -> None:
        """Attach a volume as the guest's `device` (vdb ...); `disk` is StorageDriver.attachment(). A
        running guest sees it at once (hot-plug) and keeps it across restarts; a stopped one at its next
        start. DriverError, with nothing changed, if the machine already has a disk `device`."""

    async def detach_volume(self, machine_id: str, device: str, source: str | None = None) -> None:
        """Remove the disk `device` (from a running guest too); one the machine lacks is not an error.
        With `source` (a disk's path), only if the disk `device` is that one."""

    async def has_volume(self, machine_id: str, device: str, source: str) -> bool:
        """Whether the machine's definition (what it keeps across restarts) has the disk `source` (a disk's
        path) as `device`: asked after a restart about an attach that was cut short."""

    async def resize_volume(self, machine_id: str, device: str, capacity_kb: int) -> None:
        """Tell a running guest its disk `device` grew to `capacity_kb` (the guest sees the new size)."""

    async def attach_interface(self, machine_id: str, iface: InterfaceSpec) -> None:
        """Add a NIC with `iface.mac` on `iface.bridge`: a running guest sees a new link at once
        (hot-plug) and keeps it across restarts; a stopped one at its next start. DriverError if the
        machine already has that MAC."""

    async def detach_interface(self, machine_id: str, mac: str) -> None:
        """Remove the NIC with that MAC (from a running guest too); one the machine lacks is not an error."""

    async def interfaces(self, machine_id: str) -> list[str]:
        """The MACs of the machine's NICs as the host has them (asked after an attach that was cut short)."""

    async def forget(self) -> None:
        """Remove every machine this driver made, at once: the test-control extension's reset (the
        sandbox drops its fake host; a real host would delete each machine)."""


Progress = Callable[[int], Awaitable[None]]  # percent done


class ImageStore(Protocol):
    """Keeps the data of MachineImages: imports it, hands it to the compute driver, takes in captures.

    A store whose `imports_images` is false keeps MachineImages as catalogue entries: cimid never asks it
    to import, and Machines may name an image by value (the sandbox). It still keeps what is given to it.
    """

    name: str
    imports_images: bool  # True: a MachineImage is downloaded and inspected (import_image) before use

    async def open(self) -> None:
        """Get ready; raise DriverError(unavailable=True) if the backing store cannot be used."""

    async def close(self) -> None: ...

    async def health(self) -> dict[str, str]:
        """Human-readable facts for `cimid check`."""

    async def import_image(self, image_id: str, location: str, checksum: str | None,
                           progress: Progress) -> dict:
        """Download `location` into the store, verify `checksum` ("sha256:<hex>"), inspect it; on any
        failure nothing is left behind.

        :return: {"format": "qcow2" | "raw", "virtual_size": bytes}
        """

    async def add_image(self, image_id: str, fill: Callable[[Path], Awaitable[None]]) -> dict:
        """Keep new image data that `fill(path)` writes into the file `path` (a capture); refuse it, leaving
        nothing, if it is not a self-contained raw or qcow2 image.

        :return: {"format", "virtual_size", "location"} (location: a URI of the kept copy)
        """

    async def image_info(self, image_id: str) -> dict | None:
        """{"format", "virtual_size"} of the image's data; None if the store holds none for it."""

    def image_path(self, image_id: str) -> Path | None:
        """The file holding the image, for a hypervisor to read; None if there is no such file."""

    async def delete_image(self, image_id: str) -> None:
        """Forget the image and anything an interrupted import left; an unknown id is not an error."""


class StorageDriver(Protocol):
    """One storage pool of Volumes (`[storage.pools.<name>]` in the config): a directory of qcow2 files
    ("dir"), an LVM volume group ("lvm"), or memory (the sandbox). Sizes are KiB (CIMI's kilobytes, read
    as 1024 bytes like a Machine's memory). Every method returns when the host has done the work, or
    raises DriverError having left nothing half-made (no file, LV or partial copy).

    A pool also keeps the data of the VolumeImages taken of (or imported into) it, by image id."""

    name: str  # the driver's name ("dir", "memory", "lvm")
    shareable: bool  # its volumes may be attached to several machines at once

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def health(self) -> dict[str, str]:
        """Human-readable facts for `cimid check`: driver, free and used space (thin pools: fill)."""

    async def space(self) -> dict:
        """{"total_kb", "free_kb"}: what a new volume or a grow may still take (asked before any work, and
        every storage.space_check_seconds for the alarm of a pool over storage.full_alarm_percent full). A
        pool with a fill limit (an LVM thin pool) adds "fill_percent" and "fill_limit_percent": over its
        limit, new volumes are refused whatever their size."""

    async def usage(self) -> dict[str, int]:
        """{volume id: KiB the volume takes in the pool now} for every volume of the pool, in one call (a
        sampling round asks it for the volumes' disk Meters): a sparse file's blocks, a thin LV's data,
        a thick LV's size."""

    async def adopt(self, volumes: dict[str, int], images: dict[str, int]) -> None:
        """Called once at start-up with every stored volume and image of the pool (id -> capacity_kb), so a
        pool whose contents do not outlive the process (memory) can rebuild them. Persistent pools ignore it."""

    async def create_volume(self, volume_id: str, capacity_kb: int, image_id: str | None = None) -> None:
        """Make a volume of `capacity_kb`, empty (sparse), or holding the data of the pool's image
        `image_id` (copy-on-write where the driver can); DriverError if the id is taken or space short."""

    async def volume(self, volume_id: str) -> dict | None:
        """{"capacity_kb", "format"} of the volume as the host has it; None if there is none."""

    async def attachment(self, volume_id: str) -> dict:
        """How a hypervisor reaches the volume: {"kind": "file" | "block", "path", "format": "qcow2" | "raw"}."""

    async def grow_volume(self, volume_id: str, capacity_kb: int, attached_live: bool) -> None:
        """Make the volume `capacity_kb` (larger than now; the caller refused shrinking). The caller then
        tells each running guest that has it (ComputeDriver.resize_volume). `attached_live`: a running
        guest has it open, so a file pool leaves the growing to the hypervisor; a block pool grows first."""

    async def snapshot_volume(self, volume_id: str, image_id: str) -> dict:
        """Keep a point-in-time copy of the volume's data as the image `image_id` (the volume stays
        usable).

        :return: {"capacity_kb"} of the image
        """

    async def import_image(self, image_id: str, location: str, checksum: str | None, progress: Progress) -> dict:
        """Download `location` (http(s):// or file://) as the image `image_id`, verify `checksum`
        ("sha256:<hex>") and inspect it (raw or self-contained qcow2 only); nothing left on failure.

        :return: {"capacity_kb"} (the image's virtual size, rounded up)
        """

    async def restore_volume(self, volume_id: str, image_id: str) -> None:
        """Replace the volume's data by the image's (the volume keeps its capacity if it is larger)."""

    async def delete_image(self, image_id: str) -> None:
        """Forget the image's data; an unknown id is not an error."""

    async def delete_volume(self, volume_id: str) -> None:
        """Remove the volume and its data; an unknown id is not an error."""

    async def forget(self) -> None:
        """Remove every volume and image of the pool (the test-control extension's reset)."""


class Reservation(NamedTuple):
    """A DHCP host reservation: the network's DHCP server gives `ip` (and `hostname`) to `mac` only."""

    mac: str
    ip: str
    hostname: str | None = None


NETWORK_TYPES = ("PRIVATE", "PUBLIC")


@dataclass(frozen=True)
class NetworkSpec:
    """Everything a network driver needs to realise one Network as a Linux bridge cimid owns."""

    network_id: str
    bridge: str  # the link name, derived by the service ("cimid" + 10 hex of the id, <= 15) and stored
    network_type: str = "PRIVATE"  # PRIVATE: guests reach each other only; PUBLIC: and the uplink
    cidr: str | None = None  # the IPv4 subnet, "10.0.7.0/24"; None: a bare L2 bridge, no address, no DHCP
    gateway: str | None = None  # the host's address on the bridge, inside cidr (None: the host has none)
    dns: tuple[str, ...] = ()  # DNS servers the DHCP server announces (empty: the gateway, if dnsmasq serves DNS)
    mtu: int | None = None  # 68..65535; None: the kernel's default
    uplink: str | None = None  # PUBLIC: the host link to masquerade to, or (bridged) to enslave
    bridged: bool = False  # PUBLIC: the uplink joins the bridge (no NAT) instead of a masquerade
    dhcp: bool = True  # run a DHCP server (dnsmasq) on the bridge, answering only `reservations`
    # Every Address of the network: cimid allocates the ip of dynamic addresses too and reserves it here,
    # so the lease a guest gets and its Address resource always agree.
    reservations: tuple[Reservation, ...] = ()


class NetworkDriver(Protocol):
    """Provides Networks as Linux bridges (with a DHCP server and nftables rules cimid owns), their
    operator ports and the forwarding between them. Every method returns when the host has done the work,
    or raises DriverError having left nothing half-made. Clashes raise DriverError with a message a
    consumer can act on: a bridge name taken by a link cimid did not make, a subnet overlapping another
    network's (or a host route's), an MTU the link refuses."""

    name: str

    async def open(self) -> None:
        """Get ready; raise DriverError(unavailable=True) if the host cannot be driven (no privileges)."""

    async def close(self) -> None:
        """Stop watching; networks, DHCP servers and rules stay up (they outlive the daemon)."""

    async def health(self) -> dict[str, str]:
        """Human-readable facts for `cimid check` (driver, uplink, the nftables table)."""

    def watch(self, callback: Callable[[str, str], None]) -> None:
        """Call `callback(network_id, message)` from the event loop when the driver had to repair a
        network by itself (its DHCP server died and was restarted; the bridge vanished and was remade)."""

    async def adopt(self, networks: list[tuple[NetworkSpec, bool]], ports: dict[str, str],
                    groups: dict[str, tuple[str, ...]]) -> None:
        """Called once at start-up with every stored network (and whether it is STARTED), every NetworkPort
        (port id -> network id) and every ForwardingGroup (group id -> member network ids): rebuild what is
        missing (a host reboot), remove links, processes and rules that cimid made for nothing stored (a
        Job killed half-way), never touch anything cimid did not make."""

    async def host_subnets(self) -> dict[str, str]:
        """{IPv4 subnet: link name} of the addresses on the host's links that this driver did not make, so
        that a new network's subnet is never one the host uses already (another cimid's bridge, a LAN)."""

    async def create_network(self, spec: NetworkSpec) -> None:
        """Make the bridge (down), its addresses and rules, and record the spec; DriverError on a clash."""

    async def start_network(self, network_id: str) -> None:
        """Bring the bridge up and start its DHCP server (if spec.dhcp and it has a cidr)."""

    async def stop_network(self, network_id: str) -> None:
        """Stop its DHCP server and bring the bridge down (guests on it lose their link)."""

    async def delete_network(self, network_id: str) -> None:
        """Remove the bridge, its DHCP server, leases and rules; an unknown id is not an error."""

    async def network(self, network_id: str) -> dict[str, str] | None:
        """What the host has for the network, for `cimid check` and after a Job: {"bridge": "present" |
        "missing", "dhcp": "present" | "missing" | "off", "rules": "present" | "missing" | "none",
        "link": "up" | "down"}; None if the driver knows no such network. `cimid check` asks it from a
        process of its own, with the driver opened but not adopted: a host driver answers from the host
        and its own records (the memory driver, whose networks live in the daemon, answers None)."""

    async def set_reservations(self, network_id: str, reservations: tuple[Reservation, ...]) -> None:
        """Replace the network's DHCP reservations (a running DHCP server rereads them without restarting)."""

    async def leases(self, network_id: str) -> dict[str, str]:
        """The addresses the DHCP server has handed out now: {mac: ip}."""

    async def create_port(self, network_id: str, port_id: str) -> dict[str, str]:
        """Make a port for something that is not a machine: a veth pair, one end enslaved to the bridge,
        the other left to the operator.

        :return: {"peer": the operator's end's link name}
        """

    async def delete_port(self, port_id: str) -> None:
        """Remove the port's veth pair; an unknown id is not an error."""

    async def set_forwarding_group(self, group_id: str, network_ids: tuple[str, ...]) -> None:
        """Let the member networks route to each other (nftables forward rules), replacing the group's
        previous members; networks in no common group cannot."""

    async def delete_forwarding_group(self, group_id: str) -> None:
        """Remove the group's rules; an unknown id is not an error."""

    async def forget(self) -> None:
        """Remove every network, port and group this driver made (the test-control extension's reset)."""


@dataclass(frozen=True)
class Aspect:
    """One thing a meter source measures, in the units every source reports it in."""

    name: str  # the last segment of the CIMI aspect URI (cpu, memory ...) or a cimid extension's name
    units: str
    time_scope: str  # "Point": a level when read; "Interval": a rate over the time since the previous read
    description: str
    minimum: float | None = 0.0
    maximum: float | None = None


# What a source may report, and in which units: one meaning for every source and target kind.
ASPECTS: dict[str, Aspect] = {a.name: a for a in (
    Aspect("cpu", "percent", "Interval", "CPU time used, percent of the target's whole capacity (all its cores)",
           maximum=100.0),
    Aspect("memory", "kibibyte", "Point", "memory in use (host: total minus available; machine: guest RSS)"),
    Aspect("disk", "kilobyte", "Point", "disk space in use (host: the state directory's file system; machine: "
                                        "what its disks take on the host), 1024 bytes a kilobyte as in CIMI capacities"),
    Aspect("diskIO", "byte/s", "Interval", "bytes read plus written per second"),
    Aspect("inputBandwidth", "byte/s", "Interval", "bytes received per second on network interfaces"),
    Aspect("outputBandwidth", "byte/s", "Interval", "bytes sent per second on network interfaces"),
)}

HOST = "host"  # MeterSource.kind of a source that measures the host itself
MACHINE = "machine"  # ... that measures Machines, by machine id
VOLUME = "volume"  # ... that measures Volumes, by volume id
NETWORK = "network"  # ... that measures Networks, by network id
# The Meter service maps kinds to resource types (cimid.service.meters.TARGETS).


class MeterSource(Protocol):
    """Measures every target of one kind at once: one reading per sampling round, however many Meters
    there are (a libvirt source makes one bulk statistics call, not one per machine per aspect).

    Rates (Interval aspects) are over the time since the source's previous reading, so the first reading
    has only Point aspects. Readings are plain numbers in the units of ASPECTS."""

    name: str
    kind: str  # HOST, MACHINE, VOLUME or NETWORK
    aspects: tuple[str, ...]  # the ASPECTS it reports

    async def read(self) -> dict[str, dict[str, float]]:
        """{target id: {aspect: value}}; the host's target id is "". A target or aspect the source cannot
        measure now (a stopped machine) is left out; DriverError if the backend does not answer."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class PlacementRequest:
    """What a federation front is asked to place (one new resource)."""

    collection: str  # e.g. "machines"
    cpu: int = 0
    memory_kb: int = 0
    target: str | None = None  # a node the client named (the cimid:target extension), else None
    api_level: int = 1  # the least node api_level the request needs


@dataclass(frozen=True)
class PlacementCandidate:
    """A live node, as its capacity record in etcd says now (reservations in flight already taken off)."""

    name: str
    api_level: int
    free_cpu: int
    free_memory_kb: int
    machines: int


class CimidSpec:
    @hookspec(firstresult=True)
    def cimid_image_store(self, config: Config) -> ImageStore | None:
        """Return the image store named by `config["images"]["driver"]`, if this plugin provides it.
        Called before `cimid_compute_driver`, which receives the store.

        :param config: the loaded configuration (profile, state_dir, sections)
        :return: a store, not yet opened; None if this plugin does not provide that store
        """

    @hookspec(firstresult=True)
    def cimid_compute_driver(self, config: Config, images: ImageStore | None) -> ComputeDriver | None:
        """Return the compute driver named by `config["compute"]["driver"]`, if this plugin provides it.

        :param config: the loaded configuration (profile, state_dir, sections)
        :param images: the configured image store (None if none is), where boot disks come from and
            captures go; an implementation may leave this parameter out if it needs no store
        :return: a driver, not yet opened; None if this plugin does not provide that driver
        """

    @hookspec(firstresult=True)
    def cimid_storage_pool(self, config: Config, name: str, settings: dict) -> StorageDriver | None:
        """Return a driver for the storage pool `name` if this plugin provides `settings["driver"]`.
        Called once per pool in `config["storage"]["pools"]` at start-up.

        :param config: the loaded configuration (state_dir for default paths)
        :param name: the pool's name (what a VolumeConfiguration's type names)
        :param settings: the pool's table: "driver" and the driver's own keys (path, capacity_gb, ...)
        :return: a driver, not yet opened; None if this plugin does not provide that driver
        """

    @hookspec(firstresult=True)
    def cimid_network_driver(self, config: Config) -> NetworkDriver | None:
        """Return the network driver named by `config["network"]["driver"]`, if this plugin provides it.

        :param config: the loaded configuration (`[network]`: driver, uplink, bridged)
        :return: a driver, or None
        """

    @hookspec
    def cimid_meter_sources(self, config: Config, compute: ComputeDriver | None,
                            pools: dict[str, StorageDriver], network: NetworkDriver | None) -> list[MeterSource]:
        """Return the meter sources this plugin offers; every plugin's lists are combined. Called once at
        start-up, after `cimid_compute_driver` and `cimid_storage_pool`.

        :param config: the loaded configuration
        :param compute: the configured compute driver (None if none is), so that a source of machine
            statistics shares its hypervisor connection; an implementation may leave this parameter out
        :param pools: the storage pools by name (empty without any), for a source of volume statistics;
            an implementation may leave this parameter out
        :param network: the configured network driver (None if none is), for a source of network counters;
            an implementation may leave this parameter out
        :return: a list, possibly empty
        """

    @hookspec(firstresult=True)
    def cimid_place(self, request: PlacementRequest, candidates: list[PlacementCandidate]) -> str | None:
        """Choose the node a federation front creates a resource on (`cimid front`; the counterpart of
        Incus's placement scriptlet). Called for every create, with fresh candidates; the front then
        reserves the capacity on the chosen node with an etcd compare-and-swap, and asks again if another
        front reserved first. The built-in policy runs last: nodes that fit, fewest machines first.

        :param request: what is to be made and what it needs
        :param candidates: the live nodes whose api_level serves the request (their free capacity,
            machines, api_level); a node of a lower level is never offered
        :return: the chosen node's name; None to leave the choice to the next plugin (the last one's
            None means no node fits, and the create is refused)
        """
