"""The building blocks every resource family is declared with.

One declaration per type drives validation, ResourceMetadata, `$filter` typing and the wire dialects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CIMI_NS = "http://schemas.dmtf.org/cimi/1"
ACTION_BASE = CIMI_NS + "/action/"
CAPABILITY_BASE = CIMI_NS + "/capability/"

REF = "ref"  # Attribute.target of an array whose items are plain references
# Derived links (Attribute.derived): attributes the provider makes from the resource itself, never stored.
OWN_LOG = "own log"  # a ref to the resource's own EventLog, whose id is derived from the resource's path
TARGETING = "targeting"  # the collection, at {href}/{name}, of the `target` resources whose targetResource
# is this resource (a Machine's meters): read-only, served by the target type's family
# Attribute types that $filter and $orderby can reach, and the SQL-side type each is compared as.
FILTERABLE = {"string": "string", "URI": "string", "integer": "integer", "boolean": "boolean",
              "dateTime": "dateTime"}


@dataclass(frozen=True)
class Attribute:
    """One attribute of a resource type, with the four DSP0263 constraints."""

    name: str
    # string | integer | boolean | dateTime | URI | byte[] | map | ref | array | collection | struct (an inline
    # structure: of the type `target` names, or free-form (an Event's content) without one) | extension
    type: str
    provider_mandatory: bool = False
    consumer_mandatory: bool = False
    mutable: bool = True
    consumer_writable: bool = True
    target: str | None = None  # ref/collection: the referenced type; array: the item structure, or REF
    by_value: bool = False  # a ref that may also be given inline
    base64: bool = False  # a string that must hold Base64 (userData)
    enum: tuple[str, ...] | None = None
    minimum: int | None = None
    max_length: int = 4096
    description: str = ""
    write_only: bool = False  # a secret: stored and used, never returned (not in $select or $expand either)
    default: object = None  # what a new structure holds when the consumer leaves it out (the schema needs it)
    derived: str | None = None  # OWN_LOG or TARGETING: a link the provider derives (see above)

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


def read_only(name: str, type_: str, **kw) -> Attribute:
    """A provider-owned attribute: consumers read it, writes are ignored."""
    return Attribute(name, type_, consumer_writable=False, **kw)


@dataclass(frozen=True)
class Action:
    """A custom operation of a stateful resource: from which states, through which transitional state,
    and what it achieves (`final`: the state it leads to, or a word for operations that keep the state;
    after every Job the state itself is read back from the host)."""

    name: str
    from_states: tuple[str, ...]  # empty: any state
    transitional: str
    final: str
    description: str
    params: tuple[str, ...] = ()
    extension_uri: str | None = None  # a provider extension's own URI, instead of DSP0263's
    admin_only: bool = False

    @property
    def uri(self) -> str:
        return self.extension_uri or ACTION_BASE + self.name


@dataclass(frozen=True)
class Extension:
    """A provider extension operation (DSP0263 §5.8) read with GET, such as a Machine's console: offered in
    every state but `unavailable_in`, answered as `media_type` text."""

    name: str
    uri: str
    media_type: str
    description: str
    unavailable_in: tuple[str, ...] = ()


# What an admin does to a catalogue entry (a shareable type) to show it to every consumer, or stop.
SHARING = (
    Action("publish", (), "", "public", "Provider extension: show this catalogue entry to every consumer.",
           extension_uri="urn:x-cimid:action:publish", admin_only=True),
    Action("unpublish", (), "", "private", "Provider extension: show this catalogue entry only to the "
           "consumer that made it (and to admins and readers).", extension_uri="urn:x-cimid:action:unpublish",
           admin_only=True),
)


@dataclass
class ResourceType:
    """A CIMI resource type, an inline structure (no collection), or a request document."""

    name: str
    attributes: list[Attribute]
    collection: str | None = None  # URL segment and CloudEntryPoint attribute, e.g. "machineConfigs"
    items: str | None = None  # JSON array name of collection items, e.g. "machineConfigurations"
    parent: str | None = None  # the type whose sub-collection this is: machines/{id}/{collection}/{item}
    states: tuple[str, ...] = ()
    transitional_states: tuple[str, ...] = ()
    finished_states: tuple[str, ...] = ()  # states in which a resource may be deleted when it has any
    actions: dict[str, Action] = field(default_factory=dict)
    extensions: dict[str, Extension] = field(default_factory=dict)
    create_wrapper: str | None = None  # "MachineCreate": created from a template; None: POST the resource itself
    template_attribute: str | None = None  # "machineTemplate"
    editable: bool = True
    deletable: bool = True
    creatable: bool = True
    request_document: bool = False  # never stored: MachineCreate, Action
    shareable: bool = False  # a catalogue entry: an admin's are public, a consumer's private until published
    description: str = ""

    def __post_init__(self) -> None:
        self.by_name = {a.name: a for a in self.attributes}
        if self.shareable:
            self.actions = {**self.actions, **{a.name: a for a in SHARING}}
        # What $filter and $orderby may name, and as which type ("map" for properties).
        self.columns = {a.name: FILTERABLE[a.type] for a in self.attributes
                        if a.type in FILTERABLE and not a.write_only}  # a secret cannot be probed by $filter
        if "properties" in self.by_name:
            self.columns["properties"] = "map"
        self.targeting = {a.name: a.target for a in self.attributes if a.derived == TARGETING}

    @property
    def type_uri(self) -> str:
        return f"{CIMI_NS}/{self.name}"

    @property
    def collection_uri(self) -> str:
        return f"{CIMI_NS}/{self.name}Collection"

    def attribute(self, name: str) -> Attribute | None:
        return self.by_name.get(name)


@dataclass(frozen=True)
class Family:
    """One resource family, declared once in its own model file: its types, the service that runs them
    (`module:Class` under cimid.service, imported by the service layer) and the driver it needs."""

    name: str
    types: tuple[ResourceType, ...]
    service: str
    requires: str | None = None  # a Drivers attribute ("compute"): without it the family is not served
    # Provider extensions the family serves at /cimi/{name}, listed as operations of the CloudEntryPoint.
    entry_point_extensions: tuple[Extension, ...] = ()
    # MachineTemplate attributes this family realises when a Machine is made: its service takes part in
    # the machine's create (ResourceService.plan_for_machine ...), so the machines service knows none of them.
    machine_template_parts: tuple[str, ...] = ()
