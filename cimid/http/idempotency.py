"""`Idempotency-Key` on a POST: the first request runs and its answer is kept; a retry with the same key
by the same consumer gets that answer again, marked `Idempotent-Replayed: true` (cimid.service.idempotency
decides; this module reads the header and sends what it says)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import BadRequest
from ..service.idempotency import StoredAnswer
from ..service.present import Result
from .keys import PROVIDER
from .params import context
from .render import respond

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# What a retry must see again: where the resource is, its Job, its version, how the body is encoded.
KEPT_HEADERS = ("Location", "CIMI-Job-URI", "ETag", "Content-Type", "Allow")
_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, as the IETF draft's sf-string


def key_of(request: web.Request) -> str | None:
    """The key a POST carries, if it carries one (other methods are idempotent already: it is ignored)."""
    if request.method != "POST":
        return None
    values = request.headers.getall(HEADER, [])
    if not values:
        return None
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise BadRequest(f"{HEADER} must be one value of 1 to 255 printable ASCII characters")
    return values[0]


async def answer(request: web.Request, key: str, run: Callable[[], Awaitable[web.Response]]) -> web.Response:
    """The response to a POST carrying `key`: `run()` (which renders its own errors) the first time, the
    first answer for a retry."""
    requests = request.app[PROVIDER].idempotency
    data = await request.read()  # aiohttp keeps it: the handler reads the same bytes
    fingerprint = hashlib.sha256(b"\n".join([request.method.encode(), request.path_qs.encode(), data])).hexdigest()
    outcome = await requests.begin(context(request), key, fingerprint)
    if isinstance(outcome, StoredAnswer):
        response = web.Response(status=outcome.status, headers=outcome.headers, body=outcome.body)
    elif isinstance(outcome, Result):
        response = respond(request, outcome)
    else:
        response = None
        try:
            with requests.recording(outcome):
                response = await run()
        finally:
            await requests.finish(outcome, None if response is None else _kept(response))
        return response
    response.headers[REPLAYED] = "true"
    return response


def _kept(response: web.Response) -> StoredAnswer:
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return StoredAnswer(response.status, headers, bytes(response.body or b""))
