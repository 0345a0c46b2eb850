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

# cimid.front.app imports this module to register it, so this module reaches app (routing, asking nodes,
# rendering) where it is used, never at load: no import cycle.

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
    from . import app as front
    for node in _nodes(request):
        try:
            return (await front._forward(request, node))[1]
        except Unavailable:
            continue
    raise Unavailable("no node of the federation answers; retry later", headers={"Retry-After": "5"})


async def resource(request: web.Request, name: str, id: str, tail: str) -> web.Response:
    from . import app as front
    if name in ALIKE:
        return await from_any_node(request)
    segments = [s for s in tail.split("/") if s]
    if not segments:
        if request.method in ("GET", "HEAD"):
            return await _combined(request, name, id)
        return await _everywhere(request)
    rtype = collection_type(name)
    item_type = sub_collection(rtype, segments[0])
    if item_type is not None and len(segments) == 1 and request.method in ("GET", "HEAD"):
        return await front._query(request, item_type.collection, item_type, f"{name}/{id}/{segments[0]}")
    return await _whoever_has_it(request)


def _nodes(request: web.Request):
    from . import app as front
    nodes = front._live(request)
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
    from . import app as front
    front._format(request)  # a bad $format or Accept fails before any node is asked
    query = [(k, v) for k, v in request.query.items() if k != "$format"]
    doc, missing = await _combined_doc(request, name, id, query)
    if isinstance(doc, web.Response):
        return doc
    headers = {}
    if missing:
        headers["Warning"] = f'199 cimid "node(s) {", ".join(sorted(missing))} unavailable; results partial"'
    return front._render(request, 200, doc, collection_type(name), headers=headers)


async def _combined_doc(request: web.Request, name: str, id: str, query) -> tuple[dict | web.Response, list]:
    """(the document, the nodes that did not answer), or (a node's refusal, [])."""
    from . import app as front
    base, nodes = front._front_base(request), _nodes(request)

    async def ask(node):
        status, _h, data = await front._ask(request, node, "GET", f"/cimi/{name}/{id}", query, None,
                                            {"Accept": "application/json"})
        return status, front._rewrite(data, node, base)

    answers = await asyncio.gather(*(ask(n) for n in nodes), return_exceptions=True)
    docs, missing = [], list(request.app[front.DIRECTORY].down())
    for node, answer in zip(nodes, answers):
        if isinstance(answer, Unavailable):
            missing.append(node.name)
        elif isinstance(answer, BaseException):
            raise answer
        elif answer[0] == 200:
            docs.append(json.loads(answer[1]))
        elif answer[0] != 404:  # a refusal of the request (a bad $select): the nodes judge it alike
            return front._passed_on(request, *answer), []
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
    from . import app as front
    down = request.app[front.DIRECTORY].down()
    if down:
        raise Unavailable(f"node(s) {', '.join(down)} unavailable: {request.path} is on every node, and a change "
                          "now would miss them; retry later", headers={"Retry-After": "5"})
    body = await request.read() if request.can_read_body else None
    answers = [await front._forward(request, node, body) for node in _nodes(request)]
    for status, response in answers:
        if status >= 300:
            return response
    return answers[0][1]


async def _whoever_has_it(request: web.Request) -> web.Response:
    """Something under the shared resource that only one node has (an Event of the provider's log)."""
    from . import app as front
    nodes = _nodes(request)
    if request.method not in ("GET", "HEAD"):
        return await _everywhere(request)
    answers = await asyncio.gather(*(front._forward(request, n) for n in nodes), return_exceptions=True)
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
        request.app[front.DIRECTORY].down()
    if silent:
        raise Unavailable(f"{request.path} is on no node that answers, and node(s) {', '.join(sorted(silent))} "
                          "are unavailable; retry later", headers={"Retry-After": "5"})
    raise NotFound(f"nothing at {request.path} in this federation")
