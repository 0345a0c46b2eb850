"""Benchmark 1: requests per second of GET /cimi/machines/{id}, cimid against a bare aiohttp server;
with tls, both over HTTPS (benchmark 1b).

Both servers run at once (the idle one costs nothing) and wrk alternates between them, so the noise of
a shared machine hits both alike; the figure that matters is the ratio of the medians. Over HTTPS both
serve the same certificate and key (the self-signed pair cimid makes), so both pay the same TLS costs;
wrk keeps its connections open, so the figures are mostly the per-request encryption, not handshakes.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from common import Client, Figure, Server, WrongAnswer, median, start_bare, start_cimid

TEMPLATE = "machineTemplates/small-tiny-linux"


def create_machine(client: Client) -> str:
    """Create a Machine through the API and wait for its Job; return the Machine's path."""
    base = f"{client.scheme}://127.0.0.1:{client.port}/cimi/"
    status, headers, body = client.request("POST", "/cimi/machines", {"machineTemplate": {"href": base + TEMPLATE}})
    if status != 202 or "cimi-job-uri" not in headers or "location" not in headers:
        raise WrongAnswer(f"POST /cimi/machines answered {status} {body[:300]!r}, not 202 with a Job and Location")
    job_path = urlsplit(headers["cimi-job-uri"]).path
    deadline = time.monotonic() + 30
    while (state := client.get_json(job_path)["state"]) != "SUCCESS":
        if state in ("FAILED", "STOPPED") or time.monotonic() > deadline:
            raise WrongAnswer(f"the create Job {job_path} ended {state}, not SUCCESS")
        time.sleep(0.02)
    return urlsplit(headers["location"]).path


def wrk(server: Server, path: str, seconds: float, connections: int,
        headers: dict[str, str] | None = None) -> tuple[float, float]:
    """One wrk run: its Requests/sec, and the server's CPU time per request in microseconds (less
    sensitive than the rate to what else the shared machine runs). A non-2xx answer voids it: raises."""
    port, cpu_before = server.port, server.cpu_seconds()
    url = f"{'https' if server.tls else 'http'}://127.0.0.1:{port}{path}"
    extra = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", *extra, url],
                         capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    cpu = server.cpu_seconds() - cpu_before
    if "Non-2xx or 3xx responses" in out:
        raise WrongAnswer(f"wrk got error answers from port {port}:\n{out}")
    if "Socket errors" in out:
        print(f"    warning: wrk reported socket errors on port {port}: "
              f"{re.search(r'Socket errors:.*', out).group(0)}")
    rate, count = re.search(r"Requests/sec:\s*([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if not rate or not count:
        raise RuntimeError(f"cannot find the request rate and count in wrk's output:\n{out}")
    return float(rate.group(1)), cpu / int(count.group(1)) * 1e6


def run(workdir: Path, quick: bool, tls: bool = False) -> list[Figure]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk, or run `make bench`)")
    rounds, seconds, connections = (2, 2, 8) if quick else (5, 5, 8)
    name, label = ("https", "GET machine over HTTPS") if tls else ("get", "GET machine")
    state_dir = workdir / f"{name}-state"
    tls_files = (state_dir / "server.crt", state_dir / "server.key") if tls else None
    with ExitStack() as stack:
        cimid = start_cimid(workdir, f"{name}-cimid", state_dir, tls=tls)
        stack.callback(cimid.stop)
        # Over HTTPS the client trusts exactly the certificate cimid made (its SANs include 127.0.0.1).
        client = Client(cimid.port, context=ssl.create_default_context(cafile=tls_files[0]) if tls else None)
        stack.callback(client.close)
        path = create_machine(client)
        status, headers, body = client.request("GET", path)
        if status != 200:
            raise WrongAnswer(f"GET {path} answered {status}")
        # The baseline answers the very bytes cimid answered (ETag included, so both responses are alike).
        answer = {"Content-Type": headers["content-type"], "ETag": headers["etag"]}
        bare = start_bare(workdir, f"{name}-bare", path, body, answer, tls_files)
        stack.callback(bare.stop)
        bare_client = Client(bare.port, context=ssl.create_default_context(cafile=tls_files[0]) if tls else None)
        stack.callback(bare_client.close)
        _, bare_headers, bare_body = bare_client.request("GET", path)
        if bare_body != body or bare_headers["content-type"] != headers["content-type"]:
            raise WrongAnswer("the bare server does not answer what cimid answered")
        if tls and f"https://127.0.0.1:{cimid.port}/cimi/".encode() not in body:
            raise WrongAnswer(f"cimid over HTTPS answered hrefs that do not say https: {body[:300]!r}")
        print(f"  GET {path}{' over HTTPS' if tls else ''}: {len(body)} bytes of {headers['content-type']}; "
              f"wrk -t1 -c{connections} -d{seconds}s, {rounds} interleaved rounds after a warm-up")

        servers = {"bare": bare, "cimid": cimid}
        for server in servers.values():
            wrk(server, path, 1, connections)  # warm-up: imports, caches, SQLite pages
        rps: dict[str, list[float]] = {name: [] for name in servers}
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for round_number in range(1, rounds + 1):
            for name, server in servers.items():
                rate, cpu_us = wrk(server, path, seconds, connections)
                rps[name].append(rate)
                cpu[name].append(cpu_us)
            print(f"    round {round_number}: bare {rps['bare'][-1]:8,.0f} req/s ({cpu['bare'][-1]:4.0f} us CPU/req)"
                  f"   cimid {rps['cimid'][-1]:8,.0f} req/s ({cpu['cimid'][-1]:4.0f} us CPU/req)"
                  f"   ratio {rps['cimid'][-1] / rps['bare'][-1]:.2f}")
    bare_rps, cimid_rps = median(rps["bare"]), median(rps["cimid"])
    bare_cpu, cimid_cpu = median(cpu["bare"]), median(cpu["cimid"])
    ratio = cimid_rps / bare_rps
    print(f"  median: bare {bare_rps:,.0f} req/s, cimid {cimid_rps:,.0f} req/s, cimid/bare {ratio:.2f}; "
          f"server CPU per request: bare {bare_cpu:.0f} us, cimid {cimid_cpu:.0f} us")
    return [
        Figure.measured(f"{label}: bare aiohttp (baseline)", bare_rps, "req/s", 0),
        Figure.measured(f"{label}: cimid", cimid_rps, "req/s", 0),
        Figure.measured(f"{label}: cimid / bare", ratio, "", 2, ">=", 0.5),
        Figure.measured(f"{label}: server CPU per request, bare", bare_cpu, "us", 0),
        Figure.measured(f"{label}: server CPU per request, cimid", cimid_cpu, "us", 0),
    ]
