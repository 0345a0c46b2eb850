"""Validation against a type's declaration: what comes out is exactly what may be stored."""

from __future__ import annotations

import pytest

from cimid.errors import BadRequest
from cimid.model import TYPES
from cimid.model.validate import require, validate

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
