"""Every resource type cimid serves, declared once, attributes in DSP8009 1.0.2 (CIMI 1.1) element order."""

from __future__ import annotations

from .types import REF, Action, Attribute, ResourceType, common_attributes

MACHINE_STATES = (
    "CREATING", "STARTING", "STARTED", "STOPPING", "STOPPED", "PAUSING", "PAUSED",
    "SUSPENDING", "SUSPENDED", "CAPTURING", "RESTORING", "DELETING", "ERROR",
)
MACHINE_TRANSITIONAL = ("CREATING", "STARTING", "STOPPING", "PAUSING", "SUSPENDING", "CAPTURING", "RESTORING",
                        "DELETING")
INITIAL_STATES = ("STARTED", "STOPPED")
CPU_ARCHES = (
    "68000", "Alpha", "ARM", "Itanium", "MIPS", "PA_RISC", "POWER", "PowerPC", "x86", "x86_64",
    "z/Architecture", "SPARC",
)
JOB_STATES = ("QUEUED", "RUNNING", "FAILED", "SUCCESS", "STOPPING", "STOPPED")
JOB_FINISHED = ("FAILED", "SUCCESS", "STOPPED")


def _ro(name: str, type_: str, **kw) -> Attribute:
    """A provider-owned attribute: consumers read it, writes are ignored."""
    return Attribute(name, type_, consumer_writable=False, **kw)


MachineConfigurationDisk = ResourceType(
    "MachineConfigurationDisk",
    [
        Attribute("capacity", "integer", consumer_mandatory=True, minimum=1,
                  description="kilobytes"),
        Attribute("format", "string", consumer_mandatory=True, max_length=64,
                  description="file system or disk format, e.g. ext4, raw"),
        Attribute("initialLocation", "string", max_length=255),
    ],
)

MachineConfiguration = ResourceType(
    "MachineConfiguration",
    [
        *common_attributes(),
        Attribute("cpu", "integer", consumer_mandatory=True, minimum=1, description="number of virtual CPUs"),
        Attribute("memory", "integer", consumer_mandatory=True, minimum=1, description="kibibytes"),
        Attribute("disks", "array", target="MachineConfigurationDisk", xml_item="disk"),
        Attribute("cpuArch", "string", enum=CPU_ARCHES),
        Attribute("cpuSpeed", "integer", minimum=1, description="megahertz"),
    ],
    collection="machineConfigs",
    items="machineConfigurations",
    description="The virtual hardware of a Machine to be created.",
)

MachineImage = ResourceType(
    "MachineImage",
    [
        *common_attributes(),
        _ro("state", "string", enum=("CREATING", "AVAILABLE", "DELETING", "ERROR")),
        Attribute("type", "string", mutable=False, enum=("IMAGE", "SNAPSHOT", "PARTIAL_SNAPSHOT")),
        Attribute("imageLocation", "URI", mutable=False, consumer_mandatory=True),
        Attribute("relatedImage", "ref", target="MachineImage", mutable=False),
    ],
    collection="machineImages",
    items="machineImages",
    states=("CREATING", "AVAILABLE", "DELETING", "ERROR"),
    description="A disk image Machines boot from.",
)

_CREDENTIAL_ATTRIBUTES = [
    *common_attributes(),
    Attribute("userName", "string", max_length=64),
    Attribute("password", "string", max_length=255, write_only=True,
              description="write-only: stored and given to the machine, never returned (not with $select or "
                          "$expand either); an update that leaves it out keeps the stored one"),
    Attribute("key", "byte[]", max_length=16384, description="SSH public key"),
]

Credential = ResourceType(
    "Credential",
    list(_CREDENTIAL_ATTRIBUTES),
    collection="credentials",
    items="credentials",
    create_wrapper="CredentialCreate",
    template_attribute="credentialTemplate",
    xml_operations_after="properties",
    description="The first administrative user of a Machine.",
)

CredentialTemplate = ResourceType(
    "CredentialTemplate",
    list(_CREDENTIAL_ATTRIBUTES),
    collection="credentialTemplates",
    items="credentialTemplates",
    xml_operations_after="properties",
    description="What a Credential is made from.",
)

MachineTemplate = ResourceType(
    "MachineTemplate",
    [
        *common_attributes(),
        Attribute("initialState", "string", enum=INITIAL_STATES),
        Attribute("machineConfig", "ref", target="MachineConfiguration", by_value=True),
        Attribute("machineImage", "ref", target="MachineImage", by_value=True),
        Attribute("credential", "ref", target="Credential", by_value=True),
        Attribute("userData", "string", max_length=65536, description="Base64-encoded user data"),
    ],
    collection="machineTemplates",
    items="machineTemplates",
    description="What a Machine is made from: configuration, image, credential, user data.",
)

Disk = ResourceType(
    "Disk",
    [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        _ro("capacity", "integer", description="kilobytes"),
        _ro("initialLocation", "string"),
    ],
    collection="disks",
    items="disks",
    editable=False,
    deletable=False,
    creatable=False,
    xml_has_common=False,
    owner="Machine",
    description="Local storage of a Machine.",
)

