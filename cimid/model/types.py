"""The building blocks every resource type is declared with.

One declaration per type drives validation, ResourceMetadata, `$filter` typing and XML element order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CIMI_NS = "http://schemas.dmtf.org/cimi/1"
ACTION_BASE = CIMI_NS + "/action/"
CAPABILITY_BASE = CIMI_NS + "/capability/"

REF = "ref"  # Attribute.target of an array whose items are plain references

# CIMI attribute types (DSP0263 §5.5) and how each is filtered/sorted in SQL.
FILTER_TYPES = {
    "string": "string",
    "URI": "string",
    "integer": "integer",
    "boolean": "boolean",
    "dateTime": "dateTime",
    "map": "map",
}


@dataclass(frozen=True)
class Attribute:
    """One attribute of a resource type, with the four DSP0263 constraints."""

    name: str
    type: str  # string | integer | boolean | dateTime | URI | byte[] | map | ref | array | collection
    provider_mandatory: bool = False
    consumer_mandatory: bool = False
    mutable: bool = True
    consumer_writable: bool = True
    target: str | None = None  # ref/collection: the referenced type; array: the item structure, or REF
    by_value: bool = False  # a ref that may also be given inline
    xml_item: str | None = None  # XML element of each array item (JSON `disks` -> XML `disk`)
    xml_name: str | None = None  # XML element when it differs from the JSON name (DSP8009's `shapshot`)
    enum: tuple[str, ...] | None = None
    minimum: int | None = None
    max_length: int = 4096
    description: str = ""
    write_only: bool = False  # a secret: stored and used, never returned (not in $select or $expand either)

    @property
    def writable(self) -> bool:
        return self.mutable and self.consumer_writable


def common_attributes() -> list[Attribute]:
    """id, name, description, created, updated, properties (DSP0263 Table 5)."""
    return [
        Attribute("id", "URI", provider_mandatory=True, mutable=False, consumer_writable=False),
        Attribute("name", "string", max_length=255),
        Attribute("description", "string"),
        Attribute("created", "dateTime", mutable=False, consumer_writable=False),
        Attribute("updated", "dateTime", consumer_writable=False),
        Attribute("properties", "map"),
    ]


@dataclass(frozen=True)
class Action:
    """A custom operation of a stateful resource: from which states, through which transitional state,
    and what it achieves (`final`: the state it leads to, or a word for operations that keep the state;
    after every Job the state itself is read back from the host)."""

    name: str
    from_states: tuple[str, ...]
    transitional: str
    final: str
    description: str
    params: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return ACTION_BASE + self.name


@dataclass(frozen=True)
class Capability:
    name: str
    value: object = True
    description: str = ""

    def uri(self, type_name: str) -> str:
        return f"{CAPABILITY_BASE}{type_name}/{self.name}"


@dataclass
class ResourceType:
    """A CIMI resource type (or an inline structure when `collection` is None)."""

    name: str
    attributes: list[Attribute]
    collection: str | None = None  # URL segment and CloudEntryPoint attribute, e.g. "machineConfigs"
    items: str | None = None  # JSON array name of collection items, e.g. "machineConfigurations"
    states: tuple[str, ...] = ()
    transitional_states: tuple[str, ...] = ()
    actions: dict[str, Action] = field(default_factory=dict)
    create_wrapper: str | None = None  # "MachineCreate": created from a template; None: POST the resource itself
    template_attribute: str | None = None  # "machineTemplate"
    editable: bool = True
    deletable: bool = True
    creatable: bool = True
    xml_has_common: bool = True  # DSP8009 1.0.2 gives some types (Disk) no common elements
    xml_operations_after: str | None = None  # DSP8009 puts Credential operations before userName/password/key
    owner: str | None = None  # a Machine's disks and snapshots live at machines/{id}/{collection}/{item}
    description: str = ""

    def __post_init__(self) -> None:
        self.by_name = {a.name: a for a in self.attributes}

    @property
    def type_uri(self) -> str:
        return f"{CIMI_NS}/{self.name}"

    @property
    def collection_uri(self) -> str:
        return f"{CIMI_NS}/{self.name}Collection"

    def attribute(self, name: str) -> Attribute | None:
        return self.by_name.get(name)
