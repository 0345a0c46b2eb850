"""MachineImages: the disk images Machines boot from, and the snapshots taken of them."""

from __future__ import annotations

from .types import Attribute, Family, ResourceType, common_attributes, read_only

IMAGE_STATES = ("CREATING", "AVAILABLE", "DELETING", "ERROR")

MachineImage = ResourceType(
    "MachineImage",
    [
        *common_attributes(),
        read_only("state", "string", enum=IMAGE_STATES),
        Attribute("type", "string", mutable=False, enum=("IMAGE", "SNAPSHOT", "PARTIAL_SNAPSHOT")),
        Attribute("imageLocation", "URI", mutable=False, consumer_mandatory=True),
        Attribute("relatedImage", "ref", target="MachineImage", mutable=False),
    ],
    collection="machineImages",
    items="machineImages",
    shareable=True,
    states=IMAGE_STATES,
    description="A disk image Machines boot from.",
)

FAMILY = Family("images", (MachineImage,), service="images:Images")
