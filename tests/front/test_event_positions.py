"""The id a front gives each message of its Event stream: every node's position, read back exactly, and
anything else refused as a CIMI 400."""

import pytest

from cimid.errors import BadRequest
from cimid.front.events import format_position, parse_position


def test_a_position_reads_back_as_it_was_written():
    position = {"n2": 17, "n1": 42, "node-3.example": 0, "a&b=c": 5}
    text = format_position(position)
    assert "\n" not in text and "\r" not in text  # one SSE id line
    assert text.startswith("a%26b%3Dc=5&n1=42&n2=17")  # sorted: the same positions give the same id
    assert parse_position(text) == position
    assert parse_position(None) == {}


@pytest.mark.parametrize("bad", ["", "412", "yesterday", "n1=x", "n1=1&=2", "n1=-3", "n1=\uff11", "n1=1&&n2=2"])
def test_anything_else_is_refused(bad):
    with pytest.raises(BadRequest, match="Last-Event-ID"):
        parse_position(bad)
