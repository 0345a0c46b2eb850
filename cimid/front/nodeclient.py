"""A lean HTTP/1.1 client for the front's GETs to nodes: pooled keep-alive connections per node and as
little per request as HTTP allows. aiohttp's client costs about 200 µs a request, as much as the
node's own answer; a GET routed through a front needs none of what it does beyond this.

Only GET: a stale keep-alive connection (the node closed it while idle) can then be retried safely on
a fresh one. Everything else still goes through aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from urllib.parse import SplitResult, urlsplit

from multidict import CIMultiDict

MAX_IDLE = 32  # idle connections kept per node


class NodeHttpError(Exception):
    """The node did not answer, or not in HTTP this client reads."""


class NodeClient:
    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self._ssl = ssl_context  # made on first https use when None: the system's CAs
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = defaultdict(list)
        self._parts: dict[str, SplitResult] = {}

    async def get(self, base_url: str, target: str, headers: dict[str, str],
                  timeout: float) -> tuple[int, CIMultiDict, bytes]:
        """GET `target` (path and query, already encoded) from the node at `base_url`: (status, headers,
        body)."""
        parts = self._parts.get(base_url) or self._parts.setdefault(base_url, urlsplit(base_url))
        head = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1")
        async with asyncio.timeout(timeout):
            idle = self._idle[base_url]
            while idle:  # a reused connection the node closed meanwhile: try the next, then a new one
                reader, writer = idle.pop()
                try:
                    return await self._exchange(base_url, reader, writer, head)
                except (ConnectionError, asyncio.IncompleteReadError, NodeHttpError):
                    writer.close()
            reader, writer = await self._connect(parts)
            try:
                return await self._exchange(base_url, reader, writer, head)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                writer.close()
                raise NodeHttpError(f"the connection broke ({type(exc).__name__})") from None
            except BaseException:
                writer.close()
                raise

    async def _connect(self, parts):
        secure = parts.scheme == "https"
        if secure and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            return await asyncio.open_connection(parts.hostname, parts.port or (443 if secure else 80),
                                                 ssl=self._ssl if secure else None)
        except (OSError, ssl.SSLError) as exc:
            raise NodeHttpError(f"cannot connect ({exc})") from None

    async def _exchange(self, base_url: str, reader, writer, head: bytes):
        writer.write(head)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")  # the stream's limit (64 KiB) bounds the head
        except asyncio.LimitOverrunError:
            raise NodeHttpError("the answer's head is too long") from None
        lines = raw.decode("latin-1").split("\r\n")
        try:
            version, code, _reason = (lines[0].split(" ", 2) + [""])[:3]
            status = int(code)
        except ValueError:
            raise NodeHttpError(f"not an HTTP status line: {lines[0][:80]!r}") from None
        headers = CIMultiDict()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        if "chunked" in headers.get("Transfer-Encoding", ""):
            body = await self._chunked(reader)
        elif "Content-Length" in headers:
            body = await reader.readexactly(int(headers["Content-Length"]))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # the body ends with the connection
            body = await reader.read()
            headers["Connection"] = "close"
        if headers.get("Connection", "").lower() == "close" or version != "HTTP/1.1" or \
                len(self._idle[base_url]) >= MAX_IDLE:
            writer.close()
        else:
            self._idle[base_url].append((reader, writer))
        return status, headers, body

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def close(self) -> None:
        for connections in self._idle.values():
            for _reader, writer in connections:
                writer.close()
        self._idle.clear()
