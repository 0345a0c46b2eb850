"""The CIMI 1.1 dialect: element naming and order from DSP8009, parsing both formats, the error document."""

from __future__ import annotations

import pytest
from conftest import assert_valid_xml

from cimid.errors import BadRequest
from cimid.model import TYPES
from cimid.wire import dialect_for
from cimid.wire.cimi1 import names

CIMI = "http://schemas.dmtf.org/cimi/1"
DIALECT = dialect_for({})


def test_array_items_are_named_singular_and_schema_spellings_are_kept():
    disks = TYPES["MachineConfiguration"].attribute("disks")
    assert names.item_element(disks) == "disk"
    assert names.item_element(TYPES["Job"].attribute("nestedJobs")) == "nestedJob"
    snapshot = TYPES["MachineSnapshot"]
    assert names.element(snapshot, snapshot.attribute("snapshot")) == "shapshot"  # sic, DSP8009 1.0.2


def test_rendered_xml_validates_and_reads_back():
    config = TYPES["MachineConfiguration"]
    doc = {"resourceURI": config.type_uri, "id": "http://h/cimi/machineConfigs/x", "name": "x", "cpu": 2,
           "memory": 1024, "disks": [{"capacity": 10, "format": "raw"}], "properties": {"k": "v"}}
    body = DIALECT.render("xml", doc, config)
    assert_valid_xml(body)
    root, parsed = DIALECT.parse("xml", body)
    assert root == "MachineConfiguration"
    assert parsed == {"id": doc["id"], "name": "x", "cpu": 2, "memory": 1024,
                      "disks": [{"capacity": 10, "format": "raw"}], "properties": {"k": "v"}}
    snapshot = TYPES["MachineSnapshot"]
    assert_valid_xml(DIALECT.render("xml", {"resourceURI": snapshot.type_uri, "id": "http://h/cimi/s/1",
                                            "snapshot": {"href": "http://h/cimi/machineImages/i"}}, snapshot))


def test_json_names_its_root_by_resource_uri():
    assert DIALECT.parse("json", b'{"resourceURI": "' + CIMI.encode() + b'/MachineCreate", "name": "a"}') == (
        "MachineCreate", {"resourceURI": f"{CIMI}/MachineCreate", "name": "a"})
    with pytest.raises(BadRequest, match="JSON object"):
        DIALECT.parse("json", b"[1]")


def test_unknown_roots_and_elements_are_refused():
    with pytest.raises(BadRequest, match="unexpected XML root element <Disk>"):
        DIALECT.parse("xml", f'<Disk xmlns="{CIMI}"/>'.encode())
    with pytest.raises(BadRequest, match="unknown element <colour>"):
        DIALECT.parse("xml", f'<MachineConfiguration xmlns="{CIMI}"><colour>red</colour>'
                             f'</MachineConfiguration>'.encode())


def test_the_error_document_is_a_valid_job():
    doc = DIALECT.error(status=404, title="not found", message="there is no Machine 'x'",
                        target="http://h/cimi/machines/x", method="GET", time="2026-01-01T00:00:00.000Z")
    assert doc["id"] == "" and doc["returnCode"] == 404 and doc["state"] == "FAILED"
    root = assert_valid_xml(DIALECT.render("xml", doc, DIALECT.error_type))
    assert root.findtext(f"{{{CIMI}}}statusMessage") == "there is no Machine 'x'"
