"""Benchmark 5, for testers: `--ephemeral` start-up against a bare aiohttp server's, a reset with 1,000
Machines present, and 200 tests through the pytest plugin (with and without the reset before each)."""

from __future__ import annotations

import compileall
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import BENCH_DIR, Client, Figure, WrongAnswer, connection, free_port, median

MACHINES = 1000
TESTS = 200
CIMID = [sys.executable, "-m", "cimid.cli", "serve", "--ephemeral", "--test-api", "--listen", "127.0.0.1:0",
         "--config"]


class Ephemeral:
    """`cimid serve --ephemeral --test-api --listen 127.0.0.1:0`, ready when its one stdout line came."""

    def __init__(self, workdir: Path, log_name: str):
        config = workdir / "testers.toml"
        config.write_text("[server]\nlog_requests = false\n")
        self.log = open(workdir / log_name, "wb")  # noqa: SIM115 - closed by stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([*CIMID, str(config)], stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        self.startup_seconds = time.perf_counter() - self.started
        try:
            self.url = json.loads(line)["cloudEntryPoint"]
        except (ValueError, KeyError):
            self.stop()
            raise RuntimeError(f"cimid --ephemeral did not start: see {self.log.name}") from None
        self.port = int(self.url.split(":")[2].split("/")[0])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc.stdout.close()
        self.log.close()


def bare_startup(workdir: Path) -> float:
    """Spawn to first 200 of the bare aiohttp server (bench/bare_server.py), polled every 5 ms."""
    body = workdir / "bare.body"
    body.write_bytes(b"{}")
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "bare_server.py"), "--port", str(port), "--path",
                             "/cimi/cloudEntryPoint", "--body-file", str(body)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the bare aiohttp server exited while starting")
            try:
                conn = connection(port, 2)
                conn.request("GET", "/cimi/cloudEntryPoint")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(30)


def make_machines(port: int, count: int) -> None:
    """`count` STOPPED Machines through the API (8 keep-alive clients at once), every Job finished."""
    errors: list[str] = []
    base = f"http://127.0.0.1:{port}/cimi/"

    def worker(n: int) -> None:
        client = Client(port)
        try:
            for _ in range(n):
                status, _, body = client.request("POST", "/cimi/machines", {"machineTemplate": {
                    "href": base + "machineTemplates/small-tiny-linux", "initialState": "STOPPED"}})
                if status != 202:
                    errors.append(f"POST machines answered {status}: {body[:200]!r}")
                    return
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(count // 8 + (i < count % 8),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise WrongAnswer(errors[0])
    client = Client(port)
    try:
        busy = "/cimi/jobs?%24filter=state%3D%27QUEUED%27%20or%20state%3D%27RUNNING%27&%24first=1&%24last=1"
        while client.get_json(busy)["count"]:
            time.sleep(0.05)
        done = client.get_json("/cimi/machines?%24filter=state%3D%27STOPPED%27&%24first=1&%24last=1")["count"]
        if done != count:
            raise WrongAnswer(f"{done} of {count} Machines are STOPPED after their Jobs")
    finally:
        client.close()


def plugin_suite(workdir: Path, reset: bool) -> tuple[float, str]:
    """Wall time of `pytest` on TESTS tests, each creating one Machine and waiting for its Job, through
    the cimi_provider fixture; and pytest's summary line."""
    suite = workdir / f"suite-{'reset' if reset else 'noreset'}"
    suite.mkdir()
    (suite / "pytest.ini").write_text(f"[pytest]\ncimid_reset = {'true' if reset else 'false'}\n")
    (suite / "test_many.py").write_text(f'''
import json, urllib.request
import pytest


@pytest.mark.parametrize("n", range({TESTS}))
def test_create(cimi_provider, n):
    body = json.dumps({{"machineTemplate": {{"href": cimi_provider.base + "machineTemplates/small-tiny-linux"}}}})
    request = urllib.request.Request(cimi_provider.base + "machines", data=body.encode(), method="POST",
                                     headers={{"Content-Type": "application/json", "Accept": "application/json"}})
    with urllib.request.urlopen(request) as r:
        assert r.status == 202
        job_url = r.headers["CIMI-Job-URI"]
    while True:
        with urllib.request.urlopen(urllib.request.Request(job_url, headers={{"Accept": "application/json"}})) as r:
            job = json.loads(r.read())
        if job["state"] not in ("QUEUED", "RUNNING"):
            break
    assert job["state"] == "SUCCESS"
''')
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)], cwd=suite,
                         capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    if run.returncode != 0 or f"{TESTS} passed" not in summary:
        raise WrongAnswer(f"the {TESTS}-test suite did not pass: {summary}\n{run.stdout[-2000:]}")
    return elapsed, summary


