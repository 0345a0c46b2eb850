"""From stored rows to plain attribute dicts the wire dialects render: absolute hrefs, operations, $select."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import BadRequest, NotFound, PreconditionFailed
from ..model import BY_COLLECTION, REF, TYPES, ResourceType
from ..store.db import Row

# A provider extension (DSP0263 §5.8): GET the machine's serial console output as text.
CONSOLE_REL = "urn:x-cimid:operation:console"


@dataclass(frozen=True)
class Context:
    """Who asks, and the base URL every id and href is built from (ends with /cimi/)."""

    base: str
    role: str = "admin"  # "admin" may change things; "reader" may only read
    user: str = "anonymous"

    @property
    def may_write(self) -> bool:
        return self.role == "admin"


def now() -> str:
    """dateTimes are stored in UTC with milliseconds, so comparing strings compares instants."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_id() -> str:
    return uuid.uuid4().hex


def path_of(rtype: ResourceType, row: Row) -> str:
    if rtype.owner:
        return f"machines/{row.parent}/{rtype.collection}/{row.id}"
    return f"{rtype.collection}/{row.id}"


def split_href(href: str) -> tuple[str, str]:
    """An href (absolute, or relative to the base URI) -> (collection, id). Lenient about the host."""
    path = urlsplit(href).path if "://" in href else href
    if "/cimi/" in path:
        path = path.split("/cimi/", 1)[1]
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) != 2:
        raise BadRequest(f"'{href}' is not the URI of a resource of this provider")
    return parts[0], parts[1]


def href_to_id(href: str, rtype: ResourceType, where: str) -> str:
    collection, id = split_href(href)
    if collection != rtype.collection:
        raise BadRequest(f"{where}: '{href}' is not a {rtype.name}")
    return id


def absolute(rtype: ResourceType, attrs: dict, base: str) -> dict:
    """Turn the stored relative hrefs of one resource's attributes into absolute URLs."""
    out = {}
    for key, value in attrs.items():
        attr = rtype.attribute(key)
        if attr is not None and attr.write_only:
            continue  # also inside a template given by value (a MachineTemplate's credential)
        if attr is not None and attr.type == "ref" and isinstance(value, dict):
            target = TYPES.get(attr.target) if attr.target else None
            value = dict(absolute(target, value, base) if target else value)
            if "href" in value:
                value["href"] = base + value["href"]
        elif attr is not None and attr.type == "array" and attr.target == REF:
            value = [{"href": base + item["href"]} for item in value]
        out[key] = value
    return out


def select_attributes(doc: dict, rtype: ResourceType, select: set[str] | None) -> dict:
    """Keep the $select-ed attributes (plus resourceURI), in the order the type declares them."""
    if not select or "*" in select:
        return doc
    kept = {"resourceURI": doc["resourceURI"]} if "resourceURI" in doc else {}
    for attr in rtype.attributes:
        if attr.name in select and attr.name in doc:
            kept[attr.name] = doc[attr.name]
    if "operations" in select and "operations" in doc:
        kept["operations"] = doc["operations"]
    return kept


def operations(rtype: ResourceType, row: Row, ctx: Context, href: str) -> list[dict]:
    """Only what this caller may do to this resource in its current state."""
    if not ctx.may_write:
        return []
    state = row.state
    busy = state in rtype.transitional_states
    ops = []
    if rtype.editable and not busy:
        ops.append({"rel": "edit", "href": href})
    if rtype.deletable and (rtype.name != "Job" or state in ("SUCCESS", "FAILED", "STOPPED")) and not busy:
        ops.append({"rel": "delete", "href": href})
    for action in rtype.actions.values():
        if state in action.from_states and _action_possible(rtype, row, action.name):
            ops.append({"rel": action.uri, "href": f"{href}/{action.name}"})
    if rtype.name == "Machine" and state not in ("CREATING", "DELETING"):
        ops.append({"rel": CONSOLE_REL, "href": f"{href}/console"})
    return ops


def _action_possible(rtype: ResourceType, row: Row, action: str) -> bool:
    if rtype.name == "Job" and action == "stop":
        return bool(row.internal.get("stoppable"))
    return True


def present(rtype: ResourceType, row: Row, ctx: Context) -> dict:
    href = ctx.base + path_of(rtype, row)
    doc = {"resourceURI": rtype.type_uri, "id": href}
    attrs = absolute(rtype, row.attrs, ctx.base)
    for attr in rtype.attributes:
        if attr.name in attrs:
            doc[attr.name] = attrs[attr.name]
        elif attr.type == "collection":
            doc[attr.name] = {"href": f"{href}/{attr.name}"}
    ops = operations(rtype, row, ctx, href)
    if ops:
        doc["operations"] = ops
    return doc


def collection_type(name: str) -> ResourceType:
    rtype = BY_COLLECTION.get(name)
    if rtype is None:
        raise NotFound(f"this provider has no collection '{name}'")
    return rtype


@dataclass
class Result:
    """What the HTTP layer sends: status, the type to render with, the document, extra headers."""

    status: int
    rtype: ResourceType | None = None
    doc: dict | None = None
    item_type: ResourceType | None = None  # set when doc is a collection
    headers: dict[str, str] = field(default_factory=dict)
    # A plain GET of one resource: what identifies its rendering (type, id, version, base, role), and how
    # to build the document when the HTTP layer has no rendering cached under that key.
    cache_key: tuple | None = None
    make_doc: Callable[[], dict] | None = None

    def document(self) -> dict | None:
        return self.make_doc() if self.doc is None and self.make_doc else self.doc


@dataclass
class QueryParams:
    filters: list[str] = field(default_factory=list)
    select: set[str] | None = None
    expand: set[str] | None = None
    orderby: list[str] = field(default_factory=list)
    first: int | None = None
    last: int | None = None


def etag(row: Row) -> str:
    return f'"{row.version}"'


def check_if_match(row: Row, if_match: str | None) -> None:
    if if_match is None:
        return
    tags = {t.strip() for t in if_match.split(",")}
    if "*" not in tags and etag(row) not in tags and f"W/{etag(row)}" not in tags:
        raise PreconditionFailed(f"the resource changed: its ETag is now {etag(row)}, not {if_match}")
