"""The baseline for the single-resource GET: the cheapest aiohttp server answering the same bytes.

It serves one path with a body and headers captured from cimid, so the difference with cimid is what
cimid does per request (routing, negotiation, auth, SQLite read, rendering), not HTTP or aiohttp itself.
It is run the way cimid is (`web.run_app`, access log off) so both pay the same framework costs.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--certificate", type=Path, help="serve HTTPS with this PEM certificate...")
    parser.add_argument("--key", type=Path, help="...and this PEM key")
    args = parser.parse_args()
    context = None
    if args.certificate:
        # As cimid builds its own (cimid/http/tls.py): the same protocol floor, so the same handshakes.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.certificate, args.key)
    body = args.body_file.read_bytes()
    headers = dict(h.split(": ", 1) for h in args.header)

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get(args.path, handler)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, ssl_context=context)


if __name__ == "__main__":
    main()
