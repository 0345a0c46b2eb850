"""cimid's benchmarks: `python bench/run.py [--quick] [--host] [--only NAME]` (or `make bench`).

`--host` adds the real-machine benchmarks (bench_host.py, and bench_volumes.py's hot-plug: root, libvirtd on
qemu:///system, the test guest image; bench_networks.py: root, dnsmasq and nft, in a network namespace it
makes); `--only host` (or get, https, 10k, memory, scoped-get, scoped-10k, testers, meters, volumes,
volumes-host, federation, networks) runs one benchmark alone and leaves bench/RESULTS.md as it was.

Prints figures, never asserts timings: the machine may be shared and noisy, so every target is judged on
medians, and every figure that has a baseline was measured side by side with it in the same run.
The summary is also written as Markdown to bench/RESULTS.md for the README's Performance section.
Exits 1 only when a benchmark failed or a request answered the wrong thing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import aiohttp

import bench_10k
import bench_federation
import bench_get
import bench_host
import bench_memory
import bench_tenancy
import bench_volumes
import bench_testers
import bench_meters
import bench_networks
from common import BENCH_DIR, Figure, WrongAnswer


def environment(quick: bool, host: bool) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs (load {load}), "
            f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, sandbox profile"
            f"{' and host profile (qemu:///system, TCG)' if host else ''}, "
            f"{'quick' if quick else 'full'} run")


def table(figures: list[Figure]) -> list[str]:
    rows = [("Figure", "Measured", "Target", "Meets")] + [(f.label, f.shown, f.target or "-", f.verdict)
                                                         for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def markdown(figures: list[Figure], context: str) -> str:
    lines = ["<!-- written by bench/run.py, overwritten on every run -->",
             (f"Measured by `make bench` on {context}. Servers ran as subprocesses with request logging off; "
              "request rates are medians of interleaved wrk runs, latencies of sequential keep-alive requests; "
              "baselines were measured side by side in the same run."), "",
             "| Figure | Measured | Target | Meets |", "|---|---|---|---|"]
    for f in figures:
        cells = [f.label, f.shown, f.target or "-", f.verdict]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="cimid's benchmarks")
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer samples (noisier figures)")
    parser.add_argument("--host", action="store_true",
                        help="also benchmark real machines on qemu:///system (root, libvirtd, the test guest image)")
    default = ("get", "https", "10k", "memory", "scoped-get", "scoped-10k", "testers", "meters", "volumes",
               "federation")
    host = {"host", "volumes-host", "networks"}
    parser.add_argument("--only", choices=(*default, *sorted(host)), help="run this benchmark alone")
    args = parser.parse_args()
    selected = {args.only} if args.only else set(default) | (host if args.host else set())
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the servers and temp dirs are still cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also through make or a pipe
    context = environment(args.quick, "host" in selected)
    print(f"cimid benchmarks: {context}")
    figures: list[Figure] = []
    failed = False
    rss_10k = None

    def attempt(title: str, label: str, fn):
        """Run one benchmark; a failure is reported and counted, and the others still run."""
        nonlocal failed
        print(f"\n== {title}")
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - report it, run the other benchmarks
            if not isinstance(exc, (WrongAnswer, RuntimeError)):  # those two explain themselves
                traceback.print_exc(file=sys.stdout)  # in order with the report
            print(f"\n  !!!!! {title} FAILED: {exc}")
            figures.append(Figure(label, f"FAILED: {type(exc).__name__}", "", False))
            failed = True
            return None
        print(f"  ({time.perf_counter() - started:.0f} s)")
        return result

    with tempfile.TemporaryDirectory(prefix="cimid-bench-") as tmp:
        workdir = Path(tmp)
        if "get" in selected:
            got = attempt("1. Single-resource GET: cimid against a bare aiohttp server", "GET machine",
                          lambda: bench_get.run(workdir, args.quick))
            figures += got or []
        if "https" in selected:
            got = attempt("1b. Single-resource GET over HTTPS: cimid against a bare aiohttp server",
                          "GET machine over HTTPS", lambda: bench_get.run(workdir, args.quick, tls=True))
            figures += got or []
        if "10k" in selected:
            got = attempt("2. 10,000 Machines: query latency, start-up", "10,000 Machines",
                          lambda: bench_10k.run(workdir, args.quick))
            if got:
                figures += got[0]
                rss_10k = got[1]
        if "memory" in selected:
            got = attempt("3. Memory (resident set size)", "Memory",
                          lambda: bench_memory.run(workdir, args.quick, rss_10k))
            figures += got or []
        if "scoped-get" in selected:
            got = attempt("5. Scoping: GET one machine as its user, against the same GET as an admin",
                          "Scoped GET machine", lambda: bench_tenancy.run_get(workdir, args.quick))
            figures += got or []
        if "scoped-10k" in selected:
            got = attempt("6. Scoping: a user's pages among 10,000 Machines of 20 consumers, against an admin's",
                          "Scoped 10k", lambda: bench_tenancy.run_10k(workdir, args.quick))
            figures += got or []
        if "testers" in selected:
            got = attempt("7. Testers: --ephemeral start-up, reset with 1,000 Machines, 200 plugin tests", "Testers",
                          lambda: bench_testers.run(workdir, args.quick))
            figures += got or []
        if "meters" in selected:
            got = attempt("8. Meters: sampler cost, /metrics, 1,000,000 samples", "Meters",
                          lambda: bench_meters.run(workdir, args.quick))
            figures += got or []
        if "volumes" in selected:
            got = attempt("9a. Volumes: create from a 1 GiB and a 10 GiB VolumeImage (dir overlay), full copy beside",
                          "Volume from image", lambda: bench_volumes.run_create(workdir, args.quick))
            figures += got or []
            got = attempt("9c. Volumes: $filter on capacity among 2,000", "2,000 Volumes",
                          lambda: bench_volumes.run_scale(workdir, args.quick))
            figures += got or []
        if "volumes-host" in selected:
            got = attempt("9b. Volumes: hot-plug POST MachineVolume against plain attachDeviceFlags", "Hot-plug",
                          lambda: bench_volumes.run_hotplug(workdir, args.quick))
            figures += got or []
        if "federation" in selected:
            got = attempt("10. Federation: 3 etcd members, 3 nodes, 2 fronts on loopback", "Federation",
                          lambda: bench_federation.run(workdir, args.quick))
            figures += got or []
        if "host" in selected:
            got = attempt("4. Real machines (host profile): create, start, concurrency", "Host machines",
                          lambda: bench_host.run(workdir, args.quick))
            figures += got or []
        if "networks" in selected:
            got = attempt("11. Networks (bridge driver, in a namespace of its own): create, reconcile, ping",
                          "Networks", lambda: bench_networks.run(workdir, args.quick))
            figures += got or []
        if "volumes-host" in selected:
            # Last: its full copies write 11 GiB through the page cache, and the machine is slower for minutes
            # after (the federation and host figures of a run that had it before them were 1.3-2.6x worse).
            got = attempt("9a'. Volumes: create from a 1 GiB and a 10 GiB image LV (thin snapshot) in the LVM helper guest",
                          "LVM volume from image", lambda: bench_volumes.run_create_lvm(workdir, args.quick))
            figures += got or []

    print("\n== Summary\n")
    print("\n".join(table(figures)))
    if args.only:
        print(f"\n(a single benchmark: {BENCH_DIR / 'RESULTS.md'} left as it was)")
    else:
        (BENCH_DIR / "RESULTS.md").write_text(markdown(figures, context))
        print(f"\n(written to {BENCH_DIR / 'RESULTS.md'})")
    wrong = [f.label for f in figures if f.wrong_answer]
    if wrong:
        print(f"\n!!!!! WRONG ANSWERS in: {', '.join(wrong)}; the figures above them are void")
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
