"""The routes: every collection, resource, operation and sub-collection the registry declares, under
/cimi/, dispatched to the provider. The only module that maps URLs and methods to service calls."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..errors import MethodNotAllowed, NotFound
from ..model import Extension
from ..model.registry import CloudEntryPoint
from ..service.provider import Provider
from ..wire import prometheus
from .auth import Authenticator
from .keys import AUTH, CONFIG, PROVIDER, RENDERINGS
from .middleware import handle_errors
from .params import body, context, names, query_params
from .render import RenderingCache, respond
from .stream import send_events


def _allow(request: web.Request, methods: list[str], what: str) -> None:
    if "GET" in methods:
        methods = [*methods, "HEAD"]  # aiohttp sends HEAD answers without their body
    if request.method not in methods:
        raise MethodNotAllowed(f"{request.method} is not allowed on {what}; use {', '.join(methods)}", methods)


def _reading(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD")


async def cloud_entry_point(request: web.Request) -> web.Response:
    _allow(request, ["GET"], "the CloudEntryPoint")
    return respond(request, await request.app[PROVIDER].entry_point(context(request), query_params(request)))


async def entry_point_extension(request: web.Request) -> web.StreamResponse:
    """/cimi/{name} of an extension on the CloudEntryPoint: a stream (the live Events)."""
    name = request.match_info["extension"]
    _allow(request, ["GET"], name)
    result = await request.app[PROVIDER].entry_point_extension(
        context(request), name, query_params(request), request.headers.get("Last-Event-ID"))
    return await send_events(request, result) if result.stream is not None else respond(request, result)


async def collection(request: web.Request) -> web.Response:
    """GET lists, POST creates."""
    provider = request.app[PROVIDER]
    rtype = provider.type_of(request.match_info["collection"])  # 404 for nowhere, whatever the method
    _allow(request, ["GET", "POST"], "a collection")
    ctx = context(request)
    if _reading(request):
        return respond(request, await provider.query(ctx, rtype, query_params(request)))
    root, doc = await body(request)
    return respond(request, await provider.create(ctx, rtype, root, doc))


async def resource(request: web.Request) -> web.Response:
    """GET reads, PUT updates, DELETE deletes."""
    provider = request.app[PROVIDER]
    rtype = provider.type_of(request.match_info["collection"])
    _allow(request, ["GET", "PUT", "DELETE"], "a resource")
    id, ctx = request.match_info["id"], context(request)
    if _reading(request):
        return respond(request, await provider.get(ctx, rtype, id, query_params(request)))
    if_match = request.headers.get("If-Match")
    if request.method == "DELETE":
        return respond(request, await provider.delete(ctx, rtype, id, if_match))
    root, doc = await body(request)
    return respond(request, await provider.update(ctx, rtype, id, root, doc, names(request, "$select"), if_match))


async def operation(request: web.Request) -> web.Response:
    """{collection}/{id}/{segment}: a sub-collection (GET lists, POST adds), a provider extension (GET),
    or an action (POST an Action document)."""
    provider = request.app[PROVIDER]
    rtype = provider.type_of(request.match_info["collection"])
    id, segment, ctx = request.match_info["id"], request.match_info["op"], context(request)
    target = provider.operation_of(rtype, segment)
    if isinstance(target, Extension):
        _allow(request, ["GET"], f"a {rtype.name}'s {segment}")
        return respond(request, await provider.extension(ctx, rtype, id, target, dict(request.query)))
    if target is not None:  # a sub-collection
        _allow(request, ["GET", "POST"], f"a {rtype.name}'s {segment}")
        if _reading(request):
            return respond(request, await provider.query(ctx, target, query_params(request), parent=(rtype, id)))
        root, doc = await body(request)
        return respond(request, await provider.create(ctx, target, root, doc, parent=(rtype, id)))
    if request.method != "POST":
        raise MethodNotAllowed(f"operations take POST, not {request.method}", ["POST"])
    root, doc = await body(request, optional=True)
    return respond(request, await provider.action(ctx, rtype, id, segment, root, doc,
                                                  request.headers.get("If-Match")))


async def sub_resource(request: web.Request) -> web.Response:
    """{collection}/{id}/{sub}/{item}: one item of a sub-collection; GET reads, DELETE removes (detaches)."""
    provider = request.app[PROVIDER]
    rtype = provider.type_of(request.match_info["collection"])
    part = provider.part_type(rtype, request.match_info["sub"])
    _allow(request, ["GET", "DELETE"], f"an item of a {rtype.name}'s {part.collection}")
    parent, item, ctx = (rtype, request.match_info["id"]), request.match_info["item"], context(request)
    if _reading(request):
        return respond(request, await provider.get(ctx, part, item, query_params(request), parent=parent))
    return respond(request, await provider.delete(ctx, part, item, request.headers.get("If-Match"), parent=parent))


async def nested(request: web.Request) -> web.Response:
    """{collection}/{id}/{sub}/{item}/{part}[/{part_item}]: the sub-collection of a sub-collection's item (a
    machine interface's addresses), read only."""
    provider = request.app[PROVIDER]
    rtype = provider.type_of(request.match_info["collection"])
    owner = provider.part_type(rtype, request.match_info["sub"])
    part = provider.part_type(owner, request.match_info["part"])
    _allow(request, ["GET"], f"a {owner.name}'s {part.collection}")
    parent, ctx = (owner, f"{request.match_info['id']}/{request.match_info['item']}"), context(request)
    if "part_item" in request.match_info:
        return respond(request, await provider.get(ctx, part, request.match_info["part_item"], query_params(request),
                                                   parent=parent))
    return respond(request, await provider.query(ctx, part, query_params(request), parent=parent))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition: the sampler's latest readings and cimid's own figures, from memory and the
    store (never the hypervisor)."""
    _allow(request, ["GET"], "/metrics")
    families = await request.app[PROVIDER].metrics(context(request))
    return web.Response(body=prometheus.render(families).encode(), headers={"Content-Type": prometheus.MEDIA_TYPE})


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"nothing is served at {request.path}; start at /cimi/cloudEntryPoint")


def make_app(config: Config, provider: Provider, extensions: tuple = ()) -> web.Application:
    """The HTTP application around an assembled provider (see cimid.daemon). `extensions`: callables
    that add a provider extension's routes, ahead of the generic ones (cimid.http.testing)."""
    app = web.Application(middlewares=[handle_errors], client_max_size=config["server"]["max_body_bytes"])
    app[PROVIDER] = provider
    app[CONFIG] = config
    app[AUTH] = Authenticator.from_config(config["auth"], provider.consumers)
    app[RENDERINGS] = RenderingCache()
    for add_routes in extensions:
        add_routes(app)
    app.router.add_route("*", "/cimi/cloudEntryPoint", cloud_entry_point)
    for name in CloudEntryPoint.extensions:  # before /cimi/{collection}, which would take the name
        app.router.add_route("*", f"/cimi/{{extension:{name}}}", entry_point_extension)
    app.router.add_route("*", "/cimi/{collection}", collection)
    app.router.add_route("*", "/cimi/{collection}/{id}", resource)
    app.router.add_route("*", "/cimi/{collection}/{id}/{op}", operation)
    app.router.add_route("*", "/cimi/{collection}/{id}/{sub}/{item}", sub_resource)
    app.router.add_route("*", "/cimi/{collection}/{id}/{sub}/{item}/{part}", nested)
    app.router.add_route("*", "/cimi/{collection}/{id}/{sub}/{item}/{part}/{part_item}", nested)
    app.router.add_route("*", "/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", not_found)

    async def on_startup(_app):
        try:
            await provider.start()
        except BaseException:  # aiohttp cleans up only after a start-up that succeeded
            await provider.stop()
            raise

    async def on_shutdown(_app):
        provider.shutting_down()

    async def on_cleanup(_app):
        app[AUTH].close()
        await provider.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
