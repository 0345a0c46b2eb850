"""Around every request: dialect and format negotiation, authentication, errors as CIMI documents, and
one log line."""

from __future__ import annotations

import logging
import time
import uuid
from urllib.parse import unquote

from aiohttp import web

from ..errors import BadRequest, CimiError, Forbidden, InternalError, MethodNotAllowed, NotFound, PayloadTooLarge
from ..wire import dialect_for
from . import idempotency, negotiation
from .auth import Identity
from .keys import AUTH, CONFIG, DIALECT, FORMAT, IDENTITY, PROVIDER
from .params import cut_short, first_query
from .render import error_response
from .tls import FRONT_USER_HEADER, client_certificate_name, from_front

log = logging.getLogger("cimid.http")


@web.middleware
async def handle_errors(request: web.Request, handler):
    started = time.perf_counter()
    response = await _rendered(request, lambda: _serve(request, handler))
    request.app[PROVIDER].requests.record(request.method, response.status, time.perf_counter() - started)
    if request.app[CONFIG]["server"]["log_requests"]:
        identity = request.get(IDENTITY)
        log.info("%s %s %d %.1fms user=%s", request.method, request.path_qs, response.status,
                 (time.perf_counter() - started) * 1000, identity.name if identity else "-")
    return response


async def _serve(request: web.Request, handler) -> web.Response:
    request[DIALECT] = dialect_for(request.headers)
    request[FORMAT] = negotiation.response_format(first_query(request, "$format"), request.headers.get("Accept"))
    request[IDENTITY] = await _authenticate(request)
    key = idempotency.key_of(request)
    if key is None:
        return await handler(request)
    # What a retry gets again is what the client saw, errors included: rendered inside.
    return await idempotency.answer(request, key, lambda: _rendered(request, lambda: handler(request)))


async def _rendered(request: web.Request, call) -> web.Response:
    """What `call()` answers, with every exception rendered as a CIMI error."""
    try:
        try:
            return await call()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"the body is larger than the {request.app[CONFIG]['server']['max_body_bytes']} "
                                  "bytes this provider accepts") from None
        except web.HTTPMethodNotAllowed as exc:
            raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}",
                                   sorted(exc.allowed_methods)) from None
        except web.HTTPNotFound:
            raise NotFound(f"nothing is served at {request.path}") from None
    except CimiError as exc:
        # A 4xx is the client's to fix: its message may quote the body, so it is not logged (neither is a 501,
        # a documented answer). A server-side failure is logged once, with its traceback, under a new id.
        request_id = None
        if exc.status >= 500 and exc.status != 501:
            request_id = _log_failure(request, f"{exc.status} {exc.title}")
        return error_response(request, exc, request_id)
    except Exception as exc:
        if (gone := cut_short(request, exc)) is not None:
            return error_response(request, gone)
        request_id = _log_failure(request, "unexpected error")
        return error_response(request, InternalError(
            "cimid hit an unexpected error; it is logged on the server. The request may be retried."), request_id)


async def _authenticate(request: web.Request) -> Identity:
    """A verified client certificate, when the server asks for them and one was sent, decides alone;
    otherwise the Authorization header does (a front's certificate only says a front forwards the
    request: the client's Authorization, which it passes on, says who asks)."""
    auth = request.app[AUTH]
    config = request.app[CONFIG]
    forwarded = request.headers.get(FRONT_USER_HEADER)
    if forwarded is not None:  # a front checked who asks (cimid/front/identity.py)
        if not (config["cluster"]["tls_ca"] and from_front(request, config["cluster"]["tls_ca"])):
            raise Forbidden(f"{FRONT_USER_HEADER} is for fronts, which connect with a certificate of the "
                            "federation CA (cluster.tls_ca)")
        role, _, name = forwarded.partition(" ")
        if role not in ("admin", "user", "reader") or not name:
            raise BadRequest(f"{FRONT_USER_HEADER} must be '<role> <name>'")
        return Identity(unquote(name), role)  # quotas are counted by the fronts, across the federation
    if config["server"]["tls_client_ca"] and not from_front(request, config["cluster"]["tls_ca"]):
        name = client_certificate_name(request)
        if name is not None:
            return await auth.authenticate_certificate(name)
    return await auth.authenticate(request.headers.get("Authorization"), request.remote)


def _log_failure(request: web.Request, what: str) -> str:
    """Log the exception being handled, with its traceback, under a new request id; return that id."""
    request_id = uuid.uuid4().hex[:16]
    log.error("request %s: %s on %s %s", request_id, what, request.method, request.path, exc_info=True)
    return request_id
