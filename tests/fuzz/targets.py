"""What the suite fuzzes, found by walking the model registry (never by collection name), and what the
sandbox holds right now: existing resources to refer to and to change, and when it is quiet.

Everything here reads `cimid.model.registry` when called, not when imported, so a family registered later
(or by a test) is walked like the others."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cimid.model import registry
from cimid.model.types import Action, Extension, ResourceType

@dataclass(frozen=True)
class Collection:
    """A top-level collection, or a sub-collection under resources of `parent`."""

    rtype: ResourceType
    parent: ResourceType | None = None

    @property
    def label(self) -> str:
        return f"{self.parent.collection}/*/{self.rtype.collection}" if self.parent else self.rtype.collection

    def __repr__(self) -> str:  # what a failing example prints
        return f"Collection({self.label})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis's printer asks this of dataclasses
        printer.text(repr(self))


@dataclass(frozen=True)
class Operation:
    """An action (POST an Action document) or an extension (GET) a top-level type declares."""

    owner: ResourceType
    declared: Action | Extension

    @property
    def name(self) -> str:
        return self.declared.name

    @property
    def label(self) -> str:
        return f"{self.owner.collection}/*/{self.name}"

    def __repr__(self) -> str:
        return f"Operation({self.label})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


def collections() -> list[Collection]:
    """Every top-level collection and every sub-collection the registry declares."""
    found = [Collection(t) for t in registry.TOP_LEVEL.values()]
    for parent_name, subs in registry.SUB_COLLECTIONS.items():
        parent = registry.TYPES[parent_name]
        if parent.collection and not parent.parent:  # routes nest one level: /{coll}/{id}/{sub}/{item}
            found.extend(Collection(t, parent) for t in subs.values())
    return found


def operations() -> list[Operation]:
    """Every action and extension of every top-level type."""
    return [Operation(t, op) for t in registry.TOP_LEVEL.values()
            for op in (*t.actions.values(), *t.extensions.values())]


def create_document_type(rtype: ResourceType) -> ResourceType:
    """What a POST to the collection of `rtype` carries: its create wrapper, or the resource itself."""
    return registry.TYPES[rtype.create_wrapper] if rtype.create_wrapper else rtype


def path_of_href(href: str) -> str:
    """An href (absolute, or relative to the base URI) as the path under /cimi/, without slashes around."""
    path = href.split("/cimi/", 1)[1] if "/cimi/" in href else href
    return path.strip("/")


@dataclass
class World:
    """The hrefs of existing resources, by type name (absolute)."""

    base: str
    hrefs: dict[str, list[str]] = field(default_factory=dict)

    def of(self, rtype: ResourceType | None) -> list[str]:
        if rtype is None:  # a reference to anything
            return sorted(h for hs in self.hrefs.values() for h in hs)
        return self.hrefs.get(rtype.name, [])

    def in_collection(self, coll: Collection) -> list[str]:
        return self.of(coll.rtype)


def world_of(base: str, rows: list[tuple]) -> World:
    """Every stored resource of a type with a collection, as the href the registry's declarations give
    it (`{collection}/{id}`, or `{parent collection}/{parent}/{collection}/{id}`)."""
    found = World(base)
    for kind, id, parent, *_ in rows:
        rtype = registry.TYPES.get(kind)
        if rtype is None or not rtype.collection:
            continue
        if rtype.parent:
            path = f"{registry.TYPES[rtype.parent].collection}/{parent}/{rtype.collection}/{id}"
        else:
            path = f"{rtype.collection}/{id}"
        found.hrefs.setdefault(rtype.name, []).append(base + path)
    for hrefs in found.hrefs.values():
        hrefs.sort()  # a stable order, so derandomized runs draw the same resources
    return found


async def world(client) -> World:
    """What the sandbox holds once it is quiet."""
    return world_of(client.base, await quiet(client))


def minimal_document(rtype: ResourceType, known: World, depth: int = 0) -> dict:
    """The smallest document the model says is complete: every consumer-mandatory attribute, references
    by href to an existing resource where there is one, else given by value."""
    doc: dict = {}
    for attr in rtype.attributes:
        if not (attr.consumer_mandatory and attr.consumer_writable):
            continue
        if attr.type == "ref":
            target = registry.TYPES.get(attr.target) if attr.target else None
            hrefs = known.of(target)
            if hrefs:
                doc[attr.name] = {"href": hrefs[0]}
            elif attr.by_value and target is not None and depth < 3:
                doc[attr.name] = minimal_document(target, known, depth + 1)
        elif attr.type in ("string", "URI", "byte[]"):
            doc[attr.name] = attr.enum[0] if attr.enum else ("eA==" if attr.base64 else "urn:x-cimid-fuzz:minimal")
        elif attr.type == "integer":
            doc[attr.name] = max(attr.minimum or 1, 1)
        elif attr.type == "boolean":
            doc[attr.name] = True
        elif attr.type == "array":
            doc[attr.name] = []
        elif attr.type == "map":
            doc[attr.name] = {}
    return doc


def busy(rows: list[tuple]) -> list[tuple]:
    """Rows in a transitional state of their type (a Job at work, a Machine STARTING...)."""
    out = []
    for kind, id, _parent, _name, _description, state, *_ in rows:
        rtype = registry.TYPES.get(kind)
        if rtype is not None and state in rtype.transitional_states:
            out.append((kind, id, state))
    return out


async def quiet(client, timeout: float = 30.0) -> list[tuple]:
    """Wait until no Job is at work and no resource is transitional; return the rows then. A Job that
    never finishes is a bug of its own, so waiting has an end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = await client.rows()
        still = busy(rows)
        if not still:
            return rows
        if loop.time() > deadline:
            raise AssertionError(f"still at work after {timeout}s: {still[:5]}")
        await asyncio.sleep(0.005)


async def ensure_resource(client, coll: Collection, known: World) -> str | None:
    """An existing resource of `coll` (absolute href), created from a minimal document when there is
    none and the collection takes POSTs; None when there is no way to have one."""
    existing = known.in_collection(coll)
    if existing:
        return existing[0]
    if coll.parent is not None:
        parent = await ensure_resource(client, Collection(coll.parent), known)
        if parent is None:
            return None
        path = f"{path_of_href(parent)}/{coll.rtype.collection}"
    else:
        path = coll.rtype.collection
    if not coll.rtype.creatable:
        return None
    r = await client.post(path, minimal_document(create_document_type(coll.rtype), known))
    if r.status not in (201, 202):
        return None
    href = client.base + path_of_href(r.headers["Location"])
    return href if href in world_of(client.base, await quiet(client)).in_collection(coll) else None
