"""Around every request: dialect and format negotiation, authentication, errors as CIMI documents, and
one log line."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..errors import CimiError, InternalError, MethodNotAllowed, NotFound, PayloadTooLarge
from ..wire import dialect_for
from . import negotiation
from .keys import AUTH, CONFIG, DIALECT, FORMAT, ROLE, USER
from .params import first_query
from .render import error_response

log = logging.getLogger("cimid.http")


@web.middleware
async def handle_errors(request: web.Request, handler):
    started = time.perf_counter()
    user = "-"
    try:
        try:
            request[DIALECT] = dialect_for(request.headers)
            request[FORMAT] = negotiation.response_format(first_query(request, "$format"),
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
        response = error_response(request, exc)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path_qs)
        response = error_response(request, InternalError(
            "cimid hit an unexpected error; it is logged on the server. The request may be retried."))
    if request.app[CONFIG]["server"]["log_requests"]:
        log.info("%s %s %d %.1fms user=%s", request.method, request.path_qs, response.status,
                 (time.perf_counter() - started) * 1000, user)
    return response
