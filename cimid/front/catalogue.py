"""The federation's catalogue: configurations, templates and credentials held once, in etcd, and served
by every front with a node's CIMI semantics (201 + Location + ETag, If-Match, $filter/$orderby/$first/
$last/$select, owners and publish/unpublish), so they appear once, not once per node.

Keys (under the cluster prefix): `catalog/<collection>/<id>` -> {"attrs", "owner", "public"}; references in
attrs are kept relative ("machineConfigs/small"), as a node keeps them. A record's etcd mod_revision is its
ETag, so an If-Match update or delete is one compare-and-swap. `catalog/.imported` marks that the catalogue
was started from a node's (its seed): done once per federation, by the first front that finds a node.

A create forwarded to a node that names a global entry (a MachineCreate's machineTemplate, a template's
machineConfig or credential) is resolved here into a by-value document first: the nodes know no global
entry. Images keep their bits on nodes: MachineImages and VolumeImages stay node resources.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

from ..cluster.etcd import Etcd
from ..errors import BadRequest, Conflict, Forbidden, MethodNotAllowed, NotFound, PreconditionFailed, check_if_match
from ..http.negotiation import request_format, response_format
from ..http.params import positive
from ..model import TYPES, ResourceType, collection_type
from ..model.registry import ActionRequest
from ..model.types import REF
from ..model.validate import require, validate
from ..store.query import QueryError, page_documents
from ..wire import dialect_for

# Global kinds: the catalogue family's, and the configurations other families' templates take by value.
# Templates that name node resources (a VolumeTemplate's volumeImage, a NetworkTemplate's forwardingGroup)
# and images stay on nodes.
GLOBAL: dict[str, ResourceType] = {t.collection: t for t in (
    TYPES["MachineConfiguration"], TYPES["MachineTemplate"], TYPES["Credential"], TYPES["CredentialTemplate"],
    TYPES["VolumeConfiguration"], TYPES["NetworkConfiguration"], TYPES["NetworkPortConfiguration"],
    TYPES["MeterConfiguration"])}
_PROVIDER_OWNED = ("id", "created", "updated", "resourceURI", "operations")


@dataclass(frozen=True)
class Caller:
    """Who asks, as the front authenticated them: a node's roles (admin sees and changes everything, a
    reader sees everything, a user sees the public catalogue and its own, changes its own)."""

    name: str = "anonymous"
    role: str = "admin"
    quotas: dict = field(default_factory=dict, hash=False, compare=False)  # the tenant's limits

    @property
    def scope(self) -> str | None:
        return self.name if self.role == "user" else None

    def may_see(self, record: dict) -> bool:
        return self.scope is None or record["owner"] == self.name or record["public"]

    def may_change(self, record: dict) -> bool:
        return self.role == "admin" or (self.role == "user" and record["owner"] == self.name)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _etag(revision: int) -> str:
    return f'"{revision}"'


def _check_if_match(revision: int, if_match: str | None) -> None:
    check_if_match(_etag(revision), if_match)


def relative(href: str, base: str) -> str:
    """`{base}machineConfigs/x` (or /cimi/machineConfigs/x) -> machineConfigs/x."""
    return href[len(base):] if href.startswith(base) else href.removeprefix("/cimi/").lstrip("/")


def _hrefs(value, change: Callable[[str], str]):
    """`value` with every {"href": ...} inside it passed through `change`."""
    if isinstance(value, dict):
        return {k: (change(v) if k == "href" and isinstance(v, str) else _hrefs(v, change)) for k, v in value.items()}
    if isinstance(value, list):
        return [_hrefs(v, change) for v in value]
    return value


class GlobalCatalogue:
    def __init__(self, etcd: Etcd, prefix: str):
        self.etcd, self.prefix = etcd, prefix
        self._imported = False

    def _key(self, collection: str, id: str = "") -> str:
        return f"{self.prefix}catalog/{collection}/{id}"

    async def _record(self, collection: str, id: str) -> tuple[dict, int] | None:
        entry = await self.etcd.get(self._key(collection, id))
        return (json.loads(entry.value), entry.mod_revision) if entry else None

    async def _visible(self, caller: Caller, rtype: ResourceType, id: str) -> tuple[dict, int]:
        found = await self._record(rtype.collection, id)
        if found is None or not caller.may_see(found[0]):
            raise NotFound(f"there is no {rtype.name} '{id}'")
        return found

    async def _changeable(self, caller: Caller, rtype: ResourceType, id: str) -> tuple[dict, int]:
        record, revision = await self._visible(caller, rtype, id)
        if not caller.may_change(record):
            raise Forbidden(f"{rtype.name} '{id}' belongs to the provider; '{caller.name}' may use it, not change it")
        return record, revision

    # ---------------------------------------------------------------- import from a node's seed

    async def import_once(self, read_node: Callable[[str], Awaitable[list[dict] | None]]) -> bool:
        """Start the federation's catalogue from a node's (its seeded entries), once per federation:
        `read_node(collection)` lists a live node's entries with the front's hrefs (None: no node
        answers). True when done (now or before)."""
        if self._imported:
            return True
        marker = f"{self.prefix}catalog/.imported"
        if await self.etcd.get(marker) is not None:
            self._imported = True
            return True
        listed = {}
        for collection in GLOBAL:
            docs = await read_node(collection)
            if docs is None:
                return False
            listed[collection] = docs
        for collection, docs in listed.items():
            for doc in docs:
                id = doc["id"].rstrip("/").rsplit("/", 1)[-1]
                attrs = {k: v for k, v in doc.items() if k not in ("id", "resourceURI", "operations")}
                record = {"attrs": _hrefs(attrs, lambda h: relative(h, doc["id"][:-len(f"{collection}/{id}")])),
                          "owner": "", "public": True}
                await self.etcd.create(self._key(collection, id), json.dumps(record).encode())
        await self.etcd.create(marker, _now().encode())
        self._imported = True
        return True

    # ---------------------------------------------------------------- presentation

    def present(self, rtype: ResourceType, id: str, record: dict, caller: Caller, base: str) -> dict:
        href = f"{base}{rtype.collection}/{id}"
        attrs = _hrefs(record["attrs"], lambda h: h if "://" in h or h.startswith("/") else base + h)
        doc = {"resourceURI": rtype.type_uri, "id": href}
        for attr in rtype.attributes:
            if attr.name in attrs and not attr.write_only:
                doc[attr.name] = attrs[attr.name]
        ops = []
        if caller.may_change(record):
            ops += [{"rel": "edit", "href": href}, {"rel": "delete", "href": href}]
        if caller.role == "admin":
            for action in rtype.actions.values():
                if action.name in ("publish", "unpublish") and record["public"] == (action.name == "unpublish"):
                    ops.append({"rel": action.uri, "href": f"{href}/{action.name}"})
        if ops:
            doc["operations"] = ops
        return doc

    # ---------------------------------------------------------------- CRUD

    async def query(self, caller: Caller, rtype: ResourceType, base: str, filters: list[str], orderby: list[str],
                    first: int | None, last: int | None, select: set[str] | None) -> dict:
        entries, _revision = await self.etcd.get_prefix(self._key(rtype.collection))
        docs = []
        for entry in entries:
            record = json.loads(entry.value)
            if caller.may_see(record):
                docs.append(self.present(rtype, entry.key.rsplit("/", 1)[-1], record, caller, base))
        try:  # the nodes' own $filter compiler and SQLite, over the documents
            count, page = page_documents(docs, rtype.columns, filters=filters, orderby=orderby, first=first,
                                         last=last)
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        if select and "*" not in select:
            page = [_selected(rtype, doc, select - {"id"} | {"id"}) for doc in page]
        href = f"{base}{rtype.collection}"
        doc = {"resourceURI": rtype.collection_uri, "id": href, "count": count}
        if page:
            doc[rtype.items] = page
        if caller.role in ("admin", "user"):
            doc["operations"] = [{"rel": "add", "href": href}]
        return doc

    async def get(self, caller: Caller, rtype: ResourceType, id: str, base: str) -> tuple[dict, int]:
        record, revision = await self._visible(caller, rtype, id)
        return self.present(rtype, id, record, caller, base), revision

    async def create(self, caller: Caller, rtype: ResourceType, body: dict, base: str) -> tuple[dict, str, int]:
        _writer(caller)
        if rtype.create_wrapper:  # a Credential, from its CredentialTemplate (by value or by reference)
            wrapper = TYPES[rtype.create_wrapper]
            request = validate(wrapper, body, creating=True)
            require(wrapper, request)
            template = await self.resolve_value(caller, wrapper.attribute(rtype.template_attribute),
                                                request[rtype.template_attribute], base)
            attrs = {k: v for k, v in template.items() if k not in _PROVIDER_OWNED}
            attrs.update({k: request[k] for k in ("name", "description", "properties") if k in request})
            attrs = validate(rtype, attrs, creating=True)
        else:
            attrs = validate(rtype, body, creating=True)
        require(rtype, attrs)
        attrs = await self._stored_refs(caller, rtype, attrs, base)
        stamp = _now()
        id = uuid.uuid4().hex
        record = {"attrs": {**attrs, "created": stamp, "updated": stamp}, "owner": caller.name,
                  "public": caller.role == "admin"}
        if not await self.etcd.create(self._key(rtype.collection, id), json.dumps(record).encode()):
            raise Conflict(f"{rtype.name} '{id}' exists already; retry")
        _record, revision = await self._record(rtype.collection, id)
        return self.present(rtype, id, record, caller, base), f"{base}{rtype.collection}/{id}", revision

    async def update(self, caller: Caller, rtype: ResourceType, id: str, body: dict, select: set[str] | None,
                     if_match: str | None, base: str) -> tuple[dict, int]:
        _writer(caller)
        if select and "*" not in select:
            extra = set(body) - select - {"resourceURI", "id"}
            if extra:
                raise BadRequest(f"attributes not named in $select: {', '.join(sorted(extra))}")
        changes = validate(rtype, body, creating=False)
        record, revision = await self._changeable(caller, rtype, id)
        _check_if_match(revision, if_match)
        changes = await self._stored_refs(caller, rtype, changes, base)
        attrs = dict(record["attrs"])
        for attr in rtype.attributes:  # an attribute left out of a full (or $select-ed) update is removed
            if not attr.writable or (select and "*" not in select and attr.name not in select):
                continue
            if attr.name in changes:
                attrs[attr.name] = changes[attr.name]
            elif not attr.write_only:
                attrs.pop(attr.name, None)
        require(rtype, attrs)
        attrs["updated"] = _now()
        record = {**record, "attrs": attrs}
        if not await self.etcd.replace(self._key(rtype.collection, id), json.dumps(record).encode(), revision):
            raise PreconditionFailed(f"{rtype.name} '{id}' changed meanwhile; read it again and retry")
        _record, revision = await self._record(rtype.collection, id)
        return self.present(rtype, id, record, caller, base), revision

    async def delete(self, caller: Caller, rtype: ResourceType, id: str, if_match: str | None) -> None:
        _writer(caller)
        _record, revision = await self._changeable(caller, rtype, id)
        _check_if_match(revision, if_match)
        if not await self.etcd.delete_if(self._key(rtype.collection, id), revision):
            raise PreconditionFailed(f"{rtype.name} '{id}' changed meanwhile; read it again and retry")

    async def publish(self, caller: Caller, rtype: ResourceType, id: str, public: bool, if_match: str | None) -> None:
        if caller.role != "admin":
            raise Forbidden(f"only an admin may {'publish' if public else 'unpublish'} a {rtype.name}")
        record, revision = await self._changeable(caller, rtype, id)
        _check_if_match(revision, if_match)
        record = {**record, "public": public}
        if not await self.etcd.replace(self._key(rtype.collection, id), json.dumps(record).encode(), revision):
            raise PreconditionFailed(f"{rtype.name} '{id}' changed meanwhile; retry")

    # ---------------------------------------------------------------- references

    async def _stored_refs(self, caller: Caller, rtype: ResourceType, attrs: dict, base: str) -> dict:
        """References made relative; those to a global entry must name one the caller may see (a stored
        entry names another by href alone, as on a node). References to node resources (an image) are
        checked by the node a create is forwarded to."""
        out = dict(attrs)
        for attr in rtype.attributes:
            value = out.get(attr.name)
            if attr.type != "ref" or not isinstance(value, dict):
                continue
            if "href" not in value:
                if attr.target in TYPES:
                    out[attr.name] = await self._stored_refs(caller, TYPES[attr.target], value, base)
                continue
            href = relative(value["href"], base)
            collection, _, id = href.partition("/")
            if collection in GLOBAL:
                target = GLOBAL[collection]
                if attr.target and target.name != attr.target:
                    raise BadRequest(f"{attr.name}: '{value['href']}' does not name a {attr.target}")
                found = await self._record(collection, id)
                if found is None or not caller.may_see(found[0]):
                    raise BadRequest(f"{attr.name}: '{value['href']}' does not name an existing {target.name}")
                if len(value) > 1:
                    raise BadRequest(f"{attr.name}: a stored {rtype.name} refers to a {target.name} by href "
                                     "alone; give overrides when creating from it")
            out[attr.name] = {**value, "href": href}
        return out

    async def resolve_value(self, caller: Caller, attr, value: dict, base: str) -> dict:
        """A template attribute (by value, or a global entry by href with overrides) -> the attributes it
        stands for, with every global entry inside it by value too."""
        target = TYPES[attr.target]
        if "href" in value and relative(value["href"], base).partition("/")[0] in GLOBAL:
            href = relative(value["href"], base)
            collection, _, id = href.partition("/")
            found = await self._record(collection, id)
            if found is None or not caller.may_see(found[0]) or GLOBAL[collection] is not target:
                raise BadRequest(f"{attr.name}: '{value['href']}' does not name an existing {target.name}")
            resolved = {k: v for k, v in found[0]["attrs"].items() if k not in _PROVIDER_OWNED}
            for key, override in value.items():
                if key == "href":
                    continue
                if override is None:
                    resolved.pop(key, None)
                else:
                    resolved[key] = override
            value = resolved
        return await self.by_value(caller, target, value, base)

    async def by_value(self, caller: Caller, rtype: ResourceType, doc: dict, base: str) -> dict:
        """`doc` (of `rtype`, a request document or a structure) with every reference to a global entry
        replaced by that entry's attributes; other references kept, as absolute hrefs of the front."""
        out = dict(doc)
        for attr in rtype.attributes:
            value = out.get(attr.name)
            if attr.type == "ref" and isinstance(value, dict) and attr.target in TYPES:
                names_global = "href" in value and relative(value["href"], base).partition("/")[0] in GLOBAL
                if names_global and not attr.by_value:
                    raise BadRequest(f"{attr.name}: a node cannot take '{value['href']}' by reference")
                if names_global or "href" not in value:
                    out[attr.name] = await self.resolve_value(caller, attr, value, base)
                elif not value["href"].startswith(("http://", "https://", "/")):
                    out[attr.name] = {**value, "href": base + value["href"]}  # a stored relative href
            elif attr.type in ("array", "struct") and attr.target not in (None, REF) and attr.target in TYPES:
                inner = TYPES[attr.target]
                if isinstance(value, list):
                    out[attr.name] = [await self.by_value(caller, inner, v, base) if isinstance(v, dict) else v
                                      for v in value]
                elif isinstance(value, dict):
                    out[attr.name] = await self.by_value(caller, inner, value, base)
        return out


