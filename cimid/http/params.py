"""Reading a request: query parameters, the caller's Context, the body in the request's dialect."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest, PayloadTooLarge
from ..service.present import Context, QueryParams
from . import negotiation
from .keys import CONFIG, DIALECT, ROLE, USER


def first_query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    return values[0] if values else None  # later duplicates are ignored (DSP0263 §4.1.6)


def names(request: web.Request, name: str) -> set[str] | None:
    values = request.query.getall(name, [])
    if not values:
        return None
    found = {n.strip() for v in values for n in v.split(",") if n.strip()}
    return found or {"*"}


def positive(request: web.Request, name: str) -> int | None:
    value = first_query(request, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a positive integer, not '{value}'") from None
    if number < 1:
        raise BadRequest(f"{name} must be a positive integer, not '{value}'")
    return number


def query_params(request: web.Request) -> QueryParams:
    return QueryParams(
        filters=request.query.getall("$filter", []),
        select=names(request, "$select"),
        expand=names(request, "$expand"),
        orderby=request.query.getall("$orderby", []),
        first=positive(request, "$first"),
        last=positive(request, "$last"),
    )


def context(request: web.Request) -> Context:
    base = request.app[CONFIG]["server"]["public_base_url"]
    if base:
        base = base.rstrip("/") + "/cimi/"
    else:
        base = f"{request.scheme}://{request.host}/cimi/"
    return Context(base=base, role=request[ROLE], user=request[USER])


async def body(request: web.Request, optional: bool = False) -> tuple[str | None, dict]:
    """(the root type the body names, or None; its attributes). An optional body may be empty."""
    limit = request.app[CONFIG]["server"]["max_body_bytes"]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than the {limit} bytes this provider accepts")
    data = await request.read()
    if not data.strip():
        if optional:
            return None, {}
        raise BadRequest("this request needs a body")
    fmt = negotiation.request_format(request.headers.get("Content-Type"), data)
    return request[DIALECT].parse(fmt, data)
