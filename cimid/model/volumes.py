"""Volumes: block storage that outlives Machines, what it is made from (VolumeConfiguration,
VolumeTemplate, VolumeImage), and its attachment to a Machine (MachineVolume, the Machine's `volumes`).
Attributes in DSP8009 1.0.2 (CIMI 1.1) element order."""

from __future__ import annotations

from .types import OWN_LOG, TARGETING, Action, Attribute, Family, ResourceType, common_attributes, read_only

VOLUME_STATES = ("CREATING", "AVAILABLE", "CAPTURING", "RESTORING", "DELETING", "ERROR")
VOLUME_TRANSITIONAL = ("CREATING", "CAPTURING", "RESTORING", "DELETING")
VOLUME_IMAGE_STATES = ("CREATING", "AVAILABLE", "DELETING", "ERROR")
# A VolumeConfiguration's `type` that names the storage pool (etc/cimid.toml [storage.pools.<name>]).
POOL_TYPE_PREFIX = "urn:x-cimid:pool:"

VolumeConfiguration = ResourceType(
    "VolumeConfiguration",
    [
        *common_attributes(),
        Attribute("type", "URI", max_length=255,
                  description=f"the storage pool: {POOL_TYPE_PREFIX}<pool name>; absent: the default pool"),
        Attribute("format", "string", max_length=64, description="file system on the volume; absent: none"),
        Attribute("capacity", "integer", consumer_mandatory=True, minimum=1, description="kilobytes"),
    ],
    collection="volumeConfigs",
    items="volumeConfigurations",
    shareable=True,
    description="What a Volume is made of: its pool and capacity.",
)

VolumeImage = ResourceType(
    "VolumeImage",
    [
        *common_attributes(),
        read_only("state", "string", enum=VOLUME_IMAGE_STATES),
        Attribute("imageLocation", "URI", mutable=False, consumer_mandatory=True,
                  description="a Volume of this provider (a snapshot of it), or an http(s)/file URL to import"),
        Attribute("bootable", "boolean", mutable=False),
    ],
    collection="volumeImages",
    items="volumeImages",
    shareable=True,
    states=VOLUME_IMAGE_STATES,
    description="Data a Volume can be made from or restored to: a snapshot of a Volume, or an import.",
)

VolumeTemplate = ResourceType(
    "VolumeTemplate",
    [
        *common_attributes(),
        Attribute("volumeConfig", "ref", target="VolumeConfiguration", by_value=True, consumer_mandatory=True),
        Attribute("volumeImage", "ref", target="VolumeImage"),
    ],
    collection="volumeTemplates",
    items="volumeTemplates",
    shareable=True,
    description="What a Volume is made from: a configuration and optionally an image.",
)

VolumeVolumeImage = ResourceType(
    "VolumeVolumeImage",
    [
        *common_attributes(),
        read_only("volumeImage", "ref", target="VolumeImage"),
    ],
    collection="images",
    items="volumeVolumeImages",
    parent="Volume",
    editable=False,
    deletable=False,
    creatable=False,
    description="A VolumeImage taken of a Volume (its snapshots; deleting the image removes it from here).",
)

VOLUME_ACTIONS = {
    a.name: a
    for a in [
        Action("snapshot", ("AVAILABLE",), "CAPTURING", "snapshotted",
               "Make a VolumeImage of the volume (POST a VolumeImage whose imageLocation is the volume)."),
        Action("restore", ("AVAILABLE",), "RESTORING", "restored",
               "Revert the volume's data to a VolumeImage taken of it, given as `image`.", params=("image",)),
    ]
}

Volume = ResourceType(
    "Volume",
    [
        *common_attributes(),
        read_only("state", "string", enum=VOLUME_STATES),
        read_only("type", "URI"),
        Attribute("capacity", "integer", minimum=1,
                  description="kilobytes; an update grows the volume (also while attached), never shrinks it"),
        read_only("bootable", "boolean"),
        read_only("images", "collection", target="VolumeVolumeImage"),
        read_only("meters", "collection", target="Meter", derived=TARGETING,
                  description="the Meters whose targetResource is this Volume"),
        read_only("eventLog", "ref", target="EventLog", derived=OWN_LOG),
    ],
    collection="volumes",
    items="volumes",
    states=VOLUME_STATES,
    transitional_states=VOLUME_TRANSITIONAL,
    actions=VOLUME_ACTIONS,
    create_wrapper="VolumeCreate",
    template_attribute="volumeTemplate",
    description="Block storage that can be attached to Machines.",
)

VolumeCreate = ResourceType(
    "VolumeCreate",
    [*common_attributes(), Attribute("volumeTemplate", "ref", target="VolumeTemplate", by_value=True,
                                     consumer_mandatory=True)],
    request_document=True,
)

MachineVolume = ResourceType(
    "MachineVolume",
    [
        *common_attributes(),
        Attribute("initialLocation", "string", mutable=False, max_length=32,
                  description="the hypervisor's device name, vdb to vdz; absent: the next free one (a Linux "
                              "guest names its virtio disks in the order it finds them, not by this name)"),
        Attribute("volume", "ref", target="Volume", mutable=False, consumer_mandatory=True),
    ],
    collection="volumes",
    items="machineVolumes",
    parent="Machine",
    editable=False,
    description="A Volume attached to a Machine: hot-plugged into a running guest, or at its next start.",
)

FAMILY = Family(
    "volumes",
    (VolumeConfiguration, VolumeImage, VolumeTemplate, VolumeVolumeImage, Volume, VolumeCreate, MachineVolume),
    service="volumes:Volumes",
    requires="storage",
    machine_template_parts=("volumes", "volumeTemplates"),
)
