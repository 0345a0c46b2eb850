"""ResourceMetadata: what the provider supports for each type it serves (generated, never stored)."""

from __future__ import annotations

from .types import Attribute, Family, ResourceType, read_only

ResourceMetadata = ResourceType(
    "ResourceMetadata",
    [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        read_only("typeURI", "URI"),
        read_only("name", "string"),
        read_only("attributes", "array"),
        read_only("capabilities", "array"),
        read_only("actions", "array"),
    ],
    collection="resourceMetadata",
    items="resourceMetadatas",
    editable=False,
    deletable=False,
    creatable=False,
    description="What the provider supports for one resource type.",
)

FAMILY = Family("metadata", (ResourceMetadata,), service="metadata:Metadata")
