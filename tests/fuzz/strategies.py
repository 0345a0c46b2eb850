"""Hypothesis strategies derived from the model's declarations: request bodies (well-typed and hostile) in
JSON and XML, query parameters, headers and ids. Nothing here names a collection or an attribute; a type
declared later gets bodies from its own `attributes`, `columns`, `actions` and `create_wrapper`."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from urllib.parse import quote

from hypothesis import strategies as st

from cimid.model import registry
from cimid.model.types import CIMI_NS, REF, Attribute, ResourceType
from cimid.wire.cimi1 import names as xml_names

from .targets import World, path_of_href

# Characters XML 1.0 can carry (what cimid accepts in any string): no controls, surrogates or U+FFFE/F.
XML_CHARS = st.characters(exclude_categories=("Cs", "Cc", "Cn"), include_characters="\t\n\r")
SHORT_TEXT = st.text(XML_CHARS, max_size=16)
# Strings that broke, or could break, a parser, a renderer or a database somewhere.
NASTY_STRINGS = (
    "", " ", "\t", "\x00", "a\x00b", "\x01", "\x1f", "\x7f", "\x85", "\ud800", "x\udfffy", "\ufffe", "\uffff",
    "\u202e", "e\u0301", "\u2028", "\U0001f600", "\U0010ffff", "﻿", "'", '"', "\\", "<", "&amp;", "]]>",
    "%00", "%s%n", "../../etc/passwd", "' OR 1=1 --", "NaN", "null", "true", "-0", "1e400",
)
ODD_TEXT = st.one_of(st.sampled_from(NASTY_STRINGS), st.text(st.characters(), max_size=24),
                     st.lists(st.sampled_from(NASTY_STRINGS), max_size=4).map("".join))
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              ODD_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(SHORT_TEXT, inner, max_size=3)),
    max_leaves=6,
)


@dataclass
class Body:
    """A request body as sent; `doc` is the document it encodes (None for raw bytes), `typed` whether
    that document follows the declarations, so an accepted one must read back as sent."""

    fmt: str  # json | xml
    data: bytes
    doc: dict | None = None
    typed: bool = False


# ---------------------------------------------------------------- well-typed documents

def pick(items: list, fallback):
    """One of `items` (which depend on what the sandbox holds), or `fallback` when there is none. The
    draw has the same shape whatever the sandbox holds, as Hypothesis needs to replay and shrink."""
    return st.integers(0, 2 ** 16 - 1).map(lambda i: items[i % len(items)] if items else fallback)


def href_to(world: World, target: ResourceType | None) -> st.SearchStrategy[dict]:
    """A reference to an existing resource of `target` (of anything for None), absolute or relative;
    to a missing one when none exists."""
    missing = f"{target.collection if target is not None and target.collection else 'nothing'}/no-such-id"
    return st.tuples(pick(world.of(target), missing), st.booleans()).map(
        lambda t: {"href": t[0] if t[1] else path_of_href(t[0])})


def value_of(attr: Attribute, world: World, depth: int = 0) -> st.SearchStrategy | None:
    """A value of the attribute's declared type within its declared constraints; None for a collection
    (provider-owned)."""
    t = attr.type
    if t in ("string", "URI", "byte[]"):
        if attr.enum:
            return st.sampled_from(attr.enum)
        if attr.base64:
            return st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode("ascii"))
        longest = st.just(attr.max_length).map(lambda n: "x" * n)  # built when drawn: a short repr
        return st.one_of(st.text(XML_CHARS, max_size=min(attr.max_length, 24)), longest)
    if t == "integer":
        low = attr.minimum if attr.minimum is not None else -(2 ** 63)
        return st.integers(min_value=low, max_value=2 ** 63 - 1)
    if t == "boolean":
        return st.booleans()
    if t == "dateTime":
        return st.datetimes(timezones=st.just(dt.timezone.utc)).map(
            lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z")
    if t == "map":
        return st.dictionaries(st.text(XML_CHARS, max_size=8), st.text(XML_CHARS, max_size=12), max_size=3)
    if t == "ref":
        target = registry.TYPES.get(attr.target) if attr.target else None
        by_href = href_to(world, target)
        if not (attr.by_value and target is not None and depth < 3):
            return by_href
        # by value, or by reference with overrides (null erases the template's value)
        overrides = document(target, world, creating=True, depth=depth + 1, optional_only=True, nullable=True)
        return st.one_of(by_href, document(target, world, creating=True, depth=depth + 1),
                         st.tuples(by_href, overrides).map(lambda pair: {**pair[1], **pair[0]}))
    if t == "array":
        if attr.target == REF:
            return st.lists(href_to(world, None), max_size=3)
        return st.lists(document(registry.TYPES[attr.target], world, creating=True, depth=depth + 1), max_size=3)
    return None  # a collection: provider-owned


def settable(rtype: ResourceType, creating: bool) -> list[Attribute]:
    """The attributes a consumer may send: writable, or also immutable ones when creating."""
    return [a for a in rtype.attributes if a.consumer_writable and (a.mutable or creating)]


def document(rtype: ResourceType, world: World, *, creating: bool, depth: int = 0, optional_only: bool = False,
             nullable: bool = False, only: set[str] | None = None) -> st.SearchStrategy[dict]:
    """A document of `rtype` following its declarations: every consumer-mandatory attribute, any of the
    others. `only`: just these attributes (a $select-ed update)."""
    required, optional = {}, {}
    for attr in settable(rtype, creating):
        if only is not None and attr.name not in only:
            continue
        value = value_of(attr, world, depth)
        if value is None:
            continue
        if nullable:
            value = st.one_of(value, st.none())
        if attr.consumer_mandatory and not optional_only:
            required[attr.name] = value
        else:
            optional[attr.name] = value
    return st.fixed_dictionaries(required, optional=optional)


def action_document(rtype: ResourceType, operation: str, world: World) -> st.SearchStrategy[dict]:
    """An Action document (the registry's request type) asking for `operation`, its URI spelled any way
    cimid reads it, with any of the Action's other attributes."""
    action_type = registry.TYPES[registry.ActionRequest.name]
    uri = rtype.actions[operation].uri if operation in rtype.actions else operation
    spelled = st.sampled_from([uri, operation, uri + "/", " " + uri + " "])
    return st.tuples(spelled, document(action_type, world, creating=True)).map(
        lambda pair: {**pair[1], "action": pair[0]})


# ---------------------------------------------------------------- hostile documents

def _integers(rtype: ResourceType) -> list[str]:
    return [a.name for a in rtype.attributes if a.type == "integer"]


def _strings(rtype: ResourceType) -> list[str]:
    return [a.name for a in rtype.attributes if a.type in ("string", "URI", "byte[]")]


HUGE_NUMBERS = ("9223372036854775807", "9223372036854775808", "-9223372036854775809", "1" + "0" * 30,
                "-" + "9" * 400, "9" * 5000, "1e400", "-1e400", "1.5", "-0", "0.0", "1E2", "NaN", "Infinity")


def hostile(rtype: ResourceType, world: World, *, creating: bool) -> st.SearchStrategy[dict | bytes]:
    """A document of `rtype` broken in one way the declarations forbid: a wrong type, an unknown attribute,
    a string XML cannot carry, a value past a declared bound, a broken reference; or raw JSON cimid must
    refuse: deep nesting, huge numbers, not an object at all."""
    base = document(rtype, world, creating=creating)
    attrs = [a.name for a in rtype.attributes]
    mutations = [
        # a value of another JSON type for a declared attribute
        st.tuples(base, st.sampled_from(attrs), ANY_JSON).map(lambda t: {**t[0], t[1]: t[2]}),
        # an attribute the type does not declare
        st.tuples(base, SHORT_TEXT.map(lambda k: "x-" + k), ANY_JSON).map(lambda t: {**t[0], t[1]: t[2]}),
        # a resourceURI of another type, or not a string
        st.tuples(base, st.one_of(st.sampled_from([t.type_uri for t in registry.TYPES.values()]), ANY_JSON)).map(
            lambda t: {**t[0], "resourceURI": t[1]}),
        # not an object
        st.one_of(st.lists(ANY_JSON, max_size=3), ODD_TEXT, st.integers(), st.none()),
        # raw bytes: garbage, truncated JSON, invalid UTF-8
        st.binary(max_size=64),
        base.map(lambda d: json.dumps(d).encode()[:-1]),
        base.map(lambda d: json.dumps(d).encode() + b"\xff\xfe"),
        # deep nesting inside an attribute, with lists or objects
        st.tuples(base, st.sampled_from(attrs), st.sampled_from([33, 200, 3000, 60_000]), st.booleans()).map(
            lambda t: _nested(t[0], t[1], t[2], t[3])),
    ]
    strings = _strings(rtype)
    if strings:
        mutations.append(st.tuples(base, st.sampled_from(strings), ODD_TEXT).map(lambda t: {**t[0], t[1]: t[2]}))
    numbers = _integers(rtype)
    if numbers:
        mutations.append(st.tuples(base, st.sampled_from(numbers), st.sampled_from(HUGE_NUMBERS)).map(
            lambda t: _raw_value(t[0], t[1], t[2])))
    bounds = _past_bounds(rtype, world)
    if bounds:
        mutations.append(st.tuples(base, st.sampled_from(bounds)).map(lambda t: {**t[0], t[1][0]: t[1][1]}))
    return st.one_of(mutations)


def _past_bounds(rtype: ResourceType, world: World) -> list[tuple[str, object]]:
    """(attribute, value) pairs just past what the declaration allows."""
    out = []
    for attr in rtype.attributes:
        if attr.type in ("string", "URI", "byte[]"):
            out.append((attr.name, "y" * (attr.max_length + 1)))
            if attr.enum:
                out.append((attr.name, attr.enum[0].lower() + "x"))
            if attr.base64:
                out.append((attr.name, "not base64!"))
        elif attr.type == "integer":
            if attr.minimum is not None:
                out.append((attr.name, attr.minimum - 1))
            out.append((attr.name, 2 ** 63))
        elif attr.type == "map":
            out.append((attr.name, {str(i): "v" for i in range(257)}))
            out.append((attr.name, {"k": 1}))
        elif attr.type == "array":
            out.append((attr.name, [{}] * 65))
            out.append((attr.name, [None]))
        elif attr.type == "ref":
            target = registry.TYPES.get(attr.target) if attr.target else None
            collection = target.collection if target is not None and target.collection else "nowhere"
            out += [(attr.name, {"href": f"{collection}/no-such-id"}), (attr.name, {"href": ""}),
                    (attr.name, {"href": 5}), (attr.name, {"href": "../../../etc/passwd"}),
                    (attr.name, {"href": "http://elsewhere.example/cimi/" + collection + "/x/y"}),
                    (attr.name, "not a reference")]
            others = [h for h in world.of(None) if target is None or h not in world.of(target)]
            # an existing resource of the wrong type (the shape of the list must not depend on the world)
            out.append((attr.name, {"href": others[0] if others else "nothing/at-all"}))
            if not attr.by_value:
                out.append((attr.name, {"href": f"{collection}/x", "extra": "y"}))
    return out


def _nested(doc: dict, key: str, depth: int, as_list: bool) -> bytes:
    inner = "[" * depth + "1" + "]" * depth if as_list else '{"a":' * depth + "1" + "}" * depth
    rest = json.dumps({k: v for k, v in doc.items() if k != key})
    return (rest[:-1] + ("," if len(rest) > 2 else "") + json.dumps(key) + ":" + inner + "}").encode()


def _raw_value(doc: dict, key: str, raw: str) -> bytes:
    rest = json.dumps({k: v for k, v in doc.items() if k != key})
    return (rest[:-1] + ("," if len(rest) > 2 else "") + json.dumps(key) + ":" + raw + "}").encode()


# ---------------------------------------------------------------- encodings

def _text(value: str) -> str:
    # \r survives an XML parser only as a character reference
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _attribute_value(value: str) -> str:
    # attribute values are whitespace-normalised by parsers unless tab, newline and return are references
    return (_text(value).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")
            .replace("\r", "&#13;"))


def _scalar(attr: Attribute | None, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if attr is not None and attr.type == "byte[]" and isinstance(value, str):
        return binascii.hexlify(value.encode("utf-8", "surrogatepass")).decode("ascii")
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return _text(str(value))


def _elements(rtype: ResourceType | None, doc: dict) -> str:
    """The children of an element holding `doc`, in the type's declared order (unknown names last)."""
    declared = [a.name for a in rtype.attributes] if rtype else []
    keys = sorted((k for k in doc if k not in ("resourceURI", "href")),
                  key=lambda k: declared.index(k) if k in declared else len(declared))
    out = []
    for key in keys:
        attr = rtype.attribute(key) if rtype else None
        value = doc[key]
        name = xml_names.element(rtype, attr) if attr is not None else key
        if value is None:
            out.append(f"<{name}/>")  # an empty element: null, erase this value
        elif attr is not None and attr.type == "map" and isinstance(value, dict):
            out += [f'<property key="{_attribute_value(str(k))}">{_scalar(None, v)}</property>'
                    for k, v in value.items()]
        elif attr is not None and attr.type == "ref" and isinstance(value, dict):
            out.append(_reference(name, value, registry.TYPES.get(attr.target) if attr.target else None))
        elif attr is not None and attr.type == "array" and isinstance(value, list):
            item_name = xml_names.item_element(attr)
            target = None if attr.target == REF else registry.TYPES.get(attr.target)
            out += [_reference(item_name, item, target) if isinstance(item, dict)
                    else f"<{item_name}>{_scalar(None, item)}</{item_name}>" for item in value]
        else:
            out.append(f"<{name}>{_scalar(attr, value)}</{name}>")
    return "".join(out)


def _reference(name: str, value: dict, target: ResourceType | None) -> str:
    href = value.get("href")
    opening = f'<{name} href="{_attribute_value(str(href))}"' if href is not None else f"<{name}"
    return f"{opening}>{_elements(target, value)}</{name}>"


def to_xml(root: str, rtype: ResourceType, doc: dict, namespace: str | None = CIMI_NS) -> bytes:
    xmlns = f' xmlns="{namespace}"' if namespace is not None else ""
    return f"<{root}{xmlns}>{_elements(rtype, doc)}</{root}>".encode("utf-8", "surrogatepass")


def encodings(root: str, rtype: ResourceType, doc: dict) -> st.SearchStrategy[Body]:
    """`doc` as cimid reads it: JSON (with resourceURI or without, escaped or raw UTF-8), or XML in CIMI's
    namespace or in none (documented leniency)."""
    uri = f"{CIMI_NS}/{root}"
    as_json = st.tuples(st.sampled_from([doc, {"resourceURI": uri, **doc}]), st.booleans()).map(
        lambda t: Body("json", json.dumps(t[0], ensure_ascii=t[1]).encode("utf-8", "surrogatepass"), t[0], True))
    as_xml = st.sampled_from([CIMI_NS, None]).map(lambda ns: Body("xml", to_xml(root, rtype, doc, ns), doc, True))
    return st.one_of(as_json, as_xml)


def broken_encoding(root: str, rtype: ResourceType, doc: dict | bytes | object) -> Body:
    """A hostile document as a body: raw bytes as they are, anything else as JSON or XML."""
    if isinstance(doc, bytes):
        return Body("json", doc)
    if not isinstance(doc, dict):  # a JSON body that is not an object
        return Body("json", json.dumps(doc).encode())
    return Body("json", json.dumps(doc).encode(), doc)


def hostile_xml(root: str, rtype: ResourceType, world: World) -> st.SearchStrategy[Body]:
    """XML cimid must refuse: another root element, a DOCTYPE or entity, elements where a value belongs,
    a property without key, nesting past any CIMI document, broken or truncated bytes."""
    base = document(rtype, world, creating=True)
    others = sorted(set(registry.REQUEST_ROOTS) - {root}) or ["Nothing"]
    attrs = [a.name for a in rtype.attributes] or ["x"]

    def body(data: bytes) -> Body:
        return Body("xml", data)

    return st.one_of(
        st.tuples(st.sampled_from(others), base).map(lambda t: body(to_xml(t[0], rtype, t[1]))),
        base.map(lambda d: body(b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "x">]>' + to_xml(root, rtype, d))),
        st.tuples(base, st.sampled_from(attrs)).map(lambda t: body(
            to_xml(root, rtype, t[0]).replace(b"</" + root.encode(), f"<{t[1]}><a>1</a></{t[1]}></{root}".encode()))),
        base.map(lambda d: body(to_xml(root, rtype, d).replace(b"</" + root.encode(),
                                                                 f"<property>v</property></{root}".encode()))),
        st.sampled_from([40, 5000]).map(lambda n: body(
            f'<{root} xmlns="{CIMI_NS}"><{attrs[0]}>'.encode() + b"<a>" * n + b"</a>" * n
            + f"</{attrs[0]}></{root}>".encode())),
        base.map(lambda d: body(to_xml(root, rtype, d)[:-3])),
        base.map(lambda d: body(to_xml(root, rtype, d).replace(b">", b">\xff", 1))),
        st.binary(max_size=64).map(lambda b: body(b"<" + b)),
    )


def typed_body(root: str, rtype: ResourceType, doc: st.SearchStrategy[dict]) -> st.SearchStrategy[Body]:
    """A well-typed document, encoded any way cimid reads."""
    return doc.flatmap(lambda d: encodings(root, rtype, d))


def hostile_body(root: str, rtype: ResourceType, world: World, *, creating: bool) -> st.SearchStrategy[Body]:
    """A body cimid must refuse, or take only with what it declares: hostile JSON documents (also as
    XML), hostile XML, a well-typed document in a foreign namespace."""
    broken = hostile(rtype, world, creating=creating)
    return st.one_of(
        broken.map(lambda d: broken_encoding(root, rtype, d)),
        broken.map(lambda d: Body("xml", to_xml(root, rtype, d), d) if isinstance(d, dict) else broken_encoding(
            root, rtype, d)),
        hostile_xml(root, rtype, world),
        document(rtype, world, creating=creating).map(
            lambda d: Body("xml", to_xml(root, rtype, d, "urn:not-cimi"), d)),
    )


# ---------------------------------------------------------------- headers and query parameters

MEDIA = ("application/json", "application/xml", "text/xml", "*/*", "application/*", "text/*", "image/png",
         "application/json;q=0.1, application/xml;q=0.9", "application/xml;q=abc, application/json", "",
         "application/json; charset=utf-8", "text/html;q=1.0", ";;,,;q=", "application/xml;q=0")
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)
FORMATS = (None, "json", "xml", "XML", " xml ", "yaml", "")


def plausible_accept() -> st.SearchStrategy[str | None]:
    return st.sampled_from([None, "application/json", "application/xml", "text/xml", "*/*"])


def accept() -> st.SearchStrategy[str | None]:
    """What a client would send, or anything."""
    return st.one_of(plausible_accept(), st.sampled_from(MEDIA), HEADER_TEXT)


def host() -> st.SearchStrategy[str | None]:
    """The Host header every href is built from: the client's own (None), another host, or no host at all."""
    return st.one_of(st.none(), st.sampled_from(["example.org:8080", "[::1]", "%", "[::1", "a b", "a/b", "", "a?b#c"]),
                     HEADER_TEXT)


def plausible_content_type(fmt: str) -> st.SearchStrategy[str | None]:
    own = "application/xml" if fmt == "xml" else "application/json"
    return st.sampled_from([own, own + "; charset=utf-8", None])  # None: cimid sniffs the body


def content_type(fmt: str) -> st.SearchStrategy[str | None]:
    """The body's own media type, none (sniffed), a mismatch, or garbage."""
    return st.one_of(
        plausible_content_type(fmt),
        st.sampled_from(["application/octet-stream", "text/xml", "application/json", "text/plain",
                         "multipart/form-data; boundary=x"]),
        HEADER_TEXT,
    )


def plausible_if_match(etag: str | None) -> st.SearchStrategy[str | None]:
    """None, `*` or the current ETag (also weak, or in a list)."""
    current = [etag, f"W/{etag}", f'"0", {etag}'] if etag else [None, None, None]
    return st.sampled_from(range(5)).map(lambda i: ([None, "*"] + current)[i])


def if_match(etag: str | None) -> st.SearchStrategy[str | None]:
    """Those, a stale ETag, or garbage."""
    return st.one_of(plausible_if_match(etag), st.sampled_from(['"0"', '"999999999"', 'W/"1"', "garbage"]),
                     HEADER_TEXT)


def attribute_names(rtype: ResourceType) -> st.SearchStrategy[str]:
    """A comma-separated list of names: declared attributes, `*`, `operations`, and strangers."""
    declared = [a.name for a in rtype.attributes] + ["*", "operations", "id", "resourceURI"]
    name = st.one_of(st.sampled_from(declared), SHORT_TEXT)
    return st.lists(name, max_size=4).map(",".join)


def _literal(kind: str) -> st.SearchStrategy[str]:
    if kind == "integer":
        return st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1).map(str), st.sampled_from(HUGE_NUMBERS))
    if kind == "boolean":
        return st.sampled_from(["true", "false", "TRUE", "1"])
    if kind == "dateTime":
        return st.sampled_from(["2012-05-25T13:30:15Z", "2099-01-01", "2012-13-45", "2000-01-01T24:00:00+14:00",
                                "9999-12-31T23:59:59-14:00"])
    quoted = SHORT_TEXT.map(lambda s: "'" + s.replace("'", "''") + "'")
    return st.one_of(quoted, SHORT_TEXT.map(lambda s: '"' + s.replace('"', '\\"') + '"'))


