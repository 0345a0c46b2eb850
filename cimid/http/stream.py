"""A stream of documents as Server-Sent Events (text/event-stream): each as `id:` and a JSON `data:` line,
a position alone (where the stream starts) as an `id:` line without data, a comment line as a keep-alive
while nothing comes."""

from __future__ import annotations

from aiohttp import web

from ..service.present import Result
from .keys import DIALECT
from .negotiation import JSON


async def send_events(request: web.Request, result: Result) -> web.StreamResponse:
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}  # a fronting nginx must pass each event on at once
    if request.method == "HEAD":  # the headers only: a stream that would never end is not started
        await result.stream.aclose()
        return web.Response(status=200, headers=headers)
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    dialect = request[DIALECT]
    try:
        await response.write(b": cimid events\n\n")  # the client knows at once that the stream is open
        async for item in result.stream:
            if item is None:
                await response.write(b": keep-alive\n\n")
                continue
            seq, doc = item
            if doc is None:  # a position with no Event: the client's Last-Event-ID, nothing dispatched
                await response.write(b"id: %d\n\n" % seq)
                continue
            data = dialect.render(JSON, doc, result.rtype)  # one line: JSON has no raw newlines
            await response.write(b"id: %d\ndata: %s\n\n" % (seq, data))
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        await result.stream.aclose()
    return response
