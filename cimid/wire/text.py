"""What every dialect can carry: strings that XML 1.0 can hold, documents only as deep as CIMI's own.

Requests are checked once, after either dialect parsed them, so JSON and XML accept the same strings.
Rendering never fails on a stored value that slipped past that check (an older version, a hand edit), or
on an id echoed in an error: XML gets U+FFFD in its place.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TypeVar

from ..errors import BadRequest

T = TypeVar("T")

# The deepest CIMI document (a Machine created from a template given by value, with disks) is 5 levels.
MAX_DEPTH = 32
# XML 1.0 Char: tab, LF, CR, and U+0020-U+D7FF, U+E000-U+FFFD, U+10000-U+10FFFF (no lone surrogates).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def check_document(doc) -> None:
    """400 for a request document nested deeper than MAX_DEPTH, or holding (in a key or a value) a
    character XML 1.0 cannot carry. Iterative, so no document can exhaust the stack here."""
    stack = [(doc, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value, where or "the body")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise BadRequest(f"the body is nested more than {MAX_DEPTH} levels deep")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_string(key, f"a key in {where or 'the body'}")
                    stack.append((item, f"{where}.{key}" if where else key, depth + 1))
            else:
                stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_string(text: str, where: str) -> None:
    bad = _NOT_XML.search(text)
    if bad is not None:
        code = ord(bad.group())
        what = " (a lone surrogate)" if 0xD800 <= code <= 0xDFFF else ""
        raise BadRequest(f"{where[:200]}: the character U+{code:04X}{what} cannot be carried in XML 1.0, "
                         "so cimid does not accept it")


def or_xml_safe(render: Callable[[dict, T], bytes]) -> Callable[[dict, T], bytes]:
    """Wrap an lxml renderer: lxml refuses (ValueError) any character XML 1.0 cannot carry; then render
    again with U+FFFD in its place, so one bad stored value cannot break a whole collection for everyone.
    The usual path costs nothing."""
    @functools.wraps(render)
    def safely(doc: dict, rtype: T) -> bytes:
        try:
            return render(doc, rtype)
        except ValueError:
            return render(xml_safe(doc), rtype)
    return safely


def xml_safe(value):
    """`value` with every character XML 1.0 cannot carry replaced by U+FFFD, in keys and values."""
    if isinstance(value, str):
        return _NOT_XML.sub("\ufffd", value) if _NOT_XML.search(value) else value
    if isinstance(value, dict):
        return {xml_safe(k): xml_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [xml_safe(v) for v in value]
    return value
