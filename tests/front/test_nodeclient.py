"""The front's lean GET client against real servers on loopback: it reuses one connection, reads
Content-Length and chunked bodies, survives a keep-alive connection the server closed, and says so
when the server is not there, answers garbage or takes too long."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from cimid.front.nodeclient import NodeClient, NodeHttpError


async def _aiohttp_server(app: web.Application):
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_bodies_headers_and_one_kept_connection():
    peers = set()

    async def plain(request):
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(body=f"{request.path_qs} {request.headers['Accept']}".encode(),
                            headers={"ETag": '"1"', "Location": "http://x/cimi/y"}, status=201)

    async def chunked(request):
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/chunked", chunked)
    runner, url = await _aiohttp_server(app)
    client = NodeClient()
    try:
        for i in range(5):
            status, headers, body = await client.get(url, f"/plain?n={i}&$filter=a%3D1", {"Accept": "x/y"}, 5)
            assert (status, body) == (201, f"/plain?n={i}&$filter=a%3D1 x/y".encode())
            assert headers["etag"] == '"1"' and headers["Location"] == "http://x/cimi/y"
        assert len(peers) == 1  # five requests, one connection
        status, _headers, body = await client.get(url, "/chunked", {}, 5)
        assert (status, body) == (200, b"one two three")
        status, _headers, _body = await client.get(url, "/nothing", {}, 5)
        assert status == 404
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_connection_the_server_closed_is_replaced():
    connections = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def once(reader, writer):  # answers one request, then closes: a keep-alive that timed out
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(once, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = NodeClient()
    try:
        for _ in range(3):
            assert (await client.get(url, "/", {}, 5))[2] == b"ok"
            await asyncio.sleep(0.05)  # the close reaches the client's idle connection
        assert len(connections) == 3
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_no_server_garbage_and_silence_are_errors():
    client = NodeClient()

    async def garbage(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def silent(reader, writer):
        await reader.read()

    garbage_server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    silent_server = await asyncio.start_server(silent, "127.0.0.1", 0)
    closed = await asyncio.start_server(silent, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        with pytest.raises(NodeHttpError, match="cannot connect"):
            await client.get(f"http://127.0.0.1:{closed_port}", "/", {}, 5)
        with pytest.raises(NodeHttpError, match="not an HTTP status line"):
            await client.get(f"http://127.0.0.1:{garbage_server.sockets[0].getsockname()[1]}", "/", {}, 5)
        with pytest.raises(TimeoutError):
            await client.get(f"http://127.0.0.1:{silent_server.sockets[0].getsockname()[1]}", "/", {}, 0.3)
    finally:
        await client.close()
        for server in (garbage_server, silent_server):
            server.close()
