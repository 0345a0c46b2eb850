"""The baseline for the single-resource GET: the cheapest aiohttp server answering the same bytes.

It serves one path with a body and headers captured from cimid, so the difference with cimid is what
cimid does per request (routing, negotiation, auth, SQLite read, rendering), not HTTP or aiohttp itself.
It is run the way cimid is (`web.run_app`, access log off) so both pay the same framework costs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    args = parser.parse_args()
    body = args.body_file.read_bytes()
    headers = dict(h.split(": ", 1) for h in args.header)

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get(args.path, handler)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
