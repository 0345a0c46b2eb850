"""Benchmark 3: resident memory of an idle cimid, beside a bare aiohttp server serving the same answer.

The 10,000-Machine figure comes from benchmark 2, read from its cimid after the queries.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from common import Client, Figure, start_bare, start_cimid

# What a client does first: discover, then list the catalogue and the (empty) machines.
FIRST_REQUESTS = ["/cimi/cloudEntryPoint", "/cimi/machineConfigs", "/cimi/machineImages", "/cimi/machineTemplates",
                  "/cimi/machineTemplates/small-tiny-linux", "/cimi/machines", "/cimi/jobs"]


def exercise(port: int, paths: list[str]) -> None:
    client = Client(port)
    try:
        for path in paths:
            for _ in range(3):
                client.get_json(path)  # raises on anything but 200
    finally:
        client.close()


def run(workdir: Path, quick: bool, rss_10k: float | None) -> list[Figure]:
    with ExitStack() as stack:
        cimid = start_cimid(workdir, "memory-cimid", workdir / "memory-state")
        stack.callback(cimid.stop)
        exercise(cimid.port, FIRST_REQUESTS)
        # The baseline serves cimid's own cloudEntryPoint bytes, so both processes answered alike.
        client = Client(cimid.port)
        _, headers, body = client.request("GET", "/cimi/cloudEntryPoint")
        client.close()
        bare = start_bare(workdir, "memory-bare", "/cimi/cloudEntryPoint", body,
                          {"Content-Type": headers["content-type"]})
        stack.callback(bare.stop)
        exercise(bare.port, ["/cimi/cloudEntryPoint"] * len(FIRST_REQUESTS))
        time.sleep(1)  # settle
        idle, baseline = cimid.rss_mib(), bare.rss_mib()
    print(f"  RSS: bare aiohttp {baseline:.1f} MiB, idle cimid {idle:.1f} MiB"
          + (f", cimid with 10,000 Machines {rss_10k:.1f} MiB" if rss_10k is not None else ""))
    figures = [
        Figure.measured("RSS: bare aiohttp server (baseline)", baseline, "MiB", 1),
        Figure.measured("RSS: idle cimid", idle, "MiB", 1, "<=", 60),
    ]
    if rss_10k is not None:
        figures.append(Figure.measured("RSS: cimid with 10,000 Machines", rss_10k, "MiB", 1, "<=", 150))
    else:
        figures.append(Figure("RSS: cimid with 10,000 Machines", "not measured (benchmark 2 failed)", "<= 150 MiB",
                              False))
    return figures
