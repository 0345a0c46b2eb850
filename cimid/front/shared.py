"""Resources every node has under the same id: a front cannot route them to one node by id.

What every node answers alike, derived from the registry (ResourceMetadata, the collection and each
item), is asked of any one live node. The provider's own EventLog, which each node keeps with its own
Events, is listed once in the EventLogs (the first node's item) and answered for the whole federation:

- The resource itself: one document, its counts (the log's `summary`) summed over the live nodes, the
  earliest `created` and the latest `updated`. A change (an edit of the log) goes to every live node,
  and is refused with 503, before any node is asked, while a known node is down (it would miss it).
- Its sub-collections (the log's Events): merged from every node as any collection is.
- An item of one (an Event by id): asked of every node; the one that has it answers.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from ..errors import CimiError, NotFound, Unavailable
from ..model.events import PROVIDER_LOG
from ..model.registry import collection_type, sub_collection
from . import forward

SHARED = {("eventLogs", PROVIDER_LOG)}
ALIKE = {"resourceMetadata"}


def is_shared(collection: str, id: str | None = None) -> bool:
    """Whether {collection}/{id} (or the collection, with no id) is not on one node alone."""
    return collection in ALIKE or (collection, id) in SHARED


def once_only(collection: str) -> list[tuple[str, str]]:
    """The $filter that leaves out of a collection what every node has (the provider's EventLog): asked of
    every node but the first, so the merged list and its count hold it once."""
    ids = sorted(id for c, id in SHARED if c == collection)
    return [("$filter", " and ".join(f"id!='{id}'" for id in ids))] if ids else []


async def from_any_node(request: web.Request) -> web.Response:
    """What every node answers alike, from the first live node that answers."""
    for node in _nodes(request):
        try:
            return (await forward.forward(request, node))[1]
        except Unavailable:
            continue
    raise Unavailable("no node of the federation answers; retry later", headers={"Retry-After": "5"})


def listed_under(request: web.Request, name: str, id: str, tail: str):
    """(item type, path) when the request reads a sub-collection of a shared resource (the provider's
    EventLog's events), which the front merges from every node as any collection; else None."""
    segments = [s for s in tail.split("/") if s]
    if name in ALIKE or len(segments) != 1 or request.method not in ("GET", "HEAD"):
        return None
    item_type = sub_collection(collection_type(name), segments[0])
    return None if item_type is None else (item_type, f"{name}/{id}/{segments[0]}")


async def resource(request: web.Request, name: str, id: str, tail: str) -> web.Response:
    """A shared resource, or what is under it but a sub-collection (see listed_under)."""
    if name in ALIKE:
        return await from_any_node(request)
    if not [s for s in tail.split("/") if s]:
        if request.method in ("GET", "HEAD"):
            return await _combined(request, name, id)
        return await _everywhere(request)
    return await _whoever_has_it(request)


def _nodes(request: web.Request):
    nodes = forward.live(request)
    if not nodes:
        raise Unavailable("no node of the federation answers; retry later", headers={"Retry-After": "5"})
    return nodes


async def read(request: web.Request, collection: str, id: str) -> dict | None:
    """The shared resource as JSON (for $expand elsewhere); None if `collection`/`id` is not one."""
    if not is_shared(collection, id):
        return None
    try:
        doc, _missing = await _combined_doc(request, collection, id, [])
    except CimiError:
        return None
    return doc


async def _combined(request: web.Request, name: str, id: str) -> web.Response:
    forward.client_format(request)  # a bad $format or Accept fails before any node is asked
    query = [(k, v) for k, v in request.query.items() if k != "$format"]
    doc, missing = await _combined_doc(request, name, id, query)
    if isinstance(doc, web.Response):
        return doc
    headers = {}
    if missing:
        headers["Warning"] = f'199 cimid "node(s) {", ".join(sorted(missing))} unavailable; results partial"'
    return forward.render(request, 200, doc, collection_type(name), headers=headers)


async def _combined_doc(request: web.Request, name: str, id: str, query) -> tuple[dict | web.Response, list]:
    """(the document, the nodes that did not answer), or (a node's refusal, [])."""
    base, nodes = forward.front_base(request), _nodes(request)

    async def ask(node):
        status, _h, data = await forward.ask(request, node, "GET", f"/cimi/{name}/{id}", query, None,
                                            {"Accept": "application/json"})
        return status, forward.rewrite(data, node, base)

    answers = await asyncio.gather(*(ask(n) for n in nodes), return_exceptions=True)
    docs, missing = [], list(request.app[forward.DIRECTORY].down())
    for node, answer in zip(nodes, answers):
        if isinstance(answer, Unavailable):
            missing.append(node.name)
        elif isinstance(answer, BaseException):
            raise answer
        elif answer[0] == 200:
            docs.append(json.loads(answer[1]))
        elif answer[0] != 404:  # a refusal of the request (a bad $select): the nodes judge it alike
            return forward.passed_on(request, *answer), []
    if not docs:
        if missing:
            raise Unavailable(f"{name}/{id} is on no node that answers, and node(s) {', '.join(sorted(missing))} "
                              "are unavailable; retry later", headers={"Retry-After": "5"})
        raise NotFound(f"no {name}/{id} in this federation")
    doc = docs[0]
    for other in docs[1:]:
        for key, value in other.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict) and "href" not in value:
                for k, v in value.items():  # a struct of counts (the summary)
                    if isinstance(v, int) and isinstance(doc[key].get(k), int):
                        doc[key][k] += v
            elif key == "created" and isinstance(value, str):
                doc[key] = min(doc[key], value)
            elif key == "updated" and isinstance(value, str):
                doc[key] = max(doc[key], value)
    return doc, missing


async def _everywhere(request: web.Request) -> web.Response:
    """A change of the shared resource, made on every node; refused while one is down."""
    down = request.app[forward.DIRECTORY].down()
    if down:
        raise Unavailable(f"node(s) {', '.join(down)} unavailable: {request.path} is on every node, and a change "
                          "now would miss them; retry later", headers={"Retry-After": "5"})
    body = await request.read() if request.can_read_body else None
    answers = [await forward.forward(request, node, body) for node in _nodes(request)]
    for status, response in answers:
        if status >= 300:
            return response
    return answers[0][1]


async def _whoever_has_it(request: web.Request) -> web.Response:
    """Something under the shared resource that only one node has (an Event of the provider's log)."""
    nodes = _nodes(request)
    if request.method not in ("GET", "HEAD"):
        return await _everywhere(request)
    answers = await asyncio.gather(*(forward.forward(request, n) for n in nodes), return_exceptions=True)
    refusal = None
    for answer in answers:
        if isinstance(answer, BaseException):
            if not isinstance(answer, Unavailable):
                raise answer
        elif answer[0] == 200:
            return answer[1]
        elif answer[0] != 404:
            refusal = refusal or answer[1]
    if refusal is not None:
        return refusal
    silent = [n.name for n, a in zip(nodes, answers) if isinstance(a, Unavailable)] + \
        request.app[forward.DIRECTORY].down()
    if silent:
        raise Unavailable(f"{request.path} is on no node that answers, and node(s) {', '.join(sorted(silent))} "
                          "are unavailable; retry later", headers={"Retry-After": "5"})
    raise NotFound(f"nothing at {request.path} in this federation")