def _writer(caller: Caller) -> None:
    if caller.role not in ("admin", "user"):
        raise Forbidden(f"user '{caller.name}' may read but not change resources")


def _selected(rtype: ResourceType, doc: dict, select: set[str]) -> dict:
    kept = {"resourceURI": doc["resourceURI"]}
    for attr in rtype.attributes:
        if attr.name in select and attr.name in doc:
            kept[attr.name] = doc[attr.name]
    if "operations" in select and "operations" in doc:
        kept["operations"] = doc["operations"]
    return kept


# ------------------------------------------------------------------ HTTP

CATALOGUE = web.AppKey("catalogue", GlobalCatalogue)


def _respond(request: web.Request, status: int, doc: dict | None, rtype: ResourceType, item_type=None,
             headers: dict | None = None) -> web.Response:
    dialect = dialect_for(request.headers)
    fmt = response_format(request.query.get("$format"), request.headers.get("Accept"))
    if doc is None:
        return web.Response(status=status, headers=headers or {})
    return web.Response(status=status, body=dialect.render(fmt, doc, rtype, item_type),
                        headers={**(headers or {}), "Content-Type": dialect.media_types[fmt]})


def _names(request: web.Request, name: str) -> set[str] | None:
    values = request.query.getall(name, [])
    if not values:
        return None
    return {n.strip() for v in values for n in v.split(",") if n.strip()} or {"*"}


