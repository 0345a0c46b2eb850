"""Validation against a type's declaration: what comes out is exactly what may be stored."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from cimid.errors import BadRequest
from cimid.model import TYPES
from cimid.model.validate import is_uri_reference, require, validate

CONFIG, TEMPLATE, MACHINE = TYPES["MachineConfiguration"], TYPES["MachineTemplate"], TYPES["Machine"]


def test_read_only_attributes_are_dropped_and_unknown_ones_refused():
    assert validate(MACHINE, {"name": "m", "state": "STARTED", "cpu": 9}, creating=False) == {"name": "m"}
    with pytest.raises(BadRequest, match="unknown attribute 'colour'"):
        validate(CONFIG, {"colour": "red"}, creating=True)


def test_types_minimums_and_nested_structures():
    with pytest.raises(BadRequest, match="cpu: expected an integer"):
        validate(CONFIG, {"cpu": "2"}, creating=True)
    with pytest.raises(BadRequest, match="memory: must be at least 1"):
        validate(CONFIG, {"memory": -5}, creating=True)
    with pytest.raises(BadRequest, match=r"disks\[0\]"):
        validate(CONFIG, {"disks": [{"capacity": 1}]}, creating=True)  # format is mandatory
    with pytest.raises(BadRequest, match="needs 'cpu'"):
        require(CONFIG, {"memory": 1})


def test_base64_attributes_must_hold_base64():
    assert validate(TEMPLATE, {"userData": " aGk= "}, creating=True) == {"userData": "aGk="}
    with pytest.raises(BadRequest, match="userData: not valid Base64"):
        validate(TEMPLATE, {"userData": "not base64!"}, creating=True)


def test_by_value_references_are_validated_as_their_type():
    ok = validate(TEMPLATE, {"machineConfig": {"cpu": 1, "memory": 2}}, creating=True)
    assert ok == {"machineConfig": {"cpu": 1, "memory": 2}}
    with pytest.raises(BadRequest, match="machineConfig.memory"):
        validate(TEMPLATE, {"machineConfig": {"cpu": 1}}, creating=True)


_ANY_URI = etree.XMLSchema(etree.fromstring(
    b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"><xs:element name="u" type="xs:anyURI"/></xs:schema>'))


def _xml_schema_takes(value: str) -> bool:
    element = etree.Element("u")
    element.text = value
    return _ANY_URI.validate(element)


@given(st.text(st.sampled_from("ab:/?#[]@%2Fz!$&'()*+,;=-._~ <>\"{}|\\^`é"), max_size=12))
@settings(max_examples=300, derandomize=True, database=None)
def test_a_uri_cimid_accepts_is_one_xml_schema_accepts(value):
    """Found by tests/fuzz: a URI attribute took any string, and a MachineImage whose imageLocation was
    'a]b' made the machineImages collection invalid XML (xs:anyURI) for every consumer."""
    if is_uri_reference(value):
        assert _xml_schema_takes(value), value


@pytest.mark.parametrize("value,accepted", [
    ("urn:cimid:sandbox:tiny-linux", True), ("file:///img/deb.qcow2", True), ("http://h:80/p?q=1#f", True),
    ("images/x", True), ("http://[::1]/x", True), ("héllo wörld", True),
    ("a]b", False), ("%", False), ("http://h/a%zz", False), ("1a:b", False), ("#a#b", False), ("a[b", False),
])
def test_uri_attributes_refuse_what_is_no_uri_reference(value, accepted):
    image = TYPES["MachineImage"]
    if accepted:
        assert validate(image, {"imageLocation": value}, creating=True) == {"imageLocation": value}
    else:
        with pytest.raises(BadRequest, match="imageLocation.*not a URI"):
            validate(image, {"imageLocation": value}, creating=True)
