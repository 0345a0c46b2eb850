"""Check a consumer's attribute dict against a type's declaration.

Unknown or wrongly typed attributes are a 400; attributes the consumer may not write are silently dropped
(DSP0263 §4.2.1.3); what comes out is exactly what may be stored.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re

from ..errors import BadRequest
from .registry import TYPES
from .types import REF, Attribute, ResourceType

# Attributes a provider always owns; consumers may echo them back (full PUT) and we ignore them.
_ECHOED = {"resourceURI", "operations"}

# A URI attribute is rendered as XML Schema's anyURI, which libxml2 checks as an RFC 3986 URI-reference
# once non-ASCII characters, spaces and <>"{}|\^`' are set aside (IRIs and the like stay accepted).
_SET_ASIDE = re.compile("[^\x21-\x7e]|[<>\"{}|\\^`']")
_PCT = "%[0-9A-Fa-f]{2}"
_PCHAR = f"(?:[A-Za-z0-9_.~!$&()*+,;=:@-]|{_PCT})"
_SEGMENT_NO_COLON = f"(?:[A-Za-z0-9_.~!$&()*+,;=@-]|{_PCT})+"
_AUTHORITY = (f"(?:(?:[A-Za-z0-9_.~!$&()*+,;=:-]|{_PCT})*@)?"
              f"(?:\\[[0-9A-Za-z:.]+\\]|(?:[A-Za-z0-9_.~!$&()*+,;=-]|{_PCT})*)(?::[0-9]*)?")
_PATH_AFTER_AUTHORITY = f"(?:/{_PCHAR}*)*"
_URI_REFERENCE = re.compile(
    f"(?:[A-Za-z][A-Za-z0-9+.-]*:(?://{_AUTHORITY}{_PATH_AFTER_AUTHORITY}|/?(?:{_PCHAR}+(?:/{_PCHAR}*)*)?)"
    f"|//{_AUTHORITY}{_PATH_AFTER_AUTHORITY}|/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?|{_SEGMENT_NO_COLON}(?:/{_PCHAR}*)*|)"
    f"(?:\\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?")


def is_uri_reference(value: str) -> bool:
    return _URI_REFERENCE.fullmatch(_SET_ASIDE.sub("_", value)) is not None


def validate(rtype: ResourceType, doc: dict, *, creating: bool, allow_href: bool = False,
             allow_null: bool = False, path: str = "") -> dict:
    """Return the attributes of `doc` that the consumer may set, checked and normalised.

    creating: attributes that are immutable but consumer-writable (e.g. imageLocation) are accepted.
    allow_href: `doc` may be a reference with overrides (`{"href": ..., "cpu": 4}`).
    allow_null: JSON null / empty XML element means "erase this attribute" (template overrides).
    """
    if not isinstance(doc, dict):
        raise BadRequest(f"{path or rtype.name}: expected an object, got {type(doc).__name__}")
    out: dict = {}
    for key, value in doc.items():
        where = f"{path}.{key}" if path else key
        if key == "href" and allow_href:
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"{where}: expected a URI string")
            out["href"] = value.strip()
            continue
        if key == "resourceURI":
            if value not in (rtype.type_uri, f"{rtype.type_uri}Create") and not path:
                raise BadRequest(f"resourceURI '{value}' does not match {rtype.type_uri}")
            continue
        if key in _ECHOED:
            continue
        attr = rtype.attribute(key)
        if attr is None:
            raise BadRequest(f"unknown attribute '{where}' for {rtype.name}")
        if not (attr.consumer_writable and (attr.mutable or creating)):
            continue  # read-only: ignored, as the standard asks
        if value is None:
            if allow_null:
                out[key] = None
            continue
        out[key] = check_value(attr, value, where, creating=creating)
    if creating and not allow_href:  # a template's override leaves out what it does not change
        for attr in rtype.attributes:
            if attr.default is not None and attr.name not in out:
                out[attr.name] = attr.default
    return out


def require(rtype: ResourceType, doc: dict, path: str = "") -> None:
    """Every consumer-mandatory attribute must be present (after template resolution)."""
    for attr in rtype.attributes:
        if attr.consumer_mandatory and doc.get(attr.name) in (None, "", [], {}):
            where = f"{path}.{attr.name}" if path else attr.name
            raise BadRequest(f"{rtype.name} needs '{where}'")


def check_value(attr: Attribute, value, where: str, *, creating: bool):
    t = attr.type
    if t in ("string", "URI"):
        if not isinstance(value, str):
            raise BadRequest(f"{where}: expected a string, got {_json_type(value)}")
        if len(value) > attr.max_length:
            raise BadRequest(f"{where}: longer than {attr.max_length} characters")
        if attr.enum is not None:
            value = value.strip()
            if value not in attr.enum:
                raise BadRequest(f"{where}: '{value}' is not one of {', '.join(attr.enum)}")
        if t == "URI":
            value = value.strip()
            if not is_uri_reference(value):
                raise BadRequest(f"{where}: '{value[:80]}' is not a URI")
        if attr.base64:
            _check_base64(value.strip(), where)
            value = value.strip()
        return value
    if t == "dateTime":
        return _datetime(value, where)
    if t == "byte[]":
        if not isinstance(value, str):
            raise BadRequest(f"{where}: expected a string, got {_json_type(value)}")
        if len(value) > attr.max_length:
            raise BadRequest(f"{where}: longer than {attr.max_length} characters")
        return value
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{where}: expected an integer, got {_json_type(value)}")
        if attr.minimum is not None and value < attr.minimum:
            raise BadRequest(f"{where}: must be at least {attr.minimum}")
        if value > 2**63 - 1:
            raise BadRequest(f"{where}: too large")
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise BadRequest(f"{where}: expected true or false, got {_json_type(value)}")
        return value
    if t == "map":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            raise BadRequest(f"{where}: expected an object of string keys and string values")
        if len(value) > 256:
            raise BadRequest(f"{where}: more than 256 entries")
        return dict(value)
    if t == "ref":
        if not isinstance(value, dict):
            raise BadRequest(f"{where}: expected a reference like {{\"href\": \"...\"}}")
        if attr.by_value:
            target = TYPES[attr.target]
            inner = validate(target, value, creating=True, allow_href=True, allow_null=True, path=where)
            if "href" not in inner:
                require(target, inner, where)
            return inner
        href = value.get("href")
        if not isinstance(href, str) or not href.strip() or len(value) != 1:
            raise BadRequest(f"{where}: expected a reference like {{\"href\": \"...\"}}")
        return {"href": href.strip()}
    if t == "array":
        if not isinstance(value, list):
            raise BadRequest(f"{where}: expected an array")
        if len(value) > 64:
            raise BadRequest(f"{where}: more than 64 items")
        if attr.target == REF:
            return [check_value(Attribute(attr.name, "ref"), v, f"{where}[{i}]", creating=creating)
                    for i, v in enumerate(value)]
        struct = TYPES[attr.target]
        items = []
        for i, item in enumerate(value):
            clean = validate(struct, item, creating=True, path=f"{where}[{i}]")
            require(struct, clean, f"{where}[{i}]")
            items.append(clean)
        return items
    raise BadRequest(f"{where}: cannot be set")


def _datetime(value, where: str) -> str:
    """An xs:dateTime (an offset, Z, or none for UTC) -> the stored form, UTC with milliseconds, so that
    comparing strings compares instants."""
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a dateTime string, got {_json_type(value)}")
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest(f"{where}: '{value[:40]}' is not a dateTime like 2012-05-25T13:30:15Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _check_base64(value: str, where: str) -> None:
    try:
        base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise BadRequest(f"{where}: not valid Base64") from None


def _json_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