def comparison(rtype: ResourceType) -> st.SearchStrategy[str]:
    """One `$filter` comparison over the type's filterable columns, typed as declared, or mistyped."""
    columns = sorted(rtype.columns.items())
    ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "=>", "==", "<>"])
    kinds = st.sampled_from(["string", "integer", "boolean", "dateTime"])
    if not columns:
        return st.tuples(SHORT_TEXT, ops, kinds.flatmap(_literal)).map(lambda t: f"{t[0]}{t[1]}{t[2]}")

    def one(column: tuple[str, str]) -> st.SearchStrategy[str]:
        name, kind = column
        if kind == "map":
            key = SHORT_TEXT.map(lambda s: "'" + s.replace("'", "''") + "'")
            return st.tuples(key, ops, _literal("string")).map(lambda t: f"{name}[{t[0]}]{t[1]}{t[2]}")
        literal = st.one_of(_literal(kind), kinds.flatmap(_literal))  # mostly right, sometimes mistyped
        return st.tuples(ops, literal, st.booleans()).map(
            lambda t: f"{name}{t[0]}{t[1]}" if t[2] else f"{t[1]}{t[0]}{name}")
    return st.sampled_from(columns).flatmap(one)


def filters(rtype: ResourceType) -> st.SearchStrategy[str]:
    expression = st.recursive(
        comparison(rtype),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from([" and ", " or ", " AND ", " "]), inner).map("".join),
            inner.map(lambda e: f"({e})")),
        max_leaves=4)
    return st.one_of(
        expression, expression, ODD_TEXT,
        st.sampled_from([1, 63, 64, 65, 5000]).map(lambda n: "(" * n + "name='x'" + ")" * n),
        st.sampled_from([513, 2000]).map(lambda n: " or ".join(["name='x'"] * n)),
    )


