"""The registry: every family's types in one place, and what is derived from them."""

from __future__ import annotations

from conftest import XSD
from lxml import etree

from cimid.model import FAMILIES, TYPES, collection_type, sub_collection
from cimid.model.registry import ENTRY_POINT_ORDER, FAMILY_OF, REQUEST_ROOTS, CloudEntryPoint

XS = "{http://www.w3.org/2001/XMLSchema}"


def test_entry_point_order_is_the_schemas():
    schema = etree.parse(str(XSD))
    cep = schema.find(f"{XS}element[@name='CloudEntryPoint']")
    elements = [e.get("name") for e in cep.iter(f"{XS}element")][1:]
    collections = [e for e in elements if e not in ("id", "name", "description", "created", "updated",
                                                    "property", "baseURI", "operation")]
    assert list(ENTRY_POINT_ORDER) == collections
    served = [a.name for a in CloudEntryPoint.attributes if a.type == "collection"]
    assert served == [c for c in ENTRY_POINT_ORDER if collection_type(c) is not None]


def test_every_type_belongs_to_exactly_one_family():
    names = [t.name for f in FAMILIES for t in f.types]
    assert len(names) == len(set(names))
    assert set(names) | {"Action", "CloudEntryPoint"} == set(TYPES)
    assert all(FAMILY_OF[n].name for n in names)


def test_sub_collections_hang_off_their_parent():
    machine = TYPES["Machine"]
    assert sub_collection(machine, "disks") is TYPES["Disk"]
    assert sub_collection(machine, "snapshots") is TYPES["MachineSnapshot"]
    assert sub_collection(machine, "console") is None  # an extension, not a collection
    assert collection_type("disks") is None  # only under a Machine


def test_request_roots_are_documents_and_resources_consumers_write():
    assert {"MachineCreate", "CredentialCreate", "Action", "Machine", "MachineImage", "Job"} <= set(REQUEST_ROOTS)
    assert not {"Disk", "MachineSnapshot", "ResourceMetadata", "CloudEntryPoint",
                "MachineConfigurationDisk"} & set(REQUEST_ROOTS)


def test_filter_columns_come_from_the_attribute_types():
    machine = TYPES["Machine"]
    assert machine.columns["cpu"] == "integer" and machine.columns["name"] == "string"
    assert machine.columns["properties"] == "map" and machine.columns["id"] == "string"
    assert "disks" not in machine.columns and "latestSnapshot" not in machine.columns
