"""The live Event stream through a front (`/cimi/eventStream`, the node's provider extension): one SSE
subscription per live node, fanned in to the client with every node address rewritten.

- The client's `$filter` and identity go to each node, which filters and scopes as it would alone;
  a refusal by a node (a bad `$filter`) is passed on before the stream starts.
- Each message's id is the position of every node (`n1=42&n2=17`, each node's own Last-Event-ID), so a
  client that reconnects through any front with it resumes every node exactly where it was: nothing
  missed, nothing twice. The stream opens with such an id and no data (where it starts).
- A node whose subscription drops is resumed from its last position; a node that loses its lease drops
  out and is resumed when it registers again; a node that registers later is followed from then on.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web

from ..cluster.node import FRONT_HEADER
from ..errors import BadRequest, MethodNotAllowed, Unavailable
from . import forward
from .identity import identity_headers

log = logging.getLogger("cimid.front")

KEEPALIVE_SECONDS = 15.0  # as the nodes: proxies and clients keep an idle stream open
RETRY_SECONDS = 0.5  # between attempts to resubscribe a node that dropped, or to see it registered again
# A node keeps-alive every 15 s: silence much longer than that is a node that stopped (SIGSTOP, a cut link).
NODE_SILENCE_SECONDS = 40.0
_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"}

Position = dict[str, int]  # node name -> the seq of the last Event of that node the client has
STREAMS = web.AppKey("event_streams", set)  # each open stream's stop signal, set at shut-down


async def close_streams(app: web.Application) -> None:
    """The front stops: every client's stream ends now, cleanly (it reconnects to another front with its
    id)."""
    for stopping in app[STREAMS]:
        stopping.set()


def parse_position(value: str | None) -> Position:
    """A client's Last-Event-ID: the positions this front (or another) gave it."""
    if value is None:
        return {}
    try:
        pairs = parse_qsl(value.strip(), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        pairs = None
    if not pairs or not all(name and seq.isdigit() and seq.isascii() for name, seq in pairs):
        raise BadRequest(f"Last-Event-ID must be the id of an event of this stream, not '{value[:60]}'")
    return {name: int(seq) for name, seq in pairs}


def format_position(position: Position) -> str:
    return urlencode(sorted(position.items()))


class _Subscription:
    """One node's stream, resumed from its last position whenever it drops."""

    def __init__(self, request: web.Request, name: str, position: int | None, out: asyncio.Queue):
        self.request, self.name, self.position, self.out = request, name, position, out

    async def open(self, node) -> aiohttp.ClientResponse:
        settings = self.request.app[forward.SETTINGS]
        headers = {"Accept": "text/event-stream", FRONT_HEADER: settings["name"]}
        for header in ("Authorization", "CIMI-Specification-Version"):
            if header in self.request.headers:
                headers[header] = self.request.headers[header]
        forwarded = identity_headers(self.request)
        if forwarded:  # the front checked who asks: the node learns it from the header, as in forward.ask
            headers = {**forwarded, **{k: v for k, v in headers.items() if k != "Authorization"}}
        if self.position is not None:
            headers["Last-Event-ID"] = str(self.position)
        query = [("$filter", f) for f in self.request.query.getall("$filter", [])]
        timeout = aiohttp.ClientTimeout(total=None, connect=settings["node_timeout"], sock_read=NODE_SILENCE_SECONDS)
        try:
            return await self.request.app[forward.SESSION].get(f"{node.url}/cimi/eventStream", params=query,
                                                             headers=headers, timeout=timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unavailable(f"node {node.name} did not answer ({type(exc).__name__}); retry later",
                              headers={"Retry-After": "5"}) from None

    async def follow(self, reply: aiohttp.ClientResponse | None, node=None) -> None:
        """Forever: read the node's messages into `out`, resubscribing after every drop."""
        directory = self.request.app[forward.DIRECTORY]
        while True:
            if reply is None:
                node = directory.live.get(self.name)
                if node is None:  # no lease: it drops out until it registers again
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                try:
                    reply = await self.open(node)
                except Unavailable:
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                if reply.status != 200:
                    log.info("node %s refused the event stream (%s)", self.name, reply.status)
                    reply.close()
                    reply = None
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
            try:
                await self._read(reply, node)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                log.info("the event stream of node %s dropped (%s); resuming", self.name, type(exc).__name__)
            finally:
                reply.close()
                reply = None
            await asyncio.sleep(RETRY_SECONDS)

    async def _read(self, reply: aiohttp.ClientResponse, node) -> None:
        base = forward.front_base(self.request)
        seq, data = None, None
        while line := await reply.content.readline():
            line = line.rstrip(b"\r\n")
            if line.startswith(b"id:"):
                seq = int(line[3:].strip())
            elif line.startswith(b"data:"):
                data = line[5:].strip()
            elif not line and seq is not None:  # a message: an Event, or a position alone
                self.position = seq
                await self.out.put((self.name, seq, forward.rewrite(data, node, base) if data else None))
                seq, data = None, None


async def event_stream(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"{request.method} is not allowed on eventStream; use GET", ["GET"])
    positions = parse_position(request.headers.get("Last-Event-ID"))
    directory = request.app[forward.DIRECTORY]
    out: asyncio.Queue = asyncio.Queue(maxsize=1024)
    subscriptions = {name: _Subscription(request, name, positions.get(name), out)
                     for name in set(positions) | set(directory.live)}
    live = [(s, directory.live[s.name]) for s in subscriptions.values() if s.name in directory.live]
    answers = await asyncio.gather(*(s.open(node) for s, node in live), return_exceptions=True)
    replies = {}
    unused = [a for a in answers if isinstance(a, aiohttp.ClientResponse)]
    try:
        for (subscription, _node), answer in zip(live, answers):
            if isinstance(answer, Unavailable):
                continue  # followed (and resumed) once it answers
            if isinstance(answer, BaseException):
                raise answer
            if answer.status != 200:  # the nodes judge a request alike: pass the first refusal on
                return forward.passed_on(request, answer.status, await answer.read())
            replies[subscription.name] = answer
        if not replies:
            raise Unavailable("no node of the federation answers; retry later", headers={"Retry-After": "5"})
        if request.method == "HEAD":  # the headers only: a stream that would never end is not started
            return web.Response(status=200, headers=_HEADERS)
        response = web.StreamResponse(status=200, headers=_HEADERS)
        await response.prepare(request)
        await response.write(b": cimid events (federation)\n\n")
        stopping = asyncio.Event()
        request.app[STREAMS].add(stopping)
        try:
            return await _fan_in(request, response, subscriptions, replies, positions, out, unused, stopping)
        finally:
            request.app[STREAMS].discard(stopping)
    finally:
        for reply in unused:  # those the stream's tasks did not take over
            reply.close()


async def _fan_in(request, response, subscriptions, replies, positions, out, unused,
                  stopping: asyncio.Event) -> web.StreamResponse:
    directory = request.app[forward.DIRECTORY]
    tasks = {name: asyncio.create_task(s.follow(replies.get(name), directory.live.get(name)), name=f"events-{name}")
             for name, s in subscriptions.items()}
    unused.clear()  # each reply is its task's now

    async def newcomers() -> None:
        """A node that registers after the client came is followed from then on."""
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            for late in set(directory.live) - set(tasks):
                subscriptions[late] = _Subscription(request, late, None, out)
                tasks[late] = asyncio.create_task(subscriptions[late].follow(None), name=f"events-{late}")

    watcher = asyncio.create_task(newcomers(), name="events-newcomers")
    stopped = asyncio.create_task(stopping.wait(), name="events-stopped")
    getter = None
    try:
        while True:
            getter = getter or asyncio.create_task(out.get())
            done, _pending = await asyncio.wait((getter, stopped), timeout=KEEPALIVE_SECONDS,
                                                return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                break
            if not done:
                await response.write(b": keep-alive\n\n")
                continue
            name, seq, data = getter.result()
            getter = None
            if positions.get(name) == seq and data is None:
                continue  # a resumed node saying where it resumes: nothing new for the client
            positions[name] = seq
            message = b"id: " + format_position(positions).encode()
            await response.write(message + (b"\ndata: " + data if data else b"") + b"\n\n")
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        for task in (watcher, stopped, getter):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (watcher, stopped, getter) if t is not None), return_exceptions=True)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return response
