"""The routes of the test-control extension (only with --test-api): JSON in and out, admins only, and
never without authentication beyond loopback. The work is cimid.service.testing's."""

from __future__ import annotations

import json

from aiohttp import web

from ..config import is_loopback
from ..errors import BadRequest, Forbidden, MethodNotAllowed
from ..service.testing import PATH, RULES, TestControl
from .keys import AUTH, CONFIG, RENDERINGS
from .params import context

CONTROL = web.AppKey("test_control", TestControl)


async def _admitted(request: web.Request) -> str:
    """The base URI, once the caller may drive the extension."""
    if not is_loopback(request.app[CONFIG].listen[0]) and not await request.app[AUTH].enabled():
        raise Forbidden("the test-control extension needs authentication on a non-loopback address: add a "
                        "consumer (cimid consumer add NAME --role admin)")
    ctx = context(request)
    if ctx.role != "admin":
        raise Forbidden(f"only an admin may use the test-control extension, not '{ctx.user}'")
    return ctx.base


def _allow(request: web.Request, *methods: str) -> None:
    if request.method not in methods and not (request.method == "HEAD" and "GET" in methods):
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {', '.join(methods)}",
                               list(methods))


async def _body(request: web.Request, optional: bool = False) -> dict:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("this operation takes a JSON object")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the test-control extension takes JSON bodies") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


async def describe(request: web.Request) -> web.Response:
    _allow(request, "GET")
    base = await _admitted(request)
    return web.json_response(request.app[CONTROL].describe(base))


async def reset(request: web.Request) -> web.Response:
    _allow(request, "POST")
    await _admitted(request)
    answer = await request.app[CONTROL].reset(await _body(request, optional=True))
    # With a seed, the same ids come back at version 1 with other content: no cached rendering may survive.
    request.app[RENDERINGS].bodies.clear()
    return web.json_response(answer)


async def clock(request: web.Request) -> web.Response:
    _allow(request, "GET", "POST")
    await _admitted(request)
    control = request.app[CONTROL]
    if request.method == "POST":
        return web.json_response(control.set_clock(await _body(request)))
    return web.json_response(control.clock())


async def rules(request: web.Request) -> web.Response:
    _allow(request, "GET", "POST")
    base = await _admitted(request)
    control = request.app[CONTROL]
    if request.method == "POST":
        doc = await control.add_rule(await _body(request), base)
        return web.json_response(doc, status=201, headers={"Location": doc["id"]})
    return web.json_response(await control.rules(base))


async def rule(request: web.Request) -> web.Response:
    _allow(request, "GET", "DELETE")
    base = await _admitted(request)
    control, id = request.app[CONTROL], request.match_info["id"]
    if request.method == "DELETE":
        await control.remove_rule(id)
        return web.Response(status=200)
    return web.json_response(await control.rule(id, base))


def add_routes(app: web.Application, control: TestControl) -> None:
    """Before the generic /cimi/{collection}... routes, which would otherwise answer 404 for these."""
    app[CONTROL] = control
    app.router.add_route("*", f"/cimi/{PATH}", describe)
    app.router.add_route("*", f"/cimi/{PATH}/reset", reset)
    app.router.add_route("*", f"/cimi/{PATH}/clock", clock)
    app.router.add_route("*", f"/cimi/{RULES}", rules)
    app.router.add_route("*", f"/cimi/{RULES}/{{id}}", rule)

    async def restore_sources(_app) -> None:
        control.close()

    app.on_cleanup.append(restore_sources)
