"""What the service hands the HTTP layer: who asks (Context), the parsed query (QueryParams), the answer
(Result), and stored rows turned into plain attribute dicts with absolute hrefs and operations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from .. import errors
from ..model import OWN_LOG, Action, ResourceType
from ..store.db import Row
from .hrefs import absolute, event_log_id, path_of


@dataclass(frozen=True)
class Context:
    """Who asks (a consumer and its role), and the base URL every id and href is built from (ends with
    /cimi/). An admin sees and changes everything; a reader sees everything and changes nothing; a user
    sees the public catalogue and what it made, and changes only what it made."""

    base: str
    role: str = "admin"
    user: str = "anonymous"
    quotas: dict = field(default_factory=dict)  # the consumer's limits: machines, cpu, memory ...

    @property
    def may_write(self) -> bool:
        return self.role in ("admin", "user")

    @property
    def scope(self) -> str | None:
        """What the store shows this caller: a user's own name, or None (everything)."""
        return self.user if self.role == "user" else None

    def may_change(self, row: Row) -> bool:
        return self.role == "admin" or (self.role == "user" and row.owner == self.user)

    def __hash__(self) -> int:  # quotas is a dict; a Context is identified by who asks and where from
        return hash((self.base, self.role, self.user))


@dataclass
class QueryParams:
    filters: list[str] = field(default_factory=list)
    select: set[str] | None = None
    expand: set[str] | None = None
    orderby: list[str] = field(default_factory=list)
    first: int | None = None
    last: int | None = None


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
    text: str | None = None  # an extension's plain-text answer (a Machine's console)
    # An extension's stream of documents of type `rtype` (the live Events): (id, document) as they come,
    # (id, None) for a position with no document (where the stream starts), or None when nothing came for
    # a while (the HTTP layer then sends a keep-alive).
    stream: AsyncIterator[tuple[int, dict | None] | None] | None = None

    def document(self) -> dict | None:
        return self.make_doc() if self.doc is None and self.make_doc else self.doc


def etag(row: Row) -> str:
    return f'"{row.version}"'


def check_if_match(row: Row, if_match: str | None) -> None:
    errors.check_if_match(etag(row), if_match)


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


def present(rtype: ResourceType, row: Row, ctx: Context,
            operations: Callable[[str], list[dict]] | None = None) -> dict:
    """A stored row as the consumer sees it; `operations(href)` lists what this caller may do to it."""
    path = path_of(rtype, row.id, row.parent)
    href = ctx.base + path
    doc = {"resourceURI": rtype.type_uri, "id": href}
    attrs = absolute(rtype, row.attrs, ctx.base)
    for attr in rtype.attributes:
        if attr.name in attrs:
            doc[attr.name] = attrs[attr.name]
        elif attr.type == "collection":  # a sub-collection, or a TARGETING one: at {href}/{name} alike
            doc[attr.name] = {"href": f"{href}/{attr.name}"}
        elif attr.derived == OWN_LOG:
            doc[attr.name] = {"href": f"{ctx.base}eventLogs/{event_log_id(path)}"}
    ops = operations(href) if operations else []
    if ops:
        doc["operations"] = ops
    return doc


def operations(rtype: ResourceType, row: Row, ctx: Context, href: str,
               possible: Callable[[Action], bool] = lambda action: True) -> list[dict]:
    """Only what this caller may do to this resource in its current state; `possible` says whether the row
    allows an action now, beyond the states the action is declared for."""
    ops = []
    may_change = ctx.may_change(row)
    state = row.state
    busy = state in rtype.transitional_states
    if may_change and rtype.editable and not busy:
        ops.append({"rel": "edit", "href": href})
    if may_change and rtype.deletable and not busy and (not rtype.finished_states or state in rtype.finished_states):
        ops.append({"rel": "delete", "href": href})
    for action in rtype.actions.values():
        allowed = ctx.role == "admin" if action.admin_only else may_change
        if allowed and (not action.from_states or state in action.from_states) and possible(action):
            ops.append({"rel": action.uri, "href": f"{href}/{action.name}"})
    if not may_change:
        return ops
    for extension in rtype.extensions.values():
        if state not in extension.unavailable_in:
            ops.append({"rel": extension.uri, "href": f"{href}/{extension.name}"})
    return ops
