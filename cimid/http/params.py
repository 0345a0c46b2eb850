"""Reading a request: query parameters, the caller's Context, the body in the request's dialect."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from yarl import URL

from ..errors import BadRequest, PayloadTooLarge
from ..service.present import Context, QueryParams
from ..wire.text import check_document
from . import negotiation
from .keys import CONFIG, DIALECT, IDENTITY

log = logging.getLogger("cimid.http")


def first_query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    return values[0] if values else None  # later duplicates are ignored (DSP0263 §4.1.6)


def names(request: web.Request, name: str) -> set[str] | None:
    values = request.query.getall(name, [])
    if not values:
        return None
    found = {n.strip() for v in values for n in v.split(",") if n.strip()}
    return found or {"*"}


_DIGITS = re.compile("[0-9]+")
MAX_POSITION = 2**63 - 1  # SQLite's largest INTEGER


def positive(request: web.Request, name: str) -> int | None:
    value = first_query(request, name)
    if value is None:
        return None
    digits = value.lstrip("0")
    if not _DIGITS.fullmatch(value) or not digits:  # int() alone would also take '1_0', ' 2' or '٣'
        raise BadRequest(f"{name} must be a positive integer, not '{value[:40]}'")
    # Clamped, not refused: no collection holds more than SQLite's largest integer, so a larger $first
    # or $last means the same as that one (an empty page, or up to the end), and SQLite can take it.
    return MAX_POSITION if len(digits) > 19 else min(int(digits), MAX_POSITION)


def query_params(request: web.Request) -> QueryParams:
    return QueryParams(
        filters=request.query.getall("$filter", []),
        select=names(request, "$select"),
        expand=names(request, "$expand"),
        orderby=request.query.getall("$orderby", []),
        first=positive(request, "$first"),
        last=positive(request, "$last"),
    )


# What every id and href is built from when no public_base_url is configured: a Host header must be a
# host (name, IPv4, or IP literal in brackets) with an optional port, or every href would be broken.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def context(request: web.Request) -> Context:
    base = request.app[CONFIG]["server"]["public_base_url"]
    if base:
        base = base.rstrip("/") + "/cimi/"
    elif _HOST.fullmatch(request.host):
        base = f"{request.scheme}://{request.host}/cimi/"
    else:
        raise BadRequest(f"the Host header '{request.host[:100]}' is not a host name with an optional port")
    identity = request[IDENTITY]
    return Context(base=base, role=identity.role, user=identity.name, quotas=identity.quotas)


def request_uri(request: web.Request) -> str:
    """The request's URL as a valid URI, for an error's targetResource: the raw path re-quoted (a client
    may send a lone '%' or brackets unescaped), without the query (the resource, not how it was asked
    for), and relative when the Host header is no host."""
    path = str(URL(request.raw_path).with_query(None))
    return f"{request.scheme}://{request.host}{path}" if _HOST.fullmatch(request.host) else path


def cut_short(request: web.Request, exc: BaseException) -> BadRequest | None:
    """The answer (logged in one line) for a client that left before it sent its whole request: aiohttp drops
    the transport and fails the body's read with ConnectionResetError. Nothing was done, and nobody reads the
    answer. None for anything else, a reset of a connection cimid opened itself included (the client's
    transport is still there)."""
    if not isinstance(exc, ConnectionResetError) or request.transport is not None:
        return None
    log.info("%s %s: the client went away before sending its whole request", request.method, request.path)
    return BadRequest("the request was cut short: the client went away")


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
    root, doc = request[DIALECT].parse(fmt, data)
    check_document(doc)  # one check for every dialect: depth, and strings XML 1.0 can carry
    return root, doc