def compiled() -> None:
    """cimid's bytecode, as an installed cimid has it (pip compiles at install). An editable checkout
    compiles its modules on first import and keeps them, unless PYTHONDONTWRITEBYTECODE is set (as on some
    CI machines): then every start compiled about 90 modules again, which is not what a tester's start
    costs. aiohttp, the baseline's only import, is installed and compiled already."""
    for package in ("cimid", "cimid_dir", "cimid_hostmeters", "cimid_libvirt", "cimid_memory"):
        compileall.compile_dir(str(Path(__import__(package).__file__).parent), quiet=1)


def run(workdir: Path, quick: bool) -> list[Figure]:
    starts, resets = (5, 3) if quick else (10, 7)
    figures: list[Figure] = []
    compiled()

    # 1. start-up, interleaved so noise on the machine hits both alike
    cimid_times, bare_times = [], []
    for _ in range(starts):
        bare_times.append(bare_startup(workdir))
        server = Ephemeral(workdir, "ephemeral-start.log")
        cimid_times.append(server.startup_seconds)
        client = Client(server.port)
        try:
            if "machines" not in client.get_json("/cimi/cloudEntryPoint"):
                raise WrongAnswer("the ephemeral CloudEntryPoint lists no machines")
        finally:
            client.close()
            server.stop()
    print(f"  start-up over {starts} interleaved starts, spawn until the first answer:")
    print(f"    cimid serve --ephemeral (its stdout line)  median {median(cimid_times):.3f} s   "
          f"max {max(cimid_times):.3f} s")
    print(f"    bare aiohttp server (polled every 5 ms)    median {median(bare_times):.3f} s   "
          f"max {max(bare_times):.3f} s")
    figures += [Figure.measured("testers: start-up, bare aiohttp (baseline)", median(bare_times), "s", 3),
                Figure.measured("testers: start-up, cimid --ephemeral", median(cimid_times), "s", 3, "<=", 0.5)]

    # 2. reset with 1,000 Machines, made through the API before each sample
    server = Ephemeral(workdir, "ephemeral-reset.log")
    latencies, creating = [], []
    try:
        client = Client(server.port)
        try:
            for _ in range(resets):
                started = time.perf_counter()
                make_machines(server.port, MACHINES)
                creating.append(time.perf_counter() - started)
                started = time.perf_counter()
                status, _, body = client.request("POST", "/cimi/testControl/reset")
                latencies.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    raise WrongAnswer(f"reset answered {status}: {body[:200]!r}")
                left = client.get_json("/cimi/machines?%24first=1&%24last=1")["count"]
                jobs = client.get_json("/cimi/jobs?%24first=1&%24last=1")["count"]
                configs = client.get_json("/cimi/machineConfigs?%24first=1&%24last=1")["count"]
                if (left, jobs, configs) != (0, 0, 4):
                    raise WrongAnswer(f"after a reset: {left} Machines, {jobs} Jobs, {configs} configurations, "
                                      "not 0, 0, 4")
        finally:
            client.close()
    finally:
        server.stop()
    print(f"  reset with {MACHINES:,} Machines (made through the API in {median(creating):.1f} s each time), "
          f"{resets} samples: median {median(latencies):.1f} ms, max {max(latencies):.1f} ms")
    figures += [Figure.measured(f"testers: reset with {MACHINES:,} Machines median", median(latencies), "ms", 1,
                                "<=", 50),
                Figure.measured(f"testers: reset with {MACHINES:,} Machines max", max(latencies), "ms", 1)]

    # 3. 200 tests through the plugin, each a reset (or not) and one Machine create
    with_reset, summary = plugin_suite(workdir, reset=True)
    without_reset, _ = plugin_suite(workdir, reset=False)
    print(f"  {TESTS} tests through the pytest plugin (a reset and one Machine create each): {with_reset:.2f} s "
          f"total, {with_reset / TESTS * 1000:.1f} ms a test, pytest says: {summary}")
    print(f"  the same {TESTS} tests without the reset (cimid_reset = false): {without_reset:.2f} s")
    figures += [Figure.measured(f"testers: {TESTS} plugin tests with a reset each, total", with_reset, "s", 2),
                Figure.measured(f"testers: {TESTS} plugin tests without reset (baseline)", without_reset, "s", 2)]
    return figures
