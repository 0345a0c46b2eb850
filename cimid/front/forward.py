"""Talking to the nodes, for every part of the front (app.py's routes, expand.py, events.py,
shared.py): the application keys they share, asking one node (`ask`), forwarding the client's request
to one (`forward`), rewriting node addresses to the front's, the live nodes, and answering in the
client's format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from ..cluster.node import FRONT_HEADER
from ..errors import NotFound, Unavailable
from ..http.negotiation import JSON, XML, response_format
from ..wire import dialect_for
from .catalogue import Caller
from .directory import Directory, NodeRecord
from .identity import CALLER, identity_headers
from .nodeclient import NodeClient, NodeHttpError
from .placement import collection_level

DIRECTORY = web.AppKey("directory", Directory)
SETTINGS = web.AppKey("settings", dict)
SESSION = web.AppKey("session", aiohttp.ClientSession)
NODE_CLIENT = web.AppKey("node_client", NodeClient)

# A create whose body the front rewrote (as JSON) names its new Content-Type here.
BODY_TYPE = web.RequestKey("body_type", str)

# Request headers a node needs to answer as it would answer the client; response headers the client needs.
REQUEST_HEADERS = ("Content-Type", "Accept", "If-Match", "If-None-Match", "Idempotency-Key", "Authorization",
                    "CIMI-Specification-Version")
RESPONSE_HEADERS = ("Content-Type", "Location", "CIMI-Job-URI", "ETag", "Retry-After", "Allow",
                     "WWW-Authenticate", "Idempotent-Replayed", "Warning")


def front_base(request: web.Request) -> str:
    configured = request.app[SETTINGS]["public_base_url"]
    return (configured.rstrip("/") if configured else f"{request.scheme}://{request.host}") + "/cimi/"


def client_format(request: web.Request) -> str:
    return response_format(request.query.get("$format"), request.headers.get("Accept"))


def render(request: web.Request, status: int, doc: dict, rtype, item_type=None, headers=None) -> web.Response:
    dialect, fmt = dialect_for(request.headers), client_format(request)
    return web.Response(status=status, body=dialect.render(fmt, doc, rtype, item_type),
                        headers={**(headers or {}), "Content-Type": dialect.media_types[fmt]})


def rewrite(data: bytes | str, node: NodeRecord, base: str):
    """The node's base URL, wherever it appears, becomes the front's."""
    if isinstance(data, str):
        return data.replace(node.base, base)
    return data.replace(node.base.encode(), base.encode())


async def ask(request: web.Request, node: NodeRecord, method: str, path: str, query, body: bytes | None,
               headers: dict[str, str], raw: bool = False) -> tuple[int, Mapping[str, str], bytes]:
    """One request to `node`; (status, headers, body) as the node sent them. Unavailable if it does not
    answer within front.node_timeout. `raw`: `path` is the client's, already encoded, query included."""
    settings = request.app[SETTINGS]
    forwarded = identity_headers(request)
    if forwarded:  # the front checked who asks: the node learns it from the header, not the credentials
        headers = {**forwarded, **{k: v for k, v in headers.items() if k != "Authorization"}}
    if method == "GET":  # most of what a front asks: the lean client
        target = path if raw else str(URL(path).with_query(query)) if query else path
        try:
            return await request.app[NODE_CLIENT].get(node.url, target, {**headers, FRONT_HEADER: settings["name"]},
                                                      settings["node_timeout"])
        except (NodeHttpError, TimeoutError, OSError, ValueError) as exc:
            raise Unavailable(f"node {node.name} did not answer ({type(exc).__name__}); retry later",
                              headers={"Retry-After": "5"}) from None
    url = URL(f"{node.url}{path}", encoded=raw)
    try:
        async with request.app[SESSION].request(method, url, params=query, data=body,
                                                headers={**headers, FRONT_HEADER: settings["name"]},
                                                timeout=settings["timeout"], allow_redirects=False) as reply:
            return reply.status, reply.headers, await reply.read()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise Unavailable(f"node {node.name} did not answer ({type(exc).__name__}); retry later",
                          headers={"Retry-After": "5"}) from None


async def forward(request: web.Request, node: NodeRecord, body: bytes | None = None,
                   extra_headers: dict[str, str] | None = None) -> tuple[int, web.Response]:
    """The client's request, as it came (or with `body`), to `node`; its answer with every node address
    rewritten."""
    base = front_base(request)
    if body is None and request.can_read_body:
        body = await request.read()
    if body:  # the node sees its own hrefs, as if the client had asked it directly
        body = body.replace(base.encode(), node.base.encode())
    headers = {k: request.headers[k] for k in REQUEST_HEADERS if k in request.headers}
    if BODY_TYPE in request:
        headers["Content-Type"] = request[BODY_TYPE]
    status, reply_headers, data = await ask(request, node, request.method, request.raw_path, None, body,
                                             {**headers, **(extra_headers or {})}, raw=True)
    out = {k: rewrite(reply_headers[k], node, base) for k in RESPONSE_HEADERS if k in reply_headers}
    return status, web.Response(status=status, body=rewrite(data, node, base) if data else None, headers=out)


def live(request: web.Request, level: int = 1) -> list[NodeRecord]:
    """The live nodes that serve requests of api_level `level`, by name."""
    return sorted((n for n in request.app[DIRECTORY].live.values() if n.api_level >= level), key=lambda n: n.name)


def passed_on(request: web.Request, status: int, data: bytes) -> web.Response:
    """A node's JSON error document, in the client's format."""
    dialect = dialect_for(request.headers)
    fmt = client_format(request)
    if fmt == JSON:
        return web.Response(status=status, body=data, headers={"Content-Type": dialect.media_types[JSON]})
    return web.Response(status=status, body=dialect.render(XML, json.loads(data), dialect.error_type),
                        headers={"Content-Type": dialect.media_types[XML]})


def caller(request: web.Request) -> Caller:
    return request.get(CALLER) or Caller()


async def discover(request: web.Request, name: str, id: str) -> str:
    """Who owns a resource the index does not know: the live node that has it (then indexed)."""
    directory = request.app[DIRECTORY]
    nodes = live(request, collection_level(name))

    async def has(node: NodeRecord) -> bool:
        status, _h, _d = await ask(request, node, "GET", f"/cimi/{name}/{id}", {"$select": "id"}, None,
                                    {"Accept": "application/json"})
        return status == 200

    answers = await asyncio.gather(*(has(n) for n in nodes), return_exceptions=True)
    for node, answer in zip(nodes, answers):
        if answer is True:
            await directory.remember(name, id, node.name)
            return node.name
    silent = [n.name for n, a in zip(nodes, answers) if isinstance(a, BaseException)] + directory.down()
    if silent:
        raise Unavailable(f"{name}/{id} is not on any node that answers, and node(s) {', '.join(sorted(silent))} "
                          "are unavailable; retry later", headers={"Retry-After": "5"})
    raise NotFound(f"no {name}/{id} in this federation")