def orderby(rtype: ResourceType) -> st.SearchStrategy[str]:
    columns = sorted(rtype.columns) or ["name"]
    key = st.tuples(st.one_of(st.sampled_from(columns), SHORT_TEXT), st.sampled_from(["", ":asc", ":desc", ":up"]))
    return st.one_of(st.lists(key.map("".join), min_size=1, max_size=3).map(",".join), ODD_TEXT)


def position() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(0, 20).map(str), st.sampled_from(HUGE_NUMBERS),
                     st.sampled_from(["-1", " 2", "1_0", "٣", "0x10", "", "00"]), SHORT_TEXT)


def query(rtype: ResourceType) -> st.SearchStrategy[list[tuple[str, str]]]:
    """CIMI query parameters for reading `rtype` (a collection of it, or one), repeated sometimes."""
    one = st.one_of(
        filters(rtype).map(lambda v: ("$filter", v)),
        orderby(rtype).map(lambda v: ("$orderby", v)),
        attribute_names(rtype).map(lambda v: ("$select", v)),
        attribute_names(rtype).map(lambda v: ("$expand", v)),
        position().map(lambda v: ("$first", v)),
        position().map(lambda v: ("$last", v)),
        st.sampled_from([f for f in FORMATS if f is not None]).map(lambda v: ("$format", v)),
        st.tuples(SHORT_TEXT, SHORT_TEXT),
    )
    return st.lists(one, max_size=4)


def resource_ids(existing: list[str]) -> st.SearchStrategy[str]:
    """Path segments for an id: an existing one, strangers, traversal, encodings, very long ones."""
    known = [path_of_href(h).rsplit("/", 1)[-1] for h in existing]
    # raw, as sent on the request line (printable ASCII: anything else aiohttp's own parser refuses before
    # cimid sees it), and escaped, any character at all
    strange = st.one_of(
        st.sampled_from([".", "..", "%2e%2e", "..%2F..%2Fetc", "%00", "%ff%fe", "a%2Fb", "~", "%", "%zz", "[x]",
                         "%C3%A9", "%20", "null", "*", "a;b=c", "@", "%u0041"]),
        st.sampled_from([300, 9000]).map(lambda n: "x" * n))  # long: past aiohttp's request line at 9000
    quoted = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24).map(
        lambda s: quote(s, safe=""))
    return st.one_of(pick(sorted(known), "no-such-id"), strange, quoted,
                     SHORT_TEXT.map(lambda s: quote("~" + s, safe="")))