MachineSnapshot = ResourceType(
    "MachineSnapshot",
    [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        _ro("created", "dateTime"),
        _ro("snapshot", "ref", target="MachineImage", xml_name="shapshot"),  # sic, DSP8009 1.0.2
    ],
    collection="snapshots",
    items="machineSnapshots",
    editable=False,
    deletable=False,
    creatable=False,
    owner="Machine",
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

Machine = ResourceType(
    "Machine",
    [
        *common_attributes(),
        _ro("state", "string", enum=MACHINE_STATES),
        _ro("cpu", "integer"),
        _ro("memory", "integer", description="kibibytes"),
        _ro("disks", "collection", target="Disk"),
        _ro("cpuArch", "string"),
        _ro("cpuSpeed", "integer"),
        _ro("latestSnapshot", "ref", target="MachineImage"),
        _ro("snapshots", "collection", target="MachineSnapshot"),
    ],
    collection="machines",
    items="machines",
    states=MACHINE_STATES,
    transitional_states=MACHINE_TRANSITIONAL,
    actions=MACHINE_ACTIONS,
    create_wrapper="MachineCreate",
    template_attribute="machineTemplate",
    description="A virtual machine.",
)

Job = ResourceType(
    "Job",
    [
        *common_attributes(),
        _ro("state", "string", enum=JOB_STATES),
        _ro("targetResource", "ref"),
        _ro("affectedResources", "array", target=REF, xml_item="affectedResource"),
        _ro("action", "string"),
        _ro("returnCode", "integer"),
        _ro("progress", "integer"),
        _ro("statusMessage", "string"),
        _ro("timeOfStatusChange", "dateTime"),
        _ro("parentJob", "ref", target="Job"),
        _ro("nestedJobs", "array", target=REF, xml_item="nestedJob"),
    ],
    collection="jobs",
    items="jobs",
    states=JOB_STATES,
    transitional_states=("QUEUED", "RUNNING", "STOPPING"),
    actions={"stop": Action("stop", ("QUEUED", "RUNNING"), "STOPPING", "STOPPED",
                            "Stop the Job where its current step allows it.")},
    creatable=False,
    description="A process the provider performs; every mutating request makes one.",
)

ResourceMetadata = ResourceType(
    "ResourceMetadata",
    [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        _ro("typeURI", "URI"),
        _ro("name", "string"),
        _ro("attributes", "array"),
        _ro("capabilities", "array"),
        _ro("actions", "array"),
    ],
    collection="resourceMetadata",
    items="resourceMetadatas",
    editable=False,
    deletable=False,
    creatable=False,
    description="What the provider supports for one resource type.",
)

_CEP_COLLECTIONS = ["resourceMetadata", "machines", "machineTemplates", "machineConfigs", "machineImages",
                    "credentials", "credentialTemplates", "jobs"]

CloudEntryPoint = ResourceType(
    "CloudEntryPoint",
    [
        *common_attributes(),
        _ro("baseURI", "URI"),
        *[_ro(name, "collection") for name in _CEP_COLLECTIONS],
    ],
    editable=False,
    deletable=False,
    creatable=False,
    description="The entry point: every collection the provider serves.",
)

# Request documents (never stored).
MachineCreate = ResourceType(
    "MachineCreate",
    [*common_attributes(), Attribute("machineTemplate", "ref", target="MachineTemplate", by_value=True,
                                     consumer_mandatory=True)],
)
CredentialCreate = ResourceType(
    "CredentialCreate",
    [*common_attributes(), Attribute("credentialTemplate", "ref", target="CredentialTemplate", by_value=True,
                                     consumer_mandatory=True)],
)
ActionRequest = ResourceType(
    "Action",
    [
        Attribute("action", "URI", consumer_mandatory=True),
        Attribute("force", "boolean"),
        Attribute("image", "ref", target="MachineImage"),
        Attribute("properties", "map"),
    ],
)

ALL = [
    MachineConfigurationDisk, MachineConfiguration, MachineImage, Credential, CredentialTemplate,
    MachineTemplate, Disk, MachineSnapshot, Machine, Job, ResourceMetadata, CloudEntryPoint,
    MachineCreate, CredentialCreate, ActionRequest,
]
TYPES: dict[str, ResourceType] = {t.name: t for t in ALL}
BY_COLLECTION: dict[str, ResourceType] = {t.collection: t for t in ALL if t.collection and not t.owner}
# Collections that belong to one Machine: machines/{id}/disks, machines/{id}/snapshots.
MACHINE_PARTS: dict[str, ResourceType] = {t.collection: t for t in ALL if t.owner == "Machine"}
# What may appear as an XML/JSON request root, by element name.
REQUEST_ROOTS = {t.name: t for t in ALL if t.name not in ("ResourceMetadata", "CloudEntryPoint", "Disk",
                                                          "MachineSnapshot", "MachineConfigurationDisk")}
