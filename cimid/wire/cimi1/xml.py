"""CIMI 1.1 XML (DSP8009 1.0.2): attribute dicts to and from elements, in the schema's element order.

Output validates against dsp8009_1.0.2.xsd. Input is read leniently (with or without the namespace,
whitespace around values) but never with DTDs, entities or network access.
"""

from __future__ import annotations

import binascii
import re

from lxml import etree

from ...errors import BadRequest
from ...model import CIMI_NS, REF, TYPES, ResourceType
from ...model.registry import REQUEST_ROOTS
from ..text import or_xml_safe
from . import names

MEDIA_TYPE = "application/xml"
# DSP8009 1.0.2 allows one <attribute> per ResourceMetadata (an erratum); the full list goes out as
# extension elements in cimid's own namespace, which the schema admits after the operations.
EXT_NS = "urn:x-cimid:xml:1"
_NSMAP = {None: CIMI_NS}
EXT_PREFIX = "cimid:"  # a JSON key with it is a provider extension attribute, in EXT_NS in XML
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                          huge_tree=False, remove_comments=True, remove_pis=True)


def _q(name: str) -> str:
    return f"{{{CIMI_NS}}}{name}"


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------- rendering

@or_xml_safe
def render(doc: dict, rtype: ResourceType) -> bytes:
    root = etree.Element(_q(rtype.name), nsmap=_nsmap([doc]))
    _fill(root, doc, rtype)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@or_xml_safe
def render_collection(doc: dict, item_type: ResourceType) -> bytes:
    root = etree.Element(_q("Collection"), nsmap=_nsmap(doc.get(item_type.items, ())))
    root.set("resourceURI", doc["resourceURI"])
    etree.SubElement(root, _q("id")).text = doc["id"]
    etree.SubElement(root, _q("count")).text = str(doc["count"])
    for item in doc.get(item_type.items, ()):
        _fill(etree.SubElement(root, _q(item_type.name)), item, item_type)
    _operations(root, doc.get("operations", ()))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _nsmap(docs) -> dict:
    """The root's namespaces: cimid's too when an extension attribute will use it (declared once)."""
    if any(k.startswith(EXT_PREFIX) for doc in docs for k in doc):
        return {**_NSMAP, "cimid": EXT_NS}
    return _NSMAP


def _fill(el, doc: dict, rtype: ResourceType) -> None:
    if names.rendered_apart(rtype):
        return _fill_metadata(el, doc)
    ops_done = False
    operations_after = names.operations_after(rtype)
    grouped = names.as_xml_attributes(rtype)
    on_element = names.on_element(rtype)
    for attr in rtype.attributes:
        if attr.name == "id" and not names.has_common(rtype):
            continue
        if attr.name in on_element:
            if doc.get(attr.name) not in (None, ""):
                el.set(attr.name, _text(doc[attr.name]))
            continue
        if grouped and attr.name in grouped[1]:
            if attr.name == grouped[1][0]:
                etree.SubElement(el, _q(grouped[0]), {n: _text(doc[n]) for n in grouped[1] if n in doc})
            continue
        value = doc.get(attr.name)
        if attr.type == "extension":
            continue  # after the operations, below
        if attr.name == "id" and value == "":  # the id of an error Job is empty, and still present
            etree.SubElement(el, _q("id"))
        elif value is not None and value != "" and value != [] and value != {}:
            _attribute(el, rtype, attr, value)
        if operations_after == attr.name:
            _operations(el, doc.get("operations", ()))
            ops_done = True
    if not ops_done:
        _operations(el, doc.get("operations", ()))
    for attr in rtype.attributes:
        if attr.type == "extension" and doc.get(attr.name):
            _extension(el, attr.name, doc[attr.name])
    for key, value in doc.items():  # a federation front's cimid:node: an attribute the schema admits (##other)
        if key.startswith(EXT_PREFIX) and isinstance(value, str | int | bool):
            el.set(f"{{{EXT_NS}}}{key[len(EXT_PREFIX):]}", _text(value))


def _extension(el, name: str, value: dict) -> None:
    """A provider extension (an object of objects, e.g. usage: {machines: {used: 1, limit: 4}}) as
    elements in cimid's namespace, where the schema admits them: after the operations."""
    ext = etree.SubElement(el, f"{{{EXT_NS}}}{name}", nsmap={"cimid": EXT_NS})
    for key, inner in value.items():
        etree.SubElement(ext, f"{{{EXT_NS}}}item", {"name": key, **{k: _text(v) for k, v in inner.items()}})


def _attribute(el, rtype: ResourceType, attr, value) -> None:
    t = attr.type
    if t == "map":
        for key, val in value.items():
            prop = etree.SubElement(el, _q("property"), key=key)
            prop.text = val
    elif t in ("ref", "collection"):
        child = etree.SubElement(el, _q(names.element(rtype, attr)))
        _reference(child, value, TYPES.get(attr.target) if attr.target else None)
    elif t == "struct":
        child = etree.SubElement(el, _q(attr.name))
        if attr.target:
            _fill(child, value, TYPES[attr.target])
        else:
            _free_form(child, value)
    elif t == "array":
        for item in value:
            child = etree.SubElement(el, _q(names.item_element(attr)))
            if attr.target == REF:
                _reference(child, item, None)
            else:
                _fill(child, item, TYPES[attr.target])
    elif t == "byte[]":
        etree.SubElement(el, _q(attr.name)).text = binascii.hexlify(value.encode("utf-8")).decode("ascii")
    else:
        etree.SubElement(el, _q(attr.name)).text = _text(value)


