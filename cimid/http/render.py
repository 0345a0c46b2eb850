"""From a service Result (or an error) to an HTTP response, in the request's dialect and format."""

from __future__ import annotations

from aiohttp import web

from ..errors import CimiError
from ..service.hrefs import now
from ..service.present import Result
from ..wire import dialect_for
from . import negotiation
from .keys import DIALECT, FORMAT, RENDERINGS
from .params import request_uri


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


def respond(request: web.Request, result: Result) -> web.Response:
    headers = dict(result.headers)
    if result.text is not None:
        return web.Response(status=result.status, text=result.text, content_type="text/plain", charset="utf-8",
                            headers=headers)
    if result.doc is None and result.make_doc is None:
        return web.Response(status=result.status, headers=headers)
    dialect, fmt = request[DIALECT], request[FORMAT]
    if result.cache_key is not None:
        cache = request.app[RENDERINGS]
        key = (*result.cache_key, dialect.name, fmt)
        body = cache.get(key)
        if body is None:
            body = dialect.render(fmt, result.document(), result.rtype)
            cache.put(key, body)
    else:
        body = dialect.render(fmt, result.document(), result.rtype, result.item_type)
    headers["Content-Type"] = dialect.media_types[fmt]
    return web.Response(status=result.status, body=body, headers=headers)


def error_response(request: web.Request, error: CimiError, request_id: str | None = None) -> web.Response:
    """Every error is rendered as the dialect's error document, in the negotiated format (JSON if the
    negotiation itself failed); a 5xx carries the request id its log entry has."""
    request.setdefault(FORMAT, negotiation.JSON)
    dialect = request.setdefault(DIALECT, dialect_for(request.headers))
    doc = dialect.error(status=error.status, title=error.title, message=error.message,
                        target=request_uri(request),
                        method=request.method, time=now(), request_id=request_id)
    return respond(request, Result(error.status, dialect.error_type, doc, headers=error.headers))
