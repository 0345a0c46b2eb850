"""`$expand` through a front. A node expands the references to what it holds; a reference it left as a
bare href (the resource is on another node, or is one the front itself answers) is filled in here, with
what the front serves at that href, as the node would have: every attribute but `id`, `resourceURI` and
`operations`, after the `href`. A reference that names nothing the federation has stays an href, as on
a node. Only references to resources of a collection expand (not the CloudEntryPoint), as on a node.

Front-level resources (answered by the front, not routed to one node) are read through `READERS`: a
module that serves some adds its reader there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import CimiError, Unavailable
from ..http.params import names
from ..model.registry import collection_type
from . import forward, shared
from .catalogue import CATALOGUE, GLOBAL
from .nodeattr import NODE

# (request, collection, id) -> the resource's JSON document with the front's hrefs, or None when the
# reader does not answer for it
Reader = Callable[[web.Request, str, str], Awaitable[dict | None]]


async def _global_entry(request: web.Request, collection: str, id: str) -> dict | None:
    """An entry of the global catalogue (in etcd), as the caller may see it."""
    if collection not in GLOBAL:
        return None
    try:
        doc, _revision = await request.app[CATALOGUE].get(forward.caller(request), GLOBAL[collection], id,
                                                          forward.front_base(request))
    except CimiError:
        return None
    return doc


READERS: tuple[Reader, ...] = (shared.read, _global_entry)


def wanted(request: web.Request) -> set[str] | None:
    return names(request, "$expand")


def _bare_refs(doc: dict, rtype, expand: set[str], base: str) -> list[tuple[str, str, str]]:
    """(attribute, collection, id) of each reference `expand` names that is an href alone."""
    found = []
    for attr in rtype.attributes:
        if attr.type != "ref" or ("*" not in expand and attr.name not in expand):
            continue
        ref = doc.get(attr.name)
        if not isinstance(ref, dict) or set(ref) != {"href"} or not isinstance(ref["href"], str) \
                or not ref["href"].startswith(base):
            continue
        collection, _, id = ref["href"][len(base):].partition("/")
        if collection_type(collection) is not None and id and "/" not in id:
            found.append((attr.name, collection, id))
    return found


async def expand_all(request: web.Request, docs: list[dict], rtype, expand: set[str]) -> None:
    """Fill in, in place, every bare reference `expand` names in `docs` (each read once)."""
    base = forward.front_base(request)
    refs = [(doc, *ref) for doc in docs for ref in _bare_refs(doc, rtype, expand, base)]
    targets = sorted({(collection, id) for _doc, _attr, collection, id in refs})
    if not targets:
        return
    read = await asyncio.gather(*(_read(request, c, i) for c, i in targets))
    found = dict(zip(targets, read))
    for doc, attr, collection, id in refs:
        target = found[(collection, id)]
        if target is not None:
            doc[attr] = {"href": doc[attr]["href"],
                         **{k: v for k, v in target.items() if k not in ("id", "resourceURI", "operations")}}


async def _read(request: web.Request, collection: str, id: str) -> dict | None:
    """What the front serves at {collection}/{id}, as JSON; None if nothing (or its node is down)."""
    for reader in READERS:
        doc = await reader(request, collection, id)
        if doc is not None:
            return doc
    directory = request.app[forward.DIRECTORY]
    try:
        owner = directory.owner(collection, id) or await forward.discover(request, collection, id)
    except CimiError:  # nowhere, or on no node that answers: left an href, as a node leaves it
        return None
    node = directory.live.get(owner)
    if node is None:
        return None
    try:
        status, _h, data = await forward.ask(request, node, "GET", f"/cimi/{collection}/{id}", None, None,
                                            _headers(request))
    except Unavailable:
        return None
    return json.loads(forward.rewrite(data, node, forward.front_base(request))) if status == 200 else None


def _headers(request: web.Request) -> dict[str, str]:
    """The client's identity goes along: a node shows only what that caller may see."""
    return {"Accept": "application/json",
            **{k: request.headers[k] for k in ("Authorization", "If-None-Match") if k in request.headers}}


async def resource(request: web.Request, node, name: str) -> web.Response:
    """A GET of one resource: asked of its node in JSON, completed (its cimid:node, and what $expand
    asks for), then rendered in the client's format."""
    forward.client_format(request)  # a bad $format or Accept fails before the node is asked
    base = forward.front_base(request)
    query = [(k, v) for k, v in request.query.items() if k not in ("$format", "$select")]
    selected = {n.strip() for v in request.query.getall("$select", []) for n in v.split(",") if n.strip()}
    if selected:  # the node does not know cimid:node
        query.append(("$select", ",".join(sorted(selected - {NODE}) or ["id"])))
    status, headers, data = await forward.ask(request, node, "GET", request.path, query, None, _headers(request))
    kept = {k: headers[k] for k in ("ETag", "WWW-Authenticate", "Retry-After") if k in headers}
    if status == 304:
        return web.Response(status=304, headers=kept)
    if status != 200:
        if status == 404:  # the index was stale: the node no longer has it
            await request.app[forward.DIRECTORY].forget(name, request.match_info["id"])
        response = forward.passed_on(request, status, forward.rewrite(data, node, base))
        response.headers.update(kept)
        return response
    doc = json.loads(forward.rewrite(data, node, base))
    if not selected or NODE in selected:
        doc[NODE] = node.name
    rtype = collection_type(name)
    if wanted(request):
        await expand_all(request, [doc], rtype, wanted(request))
    return forward.render(request, 200, doc, rtype, headers=kept)


async def around(request: web.Request, serve: Callable[[web.Request], Awaitable[web.StreamResponse]],
                 rtype, collection: bool) -> web.StreamResponse:
    """A GET with $expand of what the front answers itself (the global catalogue): its answer, asked in
    JSON, with the references filled in, in the client's format."""
    forward.client_format(request)  # a bad $format or Accept fails first
    answer = await serve(request.clone(rel_url=request.rel_url.update_query({"$format": "json"})))
    if answer.status != 200 or not isinstance(answer, web.Response) or answer.body is None:
        return answer
    doc = json.loads(answer.body)
    items = doc.get(rtype.items, []) if collection else [doc]
    await expand_all(request, items, rtype, wanted(request))
    return forward.render(request, 200, doc, rtype, rtype if collection else None,
                         headers={k: answer.headers[k] for k in ("ETag",) if k in answer.headers})
