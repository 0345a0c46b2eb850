"""Routes, middleware (logging, auth, limits, errors) and rendering: the only place that speaks HTTP."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..config import Config
from ..errors import BadRequest, CimiError, InternalError, MethodNotAllowed, NotFound, PayloadTooLarge
from ..model import TYPES
from ..model.resources import MACHINE_PARTS
from ..plugins import Drivers, plugin_manager
from ..service.metadata import entry_point
from ..service.presentation import Context, QueryParams, Result, now, select_attributes
from ..service.provider import Provider
from ..store.db import Store
from ..wire import json_dialect
from . import negotiation
from .auth import Authenticator

log = logging.getLogger("cimid.http")
PROVIDER = web.AppKey("provider", Provider)
AUTH = web.AppKey("auth", Authenticator)
CONFIG = web.AppKey("config", Config)
RENDERINGS = web.AppKey("renderings", object)
FORMAT = web.RequestKey("format", str)  # the negotiated response format, json or xml
USER = web.RequestKey("user", str)
ROLE = web.RequestKey("role", str)


# ---------------------------------------------------------------- rendering

class RenderingCache:
    """Rendered bodies of single resources, keyed by what makes them differ (version included), so a
    changed resource simply gets a new key; the oldest entries go first."""

    def __init__(self, size: int = 2048):
        self.size, self.bodies = size, {}

    def get(self, key):
        return self.bodies.get(key)

    def put(self, key, body: bytes) -> None:
        if len(self.bodies) >= self.size:
            del self.bodies[next(iter(self.bodies))]
        self.bodies[key] = body


def _render(fmt: str, result: Result) -> bytes:
    doc = result.document()
    if fmt == negotiation.XML:
        from ..wire import xml_dialect  # lxml is loaded only once someone speaks XML
        if result.item_type is not None:
            return xml_dialect.render_collection(doc, result.item_type)
        return xml_dialect.render(doc, result.rtype)
    return json_dialect.render(doc)


def _respond(request: web.Request, result: Result) -> web.Response:
    fmt = request[FORMAT]
    headers = dict(result.headers)
    if result.doc is None and result.make_doc is None:
        return web.Response(status=result.status, headers=headers)
    if result.cache_key is not None:
        cache = request.app[RENDERINGS]
        key = (*result.cache_key, fmt)
        body = cache.get(key)
        if body is None:
            body = _render(fmt, result)
            cache.put(key, body)
    else:
        body = _render(fmt, result)
    headers["Content-Type"] = "application/xml" if fmt == negotiation.XML else json_dialect.MEDIA_TYPE
    return web.Response(status=result.status, body=body, headers=headers)


def _error_response(request: web.Request, error: CimiError) -> web.Response:
    """Every error is a CIMI Job with an empty id, in the negotiated format (JSON if that failed)."""
    job = {
        "resourceURI": TYPES["Job"].type_uri, "id": "", "name": error.title, "state": "FAILED",
        "targetResource": {"href": str(request.url.with_query(None))},  # the resource, not the query
        "action": request.method,
        "returnCode": error.status, "progress": 100, "statusMessage": error.message,
        "timeOfStatusChange": now(),
    }
    request.setdefault(FORMAT, negotiation.JSON)
    return _respond(request, Result(error.status, TYPES["Job"], job, headers=error.headers))


@web.middleware
async def handle_errors(request: web.Request, handler):
    started = time.perf_counter()
    user = "-"
    try:
        try:
            request[FORMAT] = negotiation.response_format(_first_query(request, "$format"),
                                                            request.headers.get("Accept"))
            user, role = request.app[AUTH].authenticate(request.headers.get("Authorization"))
            request[USER], request[ROLE] = user, role
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"the body is larger than the {request.app[CONFIG]['server']['max_body_bytes']} "
                                  "bytes this provider accepts") from None
        except web.HTTPMethodNotAllowed as exc:
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}",
                                   sorted(exc.allowed_methods)) from None
        except web.HTTPNotFound:
            raise NotFound(f"nothing is served at {request.path}") from None
    except CimiError as exc:
        response = _error_response(request, exc)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path_qs)
        response = _error_response(request, InternalError(
            "cimid hit an unexpected error; it is logged on the server. The request may be retried."))
    if request.app[CONFIG]["server"]["log_requests"]:
        log.info("%s %s %d %.1fms user=%s", request.method, request.path_qs, response.status,
                 (time.perf_counter() - started) * 1000, user)
    return response


# ---------------------------------------------------------------- request helpers

def _first_query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    return values[0] if values else None  # later duplicates are ignored (DSP0263 §4.1.6)


def _names(request: web.Request, name: str) -> set[str] | None:
    values = request.query.getall(name, [])
    if not values:
        return None
    names = {n.strip() for v in values for n in v.split(",") if n.strip()}
    return names or {"*"}


def _positive(request: web.Request, name: str) -> int | None:
    value = _first_query(request, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a positive integer, not '{value}'") from None
    if number < 1:
        raise BadRequest(f"{name} must be a positive integer, not '{value}'")
    return number


def _params(request: web.Request) -> QueryParams:
    return QueryParams(
        filters=request.query.getall("$filter", []),
        select=_names(request, "$select"),
        expand=_names(request, "$expand"),
        orderby=request.query.getall("$orderby", []),
        first=_positive(request, "$first"),
        last=_positive(request, "$last"),
    )


def _context(request: web.Request) -> Context:
    base = request.app[CONFIG]["server"]["public_base_url"]
    if base:
        base = base.rstrip("/") + "/cimi/"
    else:
        base = f"{request.scheme}://{request.host}/cimi/"
    return Context(base=base, role=request[ROLE], user=request[USER])


async def _body(request: web.Request, optional: bool = False) -> tuple[str | None, dict]:
    limit = request.app[CONFIG]["server"]["max_body_bytes"]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than the {limit} bytes this provider accepts")
    body = await request.read()
    if not body.strip():
        if optional:
            return None, {}
        raise BadRequest("this request needs a body")
    fmt = negotiation.request_format(request.headers.get("Content-Type"), body)
    if fmt == negotiation.XML:
        from ..wire import xml_dialect
        return xml_dialect.parse(body)
    return json_dialect.parse(body)


# ---------------------------------------------------------------- handlers

def _allow(request: web.Request, methods: list[str], what: str) -> None:
    if "GET" in methods:
        methods = [*methods, "HEAD"]  # aiohttp sends HEAD answers without their body
    if request.method not in methods:
        raise MethodNotAllowed(f"{request.method} is not allowed on {what}; use {', '.join(methods)}", methods)


async def cloud_entry_point(request: web.Request) -> web.Response:
    _allow(request, ["GET"], "the CloudEntryPoint")
    provider = request.app[PROVIDER]
    doc = entry_point(provider, _context(request))
    doc = select_attributes(doc, TYPES["CloudEntryPoint"], _params(request).select)
    return _respond(request, Result(200, TYPES["CloudEntryPoint"], doc))


async def collection(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    name = request.match_info["collection"]
    ctx = _context(request)
    _allow(request, ["GET", "POST"], "a collection")
    if request.method in ("GET", "HEAD"):
        return _respond(request, await provider.query(ctx, name, _params(request)))
    if name != "resourceMetadata":
        provider.type_of(name)  # 404 before reading the body of a request to nowhere
    root, body = await _body(request)
    return _respond(request, await provider.create(ctx, name, root, body))


async def resource(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    name, id = request.match_info["collection"], request.match_info["id"]
    ctx = _context(request)
    _allow(request, ["GET", "PUT", "DELETE"], "a resource")
    if request.method in ("GET", "HEAD"):
        return _respond(request, await provider.get(ctx, name, id, _params(request)))
    if_match = request.headers.get("If-Match")
    if request.method == "DELETE":
        return _respond(request, await provider.delete(ctx, name, id, if_match))
    _, body = await _body(request)
    return _respond(request, await provider.update(ctx, name, id, body, _names(request, "$select"), if_match))


async def operation(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    name, id, op = request.match_info["collection"], request.match_info["id"], request.match_info["op"]
    ctx = _context(request)
    if name == "machines" and op in MACHINE_PARTS:
        _allow(request, ["GET"], f"a Machine's {op}")
        provider.type_of("machines")
        return _respond(request, await provider.query(ctx, op, _params(request), parent=id))
    if name == "machines" and op == "console":  # provider extension: the serial console, as text
        _allow(request, ["GET"], "a Machine's console")
        provider.type_of("machines")
        text = await provider.machines.console(ctx, id, _positive(request, "bytes") or 65536)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")
    if request.method != "POST":
        raise MethodNotAllowed(f"operations take POST, not {request.method}", ["POST"])
    root, body = await _body(request, optional=True)
    if root not in (None, "Action", "MachineImage"):
        raise BadRequest(f"an operation takes an Action document, not a {root}")
    body = body or {"action": op}  # an empty body asks for the operation its URL names
    return _respond(request, await provider.action(ctx, name, id, op, body, request.headers.get("If-Match"),
                                                   root))


async def machine_part(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER]
    part = request.match_info["part"]
    _allow(request, ["GET"], f"an item of a Machine's {part}")
    provider.type_of("machines")
    return _respond(request, await provider.get_part(_context(request), request.match_info["id"], part,
                                                     request.match_info["item"], _params(request)))


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"nothing is served at {request.path}; start at /cimi/cloudEntryPoint")


# ---------------------------------------------------------------- application

def make_app(config: Config, extra_plugins: tuple = ()) -> web.Application:
    pm = plugin_manager(extra_plugins)
    drivers = Drivers.load(pm, config)
    provider = Provider(config, Store(config.database, config["store"]["synchronous"].upper()), drivers)
    app = web.Application(middlewares=[handle_errors], client_max_size=config["server"]["max_body_bytes"])
    app[PROVIDER] = provider
    app[CONFIG] = config
    app[AUTH] = Authenticator(config["auth"]["users"])
    app[RENDERINGS] = RenderingCache()
    app.router.add_route("*", "/cimi/cloudEntryPoint", cloud_entry_point)
    app.router.add_route("*", "/cimi/{collection}", collection)
    app.router.add_route("*", "/cimi/{collection}/{id}", resource)
    app.router.add_route("*", "/cimi/{collection}/{id}/{op}", operation)
    app.router.add_route("*", "/cimi/machines/{id}/{part}/{item}", machine_part)
    app.router.add_route("*", "/{tail:.*}", not_found)

    async def on_startup(_app):
        await provider.start()

    async def on_cleanup(_app):
        await provider.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