async def _body(request: web.Request) -> tuple[str | None, dict]:
    data = await request.read()
    if not data.strip():
        raise BadRequest("this request needs a body")
    return dialect_for(request.headers).parse(request_format(request.headers.get("Content-Type"), data), data)


async def serve_collection(request: web.Request, rtype: ResourceType, caller: Caller, base: str) -> web.Response:
    catalogue = request.app[CATALOGUE]
    response_format(request.query.get("$format"), request.headers.get("Accept"))  # a bad one fails first
    if request.method == "POST":
        _root, body = await _body(request)
        doc, location, revision = await catalogue.create(caller, rtype, body, base)
        return _respond(request, 201, doc, rtype, headers={"Location": location, "ETag": _etag(revision)})
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not allowed on a collection; use GET or POST", ["GET", "POST"])
    doc = await catalogue.query(caller, rtype, base, request.query.getall("$filter", []),
                                request.query.getall("$orderby", []), positive(request, "$first"),
                                positive(request, "$last"), _names(request, "$select"))
    return _respond(request, 200, doc, rtype, rtype)


async def serve_resource(request: web.Request, rtype: ResourceType, id: str, tail: str, caller: Caller,
                         base: str) -> web.Response:
    catalogue = request.app[CATALOGUE]
    response_format(request.query.get("$format"), request.headers.get("Accept"))
    if_match = request.headers.get("If-Match")
    if tail:
        operation = tail.strip("/")
        if request.method != "POST" or operation not in ("publish", "unpublish"):
            raise NotFound(f"{rtype.name} has no operation or sub-collection '{operation}'")
        data = await request.read()
        if data.strip():
            root, body = dialect_for(request.headers).parse(
                request_format(request.headers.get("Content-Type"), data), data)
            if root not in (None, ActionRequest.name):
                raise BadRequest(f"an operation takes an Action document, not a {root}")
            action = validate(ActionRequest, body, creating=True).get("action", "")
            if action.strip().rstrip("/").rsplit(":", 1)[-1].rsplit("/", 1)[-1] != operation:
                raise BadRequest(f"the Action document asks for '{action}' but was sent to the '{operation}' operation")
        await catalogue.publish(caller, rtype, id, operation == "publish", if_match)
        doc, revision = await catalogue.get(caller, rtype, id, base)
        return _respond(request, 200, doc, rtype, headers={"ETag": _etag(revision)})
    if request.method in ("GET", "HEAD"):
        doc, revision = await catalogue.get(caller, rtype, id, base)
        select = _names(request, "$select")
        if select and "*" not in select:
            doc = _selected(rtype, doc, select)
        return _respond(request, 200, doc, rtype, headers={"ETag": _etag(revision)})
    if request.method == "PUT":
        _root, body = await _body(request)
        doc, revision = await catalogue.update(caller, rtype, id, body, _names(request, "$select"), if_match, base)
        return _respond(request, 200, doc, rtype, headers={"ETag": _etag(revision)})
    if request.method == "DELETE":
        await catalogue.delete(caller, rtype, id, if_match)
        return web.Response(status=200)
    raise MethodNotAllowed(f"{request.method} is not allowed on a {rtype.name}; use GET, PUT or DELETE",
                           ["GET", "PUT", "DELETE"])


def global_type(collection: str) -> ResourceType | None:
    return GLOBAL.get(collection) if collection_type(collection) is not None else None
