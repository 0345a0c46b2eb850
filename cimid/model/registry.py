"""Every family cimid serves, registered once; everything else about types is derived from here: the
CloudEntryPoint, the collections and sub-collections, the request documents a body may hold."""

from __future__ import annotations

from . import catalogue, events, images, jobs, machines, metadata, meters, networks, volumes
from .types import Attribute, Family, ResourceType, common_attributes, read_only

# One line per family: adding a family is its own files plus a line here.
FAMILIES: tuple[Family, ...] = (
    metadata.FAMILY,
    catalogue.FAMILY,
    images.FAMILY,
    machines.FAMILY,
    jobs.FAMILY,
    events.FAMILY,
    meters.FAMILY,
    volumes.FAMILY,
    networks.FAMILY,
)

# The CloudEntryPoint's collections in DSP8009 1.0.2's element order (the schema fixes it), whichever
# of them are served.
ENTRY_POINT_ORDER = (
    "resourceMetadata", "systems", "systemTemplates", "machines", "machineTemplates", "machineConfigs",
    "machineImages", "credentials", "credentialTemplates", "volumes", "volumeTemplates", "volumeConfigs",
    "volumeImages", "networks", "networkTemplates", "networkConfigs", "networkPorts", "networkPortTemplates",
    "networkPortConfigs", "addresses", "addressTemplates", "forwardingGroups", "forwardingGroupTemplates",
    "jobs", "meters", "meterTemplates", "meterConfigs", "eventLogs", "eventLogTemplates",
)

# The body of every operation (DSP0263 §4.2.1.4): which action, and its parameters.
ActionRequest = ResourceType(
    "Action",
    [
        Attribute("action", "URI", consumer_mandatory=True),
        Attribute("force", "boolean"),
        Attribute("image", "ref"),
        Attribute("properties", "map"),
    ],
    request_document=True,
)

FAMILY_OF: dict[str, Family] = {t.name: f for f in FAMILIES for t in f.types}
TOP_LEVEL: dict[str, ResourceType] = {t.collection: t for f in FAMILIES for t in f.types
                                      if t.collection and not t.parent}
for _collection in TOP_LEVEL:
    assert _collection in ENTRY_POINT_ORDER, f"{_collection} has no place in the CloudEntryPoint"

CloudEntryPoint = ResourceType(
    "CloudEntryPoint",
    [
        *common_attributes(),
        read_only("baseURI", "URI"),
        *[read_only(name, "collection", target=TOP_LEVEL[name].name)
          for name in ENTRY_POINT_ORDER if name in TOP_LEVEL],
        read_only("usage", "extension", description="Provider extension: what the caller uses of each quota "
                  "(machines, cpu, memory ...), and its limit where it has one"),
        read_only("extensions", "extension", description="Provider extension: the further extensions this "
                  "provider offers (e.g. testControl with --test-api), each with its URI and href"),
    ],
    extensions={e.name: e for f in FAMILIES for e in f.entry_point_extensions},
    editable=False,
    deletable=False,
    creatable=False,
    description="The entry point: every collection the provider serves.",
)
# Which family serves each extension of the CloudEntryPoint.
ENTRY_POINT_EXTENSIONS: dict[str, Family] = {e.name: f for f in FAMILIES for e in f.entry_point_extensions}

TYPES: dict[str, ResourceType] = {
    t.name: t for t in (*(t for f in FAMILIES for t in f.types), ActionRequest, CloudEntryPoint)}
# Sub-collections by parent type and segment: SUB_COLLECTIONS["Machine"]["disks"].
SUB_COLLECTIONS: dict[str, dict[str, ResourceType]] = {}
for _t in TYPES.values():
    if _t.parent:
        SUB_COLLECTIONS.setdefault(_t.parent, {})[_t.collection] = _t
# What a request body's root (XML element, JSON resourceURI) may name: request documents, and the
# resources a consumer creates or edits.
REQUEST_ROOTS: dict[str, ResourceType] = {
    t.name: t for t in TYPES.values() if t.request_document or (t.collection and (t.creatable or t.editable))}


def collection_type(collection: str) -> ResourceType | None:
    return TOP_LEVEL.get(collection)


def sub_collection(parent: ResourceType, segment: str) -> ResourceType | None:
    return SUB_COLLECTIONS.get(parent.name, {}).get(segment)


def targeting(parent: ResourceType, segment: str) -> ResourceType | None:
    """The type listed at {parent's href}/{segment} when that is a TARGETING collection (a Machine's meters)."""
    name = parent.targeting.get(segment)
    return TYPES[name] if name else None
