"""How DSP8009 1.0.2 (the CIMI 1.1 XML schema) names and orders elements where the JSON names do not say.

These are facts of the schema, errata included, kept here so that the model stays free of XML.
"""

from __future__ import annotations

from ...model import Attribute, ResourceType

# Elements the schema spells unlike the JSON attribute.
_RENAMED = {("MachineSnapshot", "snapshot"): "shapshot"}  # sic, DSP8009 1.0.2
# Types the schema gives no common elements (no id).
_WITHOUT_COMMON = {"Disk"}
# Types whose operations come right after this attribute, not at the end.
_OPERATIONS_AFTER = {"Credential": "properties", "CredentialTemplate": "properties"}
# Types whose JSON shape the schema cannot hold as is; xml.py renders them by a function of their own.
_RENDERED_APART = {"ResourceMetadata"}
# Types whose attributes the schema holds as XML attributes of one element: a Sample's timestamp and value
# are <sample timestamp=".." value=".."/> after its common elements.
_AS_XML_ATTRIBUTES = {"Sample": ("sample", ("timestamp", "value"))}
# Structures whose attributes the schema holds as XML attributes of the item element itself: a
# MachineTemplate's <volume href=".." initialLocation=".."/> and <volumeTemplate href=".." initialLocation="..">.
_ON_ELEMENT = {"MachineTemplateVolume": ("href", "initialLocation"),
               "MachineTemplateVolumeTemplate": ("href", "initialLocation")}
# Array items are the singular of the array's name (disks -> disk), except where English says otherwise.
_IRREGULAR_ITEMS = {"addresses": "address"}


def element(rtype: ResourceType, attr: Attribute) -> str:
    return _RENAMED.get((rtype.name, attr.name), attr.name)


def item_element(attr: Attribute) -> str:
    return _IRREGULAR_ITEMS.get(attr.name) or (attr.name[:-1] if attr.name.endswith("s") else attr.name)


def as_xml_attributes(rtype: ResourceType) -> tuple[str, tuple[str, ...]] | None:
    """(element, attribute names) for a type whose values are attributes of one element, else None."""
    return _AS_XML_ATTRIBUTES.get(rtype.name)


def on_element(rtype: ResourceType) -> tuple[str, ...]:
    """The attributes of `rtype` that are XML attributes of its own element."""
    return _ON_ELEMENT.get(rtype.name, ())


def rendered_apart(rtype: ResourceType) -> bool:
    return rtype.name in _RENDERED_APART


def has_common(rtype: ResourceType) -> bool:
    return rtype.name not in _WITHOUT_COMMON


def operations_after(rtype: ResourceType) -> str | None:
    return _OPERATIONS_AFTER.get(rtype.name)


def reading_names(rtype: ResourceType) -> dict[str, Attribute]:
    """Element name -> attribute, for reading a request body of this type."""
    names = {a.name: a for a in rtype.attributes}
    for attr in rtype.attributes:
        if attr.type == "array":
            names[item_element(attr)] = attr
        names[element(rtype, attr)] = attr
    return names