def _reference(el, value: dict, target: ResourceType | None) -> None:
    if value.get("href"):
        el.set("href", value["href"])
    if target is not None and any(k != "href" for k in value):  # expanded, or given by value
        _fill(el, {k: v for k, v in value.items() if k not in ("href", "operations")}, target)


def _free_form(el, value: dict) -> None:
    """A structure the schema leaves open (an Event's content): one element per key, a reference as an
    href attribute."""
    for key, inner in value.items():
        if isinstance(inner, dict):
            etree.SubElement(el, _q(key), {"href": inner["href"]} if "href" in inner else {})
        elif inner is not None:
            etree.SubElement(el, _q(key)).text = _text(inner)


def _operations(el, operations) -> None:
    for op in operations:
        etree.SubElement(el, _q("operation"), rel=op["rel"], href=op["href"])


def _fill_metadata(el, doc: dict) -> None:
    for name in ("id", "typeURI", "name"):
        if doc.get(name):
            etree.SubElement(el, _q(name)).text = doc[name]
    for cap in doc.get("capabilities", ()):
        c = etree.SubElement(el, _q("capability"), uri=cap["uri"])
        for key in ("name", "description"):
            if cap.get(key):
                c.set(key, cap[key])
        if "value" in cap:
            etree.SubElement(c, _q("value")).text = _text(cap["value"])
    for action in doc.get("actions", ()):
        etree.SubElement(el, _q("action"), {k: _text(v) for k, v in action.items()})
    _operations(el, doc.get("operations", ()))
    for attr in doc.get("attributes", ()):
        etree.SubElement(el, f"{{{EXT_NS}}}attribute", {k: _text(v) for k, v in attr.items()},
                         nsmap={"cimid": EXT_NS})


# ---------------------------------------------------------------- parsing

def parse(body: bytes) -> tuple[str, dict]:
    """Return (root element name, attribute dict) of a request body."""
    if _DTD.search(body):
        raise BadRequest("XML with a DOCTYPE or ENTITY declaration is not accepted")
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadRequest(f"the body is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None or root.getroottree().docinfo.doctype:
        raise BadRequest("XML with a DOCTYPE or ENTITY declaration is not accepted")
    _check_namespaces(root)
    name = etree.QName(root).localname
    rtype = REQUEST_ROOTS.get(name)
    if rtype is None:
        raise BadRequest(f"unexpected XML root element <{name}>")
    return name, _read(root, rtype)


def _check_namespaces(root) -> None:
    """CIMI's namespace, or none at all (documented leniency); another vocabulary is not CIMI."""
    for el in root.iter(tag=etree.Element):
        namespace = etree.QName(el).namespace
        if namespace not in (None, CIMI_NS):
            raise BadRequest(f"<{etree.QName(el).localname}> is in the namespace '{namespace[:200]}'; "
                             f"CIMI documents use '{CIMI_NS}' (or no namespace)")


def _read(el, rtype: ResourceType) -> dict:
    doc: dict = {name: el.get(name) for name in names.on_element(rtype) if el.get(name) is not None}
    by_element = names.reading_names(rtype)
    for child in el:
        if not isinstance(child.tag, str):
            continue
        name = etree.QName(child).localname
        if name == "property":
            key = child.get("key")
            if key is None:
                raise BadRequest("<property> needs a key attribute")
            doc.setdefault("properties", {})[key] = (child.text or "").strip()
            continue
        if name == "operation":
            continue
        attr = by_element.get(name)
        if attr is None:
            raise BadRequest(f"unknown element <{name}> in {rtype.name}")
        if attr.type == "struct":
            continue  # provider-made (an EventLog's summary): a consumer echoing it back changes nothing
        if attr.type == "array":
            item = {"href": child.get("href")} if attr.target == REF else _read(child, TYPES[attr.target])
            doc.setdefault(attr.name, []).append(item)
        elif attr.type in ("ref", "collection"):
            ref = _read(child, TYPES[attr.target]) if attr.target and len(child) else {}
            if child.get("href") is not None:
                ref["href"] = child.get("href")
            doc[attr.name] = ref or None
        else:
            doc[attr.name] = _scalar(attr, child, rtype)
    return doc


def _scalar(attr, child, rtype):
    text = (child.text or "").strip()
    if len(child):
        raise BadRequest(f"<{attr.name}> in {rtype.name} must hold a value, not elements")
    if text == "":
        return None
    if attr.type == "integer":
        try:
            return int(text)
        except ValueError:
            raise BadRequest(f"<{attr.name}>: expected an integer, got '{text[:40]}'") from None
    if attr.type == "boolean":
        if text not in ("true", "false", "1", "0"):
            raise BadRequest(f"<{attr.name}>: expected true or false, got '{text[:40]}'")
        return text in ("true", "1")
    if attr.type == "byte[]":
        try:
            return binascii.unhexlify(text).decode("utf-8")
        except (binascii.Error, ValueError):
            return text  # lenient: a key pasted as plain text
    return text
