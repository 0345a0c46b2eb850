"""Benchmark 2: a query over 10,000 Machines, its latency and its answer; start-up time and memory with them.

Creating 10,000 Machines through the API would take minutes of Jobs, so cimid creates and migrates the
store, stops, and the rows are written straight into SQLite, shaped exactly as cimid writes them.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from common import Client, Figure, median, percentile, query_string, report_answers, start_cimid

COUNT = 10_000
GIB_IN_KB = 1024 * 1024
QUERIES = {
    "filter": "/cimi/machines?" + query_string({"$filter": "cpu>=2 and name='m-4242'"}),
    "orderby": "/cimi/machines?" + query_string({"$orderby": "name:desc", "$first": "1", "$last": "50"}),
    "cloudEntryPoint": "/cimi/cloudEntryPoint",  # the baseline: a request that touches no Machine
}


def stamp(moment: dt.datetime) -> str:
    # cimid's own format (service/presentation.py now()): UTC, milliseconds, so strings sort as instants.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def populate(database: Path, owners: list[str] | None = None) -> None:
    """Insert COUNT stopped Machines m-0..m-9999 in one transaction, as Machines.create/finish leave them;
    m-i belongs to owners[i % len(owners)] (without owners, to the provider, as before tenancy)."""
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(COUNT):
        machine_id, name, cpu = uuid.uuid4().hex, f"m-{i}", i % 4 + 1
        memory = cpu * GIB_IN_KB
        created = stamp(start + dt.timedelta(seconds=i))  # distinct, increasing with the name's number
        spec = {"id": machine_id, "name": name, "cpu": cpu, "memory": memory, "cpu_arch": "x86_64", "disks": [],
                "image_location": None, "user_data": None, "credential": None}
        rows.append(("Machine", machine_id, "", name, created, created, "STOPPED",
                     json.dumps({"cpu": cpu, "memory": memory, "cpuArch": "x86_64"}),
                     json.dumps({"spec": spec, "stable": "STOPPED"}), owners[i % len(owners)] if owners else ""))
    conn = sqlite3.connect(database)
    try:
        with conn:  # one transaction
            conn.executemany("INSERT INTO resources (kind, id, parent, name, created, updated, state, doc, internal,"
                             " owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()


def check(kind: str, doc: dict, expected_names: list[str]) -> str | None:
    """What is wrong with an answer, or None."""
    if kind == "cloudEntryPoint":
        return None if "machines" in doc else "the cloudEntryPoint lists no machines collection"
    names = [m.get("name") for m in doc.get("machines", [])]
    if kind == "filter" and (doc.get("count") != 1 or names != ["m-4242"]):
        return f"$filter answered count {doc.get('count')} and names {names[:5]}, not count 1 and ['m-4242']"
    if kind == "orderby" and (doc.get("count") != COUNT or names != expected_names):
        return (f"$orderby answered count {doc.get('count')}, {len(names)} items starting {names[:3]}, "
                f"not count {COUNT}, 50 items starting {expected_names[:3]}")
    return None


def run(workdir: Path, quick: bool) -> tuple[list[Figure], float]:
    """The figures, and the RSS (MiB) of the cimid serving the 10,000 Machines after the queries."""
    warmup, samples = (5, 50) if quick else (20, 200)
    state_dir = workdir / "10k-state"
    fresh = start_cimid(workdir, "10k-migrate", state_dir)  # creates, migrates and seeds the store
    fresh_startup = fresh.startup_seconds
    fresh.stop()
    started = time.perf_counter()
    populate(state_dir / "cimid.sqlite3")
    print(f"  inserted {COUNT:,} Machines into the store in {time.perf_counter() - started:.2f} s")
    expected_names = sorted((f"m-{i}" for i in range(COUNT)), reverse=True)[:50]

    with ExitStack() as stack:
        # Start-up adopts every stored Machine into libvirt's test driver: allow it time, and measure it.
        cimid = start_cimid(workdir, "10k-cimid", state_dir, timeout=600)
        stack.callback(cimid.stop)
        print(f"  start-up (spawn until cloudEntryPoint answers): {cimid.startup_seconds:.2f} s with {COUNT:,} "
              f"Machines, {fresh_startup:.2f} s on a fresh state dir")
        client = Client(cimid.port)
        stack.callback(client.close)
        latencies: dict[str, list[float]] = {kind: [] for kind in QUERIES}
        problems: dict[str, str] = {}
        # Round-robin over the three requests, so any noise on the machine hits each of them alike.
        for round_number in range(warmup + samples):
            for kind, path in QUERIES.items():
                started = time.perf_counter()
                status, _, body = client.request("GET", path)
                elapsed = time.perf_counter() - started
                if round_number >= warmup:
                    latencies[kind].append(elapsed * 1000)
                problem = f"answered {status}" if status != 200 else check(kind, json.loads(body), expected_names)
                if problem:
                    problems.setdefault(kind, f"GET {path}: {problem}")
        time.sleep(1)  # let the allocator and the event loop settle before reading the RSS
        rss = cimid.rss_mib()

    print(f"  {samples} sequential requests each (keep-alive, after {warmup} warm-up rounds), in ms:")
    for kind, path in QUERIES.items():
        print(f"    {kind:16} median {median(latencies[kind]):6.2f}   p95 {percentile(latencies[kind], 95):6.2f}"
              f"   GET {path}")
    report_answers(problems, "$filter gives m-4242 alone, $orderby the right 50 of 10,000")
    figures = [
        Figure.measured("10k: start-up, fresh state dir (baseline)", fresh_startup, "s", 2),
        Figure.measured("10k: start-up with 10,000 Machines", cimid.startup_seconds, "s", 2),
        Figure.measured("10k: GET cloudEntryPoint median (baseline)", median(latencies["cloudEntryPoint"]), "ms", 2),
    ]
    for kind, label in (("filter", "$filter=cpu>=2 and name='m-4242'"), ("orderby", "$orderby=name:desc, 50 items")):
        figures.append(Figure.measured(f"10k: {label} median", median(latencies[kind]), "ms", 2, "<=", 15))
        figures.append(Figure.measured(f"10k: {label} p95", percentile(latencies[kind], 95), "ms", 2))
    figures.append(Figure.answer("10k: answers of both queries", list(problems.values())))
    return figures, rss
