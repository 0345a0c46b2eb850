"""Benchmark 5: Meters. The sampler's CPU cost with 50 machines at a 10 s interval, against the same daemon
with sampling off, both running side by side over the same window; /metrics latency with those 50
machines; a $filter on timestamp with $last=100 over 1,000,000 stored samples, and the database's size
against meters.max_database_mb.

The window is the issue's 5 minutes (30 rounds of 10 s) in a full run, and 30 s with --quick (the
sampler's work is the same every round: one bulk read of the 50 machines, one of the host, one insert of
~300 samples, plus a small query each second, so a few rounds show the per-round cost for a quick look);
both daemons share the window, so noise on the machine falls on both alike. The 1,000,000 samples are
written straight into SQLite, shaped as cimid.store.samples.add writes them, because sampling them would
take days.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from common import MIB, Client, Figure, WrongAnswer, median, percentile, query_string, start_cimid

MACHINES = 50
INTERVAL = 10
METERS_1M, PER_METER = 250, 4000  # 1,000,000 samples: 250 Meters of 4,000 samples, 10 s apart (11 hours)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def make_machines(client: Client, count: int) -> None:
    for _ in range(count):
        status, _, body = client.request("POST", "/cimi/machines", {
            "machineTemplate": {"href": f"http://127.0.0.1:{client.port}/cimi/machineTemplates/small-tiny-linux"}})
        if status != 202:
            raise WrongAnswer(f"POST machines answered {status}: {body[:200]!r}")
    path = "/cimi/machines?" + query_string({"$filter": "state='STARTED'"})
    deadline = time.monotonic() + 120
    while client.get_json(path)["count"] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} machines did not start within 120 s")
        time.sleep(0.2)


def sampler_cost(workdir: Path, quick: bool) -> list[Figure]:
    window = 30 if quick else 300
    meters = f"[meters]\ndefault_sample_interval = {INTERVAL}\n"
    with ExitStack() as stack:
        on = start_cimid(workdir, "meters-on", workdir / "meters-on", extra_config=meters)
        stack.callback(on.stop)
        off = start_cimid(workdir, "meters-off", workdir / "meters-off", extra_config=meters + "sampling = false\n")
        stack.callback(off.stop)
        clients = {server.name: Client(server.port) for server in (on, off)}
        for client in clients.values():
            stack.callback(client.close)
            make_machines(client, MACHINES)
        expected = MACHINES * 6 + 6  # six default Meters a machine, six for the host
        deadline = time.monotonic() + 60
        while clients["meters-on"].get_json("/cimi/meters")["count"] < expected:
            if time.monotonic() > deadline:
                raise WrongAnswer(f"the sampling daemon never made its {expected} default Meters")
            time.sleep(0.5)
        if clients["meters-off"].get_json("/cimi/meters")["count"] != 0:
            raise WrongAnswer("the daemon with sampling off made Meters")
        time.sleep(INTERVAL + 1)  # past the first round, which also makes the Meters
        print(f"  {MACHINES} started machines in each daemon; measuring CPU over {window} s, side by side")
        before = {s.name: s.cpu_seconds() for s in (on, off)}
        time.sleep(window)
        spent = {s.name: s.cpu_seconds() - before[s.name] for s in (on, off)}
        extra = (spent["meters-on"] - spent["meters-off"]) / window * 100
        for name, seconds in spent.items():
            print(f"    {name:10} {seconds:6.3f} CPU s = {seconds / window * 100:5.2f} % of a core")
        print(f"    sampling's extra: {extra:.2f} % of one core")

        # /metrics, on the sampling daemon, with its 50 machines
        metrics = Client(on.port)
        stack.callback(metrics.close)
        latencies, problem = [], None
        for index in range(220 if not quick else 60):
            started = time.perf_counter()
            status, _, body = metrics.request("GET", "/metrics")
            elapsed = (time.perf_counter() - started) * 1000
            if index >= 20:
                latencies.append(elapsed)
            if status != 200:
                problem = f"GET /metrics answered {status}"
        series = [line for line in body.decode().splitlines() if line.startswith("cimid_machine_memory_used_bytes{")]
        if len(series) != MACHINES:
            problem = f"/metrics has {len(series)} machine memory series, not {MACHINES}"
        print(f"  GET /metrics ({len(body):,} bytes, {MACHINES} machines): median {median(latencies):.2f} ms, "
              f"p95 {percentile(latencies, 95):.2f} ms")
        if problem:
            print(f"  !!!!! {problem}")
    return [
        Figure.measured(f"meters: CPU, sampling off, {MACHINES} machines (baseline)",
                        spent["meters-off"] / window * 100, "% of a core", 2),
        Figure.measured(f"meters: CPU, sampling every {INTERVAL} s, {MACHINES} machines",
                        spent["meters-on"] / window * 100, "% of a core", 2),
        Figure.measured(f"meters: sampler's extra CPU over {window} s", extra, "% of a core", 2, "<=", 1),
        Figure.measured(f"meters: GET /metrics median, {MACHINES} machines", median(latencies), "ms", 2, "<=", 10),
        Figure.answer("meters: /metrics answers", [problem] if problem else []),
    ]


def populate_samples(database: Path) -> list[str]:
    """METERS_1M stopped Meters on the host, PER_METER samples each ending now; returns the Meter ids."""
    end = dt.datetime.now(dt.UTC)
    conn = sqlite3.connect(database)
    ids = [uuid.uuid4().hex for _ in range(METERS_1M)]
    try:
        with conn:
            created = stamp(end)
            conn.executemany(
                "INSERT INTO resources (kind, id, parent, name, created, updated, doc, internal)"
                " VALUES ('Meter', ?, '', ?, ?, ?, ?, ?)",
                [(meter, f"bench {i}", created, created, json.dumps({
                    "targetResource": {"href": "cloudEntryPoint"}, "aspect": "http://schemas.dmtf.org/cimi/1/aspect/cpu",
                    "units": "percent", "sampleInterval": INTERVAL, "timeScope": "Interval", "isContinuous": True}),
                  json.dumps({"running": False, "kind": "host", "target": "", "aspect": "cpu"}))
                 for i, meter in enumerate(ids)])
            for meter in ids:
                conn.executemany("INSERT INTO samples (meter, ts, value) VALUES (?, ?, ?)",
                                 [(meter, stamp(end - dt.timedelta(seconds=INTERVAL * n)), float(n % 100))
                                  for n in range(PER_METER)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return ids


def million_samples(workdir: Path, quick: bool) -> list[Figure]:
    state_dir = workdir / "meters-1m"
    limit_mb = 256  # the default meters.max_database_mb
    fresh = start_cimid(workdir, "meters-1m-migrate", state_dir, extra_config="[meters]\nsampling = false\n")
    fresh.stop()
    started = time.perf_counter()
    ids = populate_samples(state_dir / "cimid.sqlite3")
    database = state_dir / "cimid.sqlite3"
    print(f"  inserted {METERS_1M * PER_METER:,} samples ({METERS_1M} Meters x {PER_METER:,}) in "
          f"{time.perf_counter() - started:.1f} s; database file {database.stat().st_size / MIB:.1f} MiB")
    since = stamp(dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    warmup, count = (10, 60) if quick else (20, 300)
    problems = []
    with ExitStack() as stack:
        # Sampling on, so that the retention sweep runs at start-up against the default limit.
        server = start_cimid(workdir, "meters-1m", state_dir, extra_config=f"[meters]\nmax_database_mb = {limit_mb}\n")
        stack.callback(server.stop)
        client = Client(server.port)
        stack.callback(client.close)
        latencies = []
        for index in range(warmup + count):
            meter = ids[index % len(ids)]
            path = (f"/cimi/meters/{meter}/samples?" + query_string({"$filter": f"timestamp >= '{since}'", "$last": "100"}))
            started = time.perf_counter()
            status, _, body = client.request("GET", path)
            elapsed = (time.perf_counter() - started) * 1000
            if index >= warmup:
                latencies.append(elapsed)
            doc = json.loads(body) if status == 200 else {}
            if status != 200 or len(doc.get("samples", [])) != 100 or not 700 <= doc.get("count", 0) <= 722:
                problems.append(f"GET {path} answered {status}, {len(doc.get('samples', []))} samples, count "
                                f"{doc.get('count')} (expected 100 of the ~720 of the last two hours)")
                break
        time.sleep(1)
    size = database.stat().st_size / MIB
    print(f"  $filter=timestamp >= (2 h ago) & $last=100 on one Meter's samples, {count} requests round the "
          f"Meters: median {median(latencies):.2f} ms, p95 {percentile(latencies, 95):.2f} ms")
    print(f"  database after the retention sweep: {size:.1f} MiB, meters.max_database_mb = {limit_mb}")

    # Trimming: the same database under a 32 MiB limit; free pages are reused, so the file stops growing.
    def in_use() -> tuple[float, int, int, int]:
        conn = sqlite3.connect(database)
        try:
            (left,), = conn.execute("SELECT count(*) FROM samples").fetchall()
            (pages,), = conn.execute("PRAGMA page_count").fetchall()
            (free,), = conn.execute("PRAGMA freelist_count").fetchall()
            (page,), = conn.execute("PRAGMA page_size").fetchall()
        finally:
            conn.close()
        return (pages - free) * page / MIB, left, pages, page

    with ExitStack() as stack:
        server = start_cimid(workdir, "meters-1m-trim", state_dir, extra_config="[meters]\nmax_database_mb = 32\n")
        stack.callback(server.stop)
        deadline = time.monotonic() + 60  # the sweep runs at start-up; wait for it, not for a fixed time
        while in_use()[0] > 32 and time.monotonic() < deadline:
            time.sleep(0.5)
    used, left, pages, page = in_use()
    print(f"  restarted with max_database_mb = 32: {left:,} samples left, {used:.1f} MiB in use "
          f"(the file keeps its {pages * page / MIB:.1f} MiB high-water mark; SQLite reuses the free pages)")
    if used > 32:
        problems.append(f"{used:.1f} MiB in use after trimming to 32 MiB")
    return [
        Figure.measured("meters: 1,000,000 samples, $filter timestamp + $last=100 median", median(latencies), "ms", 2,
                        "<=", 15),
        Figure.measured("meters: 1,000,000 samples, p95", percentile(latencies, 95), "ms", 2),
        Figure.measured("meters: database with 1,000,000 samples", size, "MiB", 1, "<=", limit_mb),
        Figure.measured("meters: in use after trimming to 32 MiB", used, "MiB", 1, "<=", 32),
        Figure.answer("meters: sample queries and trimming", problems),
    ]


def run(workdir: Path, quick: bool) -> list[Figure]:
    return sampler_cost(workdir, quick) + million_samples(workdir, quick)
