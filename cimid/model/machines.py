"""Machines, their disks and snapshots, and the document that creates them."""

from __future__ import annotations

from .types import OWN_LOG, TARGETING, Action, Attribute, Extension, Family, ResourceType, common_attributes, read_only

MACHINE_STATES = (
    "CREATING", "STARTING", "STARTED", "STOPPING", "STOPPED", "PAUSING", "PAUSED",
    "SUSPENDING", "SUSPENDED", "CAPTURING", "RESTORING", "DELETING", "ERROR",
)
MACHINE_TRANSITIONAL = ("CREATING", "STARTING", "STOPPING", "PAUSING", "SUSPENDING", "CAPTURING", "RESTORING",
                        "DELETING")

Disk = ResourceType(
    "Disk",
    [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        read_only("capacity", "integer", description="kilobytes"),
        read_only("initialLocation", "string"),
    ],
    collection="disks",
    items="disks",
    parent="Machine",
    editable=False,
    deletable=False,
    creatable=False,
    description="Local storage of a Machine.",
)

MachineSnapshot = ResourceType(
    "MachineSnapshot",
    [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        read_only("created", "dateTime"),
        read_only("snapshot", "ref", target="MachineImage"),
    ],
    collection="snapshots",
    items="machineSnapshots",
    parent="Machine",
    editable=False,
    deletable=False,
    creatable=False,
    description="A SNAPSHOT MachineImage taken of a Machine.",
)

MACHINE_ACTIONS = {
    a.name: a
    for a in [
        Action("start", ("STOPPED", "PAUSED", "SUSPENDED"), "STARTING", "STARTED",
               "Boot a stopped machine, or resume a paused or suspended one."),
        Action("stop", ("STARTED", "PAUSED"), "STOPPING", "STOPPED",
               "Shut down gracefully (ACPI), or power off when force is true.", params=("force",)),
        Action("restart", ("STARTED", "STOPPED"), "STOPPING", "STARTED",
               "Stop (force as given) then start, as two nested Jobs.", params=("force",)),
        Action("pause", ("STARTED",), "PAUSING", "PAUSED", "Freeze the machine, memory kept in RAM."),
        Action("suspend", ("STARTED",), "SUSPENDING", "SUSPENDED", "Save the machine's memory to disk and stop it."),
        Action("capture", ("STARTED", "STOPPED", "PAUSED"), "CAPTURING", "captured",
               "Make a new IMAGE MachineImage of the boot disk, flattened (body: a MachineImage or an Action)."),
        Action("snapshot", ("STARTED", "STOPPED", "PAUSED"), "CAPTURING", "snapshotted",
               "Make a SNAPSHOT MachineImage of the boot disk, listed in the machine's snapshots."),
        Action("restore", ("STARTED", "STOPPED"), "RESTORING", "restored",
               "Revert the boot disk to the MachineImage given as `image`.", params=("image",)),
    ]
}

CONSOLE = Extension(
    "console", "urn:x-cimid:operation:console", "text/plain",
    "Provider extension: the last bytes (query parameter bytes, default 65536) the guest wrote to its "
    "serial console.",
    unavailable_in=("CREATING", "DELETING"),
)

Machine = ResourceType(
    "Machine",
    [
        *common_attributes(),
        read_only("state", "string", enum=MACHINE_STATES),
        read_only("cpu", "integer"),
        read_only("memory", "integer", description="kibibytes"),
        read_only("disks", "collection", target="Disk"),
        read_only("cpuArch", "string"),
        read_only("cpuSpeed", "integer"),
        read_only("volumes", "collection", target="MachineVolume",
                  description="the Volumes attached to it: POST a MachineVolume to attach, DELETE it to detach"),
        read_only("networkInterfaces", "collection", target="MachineNetworkInterface",
                  description="its network interfaces: POST a MachineNetworkInterface to add, DELETE it to remove"),
        read_only("latestSnapshot", "ref", target="MachineImage"),
        read_only("snapshots", "collection", target="MachineSnapshot"),
        read_only("meters", "collection", target="Meter", derived=TARGETING,
                  description="the Meters whose targetResource is this Machine"),
        read_only("eventLog", "ref", target="EventLog", derived=OWN_LOG),
    ],
    collection="machines",
    items="machines",
    states=MACHINE_STATES,
    transitional_states=MACHINE_TRANSITIONAL,
    actions=MACHINE_ACTIONS,
    extensions={CONSOLE.name: CONSOLE},
    create_wrapper="MachineCreate",
    template_attribute="machineTemplate",
    description="A virtual machine.",
)

MachineCreate = ResourceType(
    "MachineCreate",
    [*common_attributes(), Attribute("machineTemplate", "ref", target="MachineTemplate", by_value=True,
                                     consumer_mandatory=True)],
    request_document=True,
)

FAMILY = Family("machines", (Disk, MachineSnapshot, Machine, MachineCreate), service="machines:Machines",
                requires="compute")
