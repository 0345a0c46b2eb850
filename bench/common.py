"""What the benchmarks share: server subprocesses (cimid and the bare aiohttp baseline), a keep-alive
HTTP client, statistics. Everything runs on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import json
import math
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode

BENCH_DIR = Path(__file__).resolve().parent
MIB = 2 ** 20
# cimid's per-request log line on stderr would otherwise cost more than some handlers it measures.
QUIET_CONFIG = "[server]\nlog_requests = false\n"


class WrongAnswer(Exception):
    """A benchmarked request answered something other than what was asked: the figures mean nothing."""


def free_port() -> int:
    # The kernel picks an unused port; the short race until the server binds it is harmless here.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_string(params: dict[str, str]) -> str:
    # Keep '$' literal in the names (as CIMI writes them); percent-encode everything else in the values.
    return urlencode(params, quote_via=quote, safe="$")


def connection(port: int, timeout: float, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    if context is None:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)


def unverified() -> ssl.SSLContext:
    """For polling a server until it answers: which certificate it shows is checked later, by Client."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


class Client:
    """One keep-alive HTTP/1.1 connection (HTTPS with a context), so latencies measure the server, not
    TCP or TLS handshakes."""

    def __init__(self, port: int, timeout: float = 30.0, context: ssl.SSLContext | None = None,
                 headers: dict[str, str] | None = None):
        self.port, self.scheme = port, "https" if context else "http"
        self.conn = connection(port, timeout, context)
        self.headers = headers or {}  # sent with every request (e.g. Authorization)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
        headers = {**self.headers, **({"Content-Type": "application/json"} if body is not None else {})}
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = self.conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()

    def get_json(self, path: str) -> dict:
        status, _, body = self.request("GET", path)
        if status != 200:
            raise WrongAnswer(f"GET {path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


class Server:
    """A server subprocess: started, waited for, measured, and always stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, ready_path: str, tls: bool = False,
                 headers: dict[str, str] | None = None):
        self.name, self.port, self.log_path, self.ready_path, self.tls = name, port, log_path, ready_path, tls
        self.headers = headers or {}  # for the readiness poll (a server with consumers needs a login)
        self.log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process; stop() closes it
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.startup_seconds: float | None = None

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll ready_path until it answers 200; return the seconds since spawn."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                conn = connection(self.port, 2, unverified() if self.tls else None)
                conn.request("GET", self.ready_path, headers=self.headers)
                if conn.getresponse().status == 200:
                    self.startup_seconds = time.perf_counter() - self.started
                    conn.close()
                    return self.startup_seconds
                conn.close()
            except OSError:
                pass  # not listening yet
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer {self.ready_path} within {timeout:.0f} s:\n{self.log_tail()}")

    def rss_mib(self) -> float:
        import psutil
        proc = psutil.Process(self.proc.pid)
        # cimid is one process (libvirt's test driver is in-process); children are counted in case that changes.
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / MIB

    def cpu_seconds(self) -> float:
        """CPU time used so far, all threads (aiosqlite and libvirt work in threads of their own)."""
        import psutil
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # aiohttp's run_app exits cleanly on SIGTERM (runs cleanup)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def launch(name: str, argv: list[str], port: int, log_path: Path, ready_path: str,
           timeout: float = 60.0, tls: bool = False, headers: dict[str, str] | None = None) -> Server:
    """Start a server and return once `ready_path` answers; stop it again if it never does."""
    server = Server(name, argv, port, log_path, ready_path, tls, headers)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def cimid_config(workdir: Path, name: str, tls: bool = False, extra_config: str = "") -> Path:
    config = workdir / f"{name}.toml"
    config.write_text(QUIET_CONFIG + ("tls = true\n" if tls else "") + extra_config)
    return config


def start_cimid(workdir: Path, name: str, state_dir: Path, timeout: float = 60.0, tls: bool = False,
                headers: dict[str, str] | None = None, extra_config: str = "") -> Server:
    """`cimid serve --profile sandbox` with request logging off; returns once cloudEntryPoint answers
    (asked with `headers`: a store with consumers wants a login). With tls, over HTTPS with the
    self-signed certificate cimid makes in state_dir (server.crt, server.key). `extra_config`: more TOML
    sections, e.g. "[meters]\nsampling = false\n"."""
    config = cimid_config(workdir, name, tls, extra_config)
    port = free_port()
    argv = [sys.executable, "-m", "cimid.cli", "serve", "--config", str(config), "--profile", "sandbox",
            "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}"]
    return launch(name, argv, port, workdir / f"{name}.log", "/cimi/cloudEntryPoint", timeout, tls, headers)


def cimid_command(workdir: Path, name: str, state_dir: Path, *args: str) -> str:
    """Run `cimid ARGS` (e.g. consumer add, token create) on a state dir, the daemon running or not;
    return its standard output."""
    argv = [sys.executable, "-m", "cimid.cli", *args, "--config", str(cimid_config(workdir, name)),
            "--state-dir", str(state_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"cimid {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def start_bare(workdir: Path, name: str, path: str, body: bytes, headers: dict[str, str],
               tls_files: tuple[Path, Path] | None = None) -> Server:
    """The baseline: a bare aiohttp handler answering `path` with fixed bytes and headers (over HTTPS
    with tls_files, a certificate and its key)."""
    body_file = workdir / f"{name}.body"
    body_file.write_bytes(body)
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "bare_server.py"), "--port", str(port), "--path", path,
            "--body-file", str(body_file), *[a for k, v in headers.items() for a in ("--header", f"{k}: {v}")]]
    if tls_files:
        argv += ["--certificate", str(tls_files[0]), "--key", str(tls_files[1])]
    return launch(name, argv, port, workdir / f"{name}.log", path, tls=tls_files is not None)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(math.ceil(pct / 100 * len(ordered)) - 1, 0)]


def median(values: list[float]) -> float:
    return statistics.median(values)


class Figure:
    """One line of the summary: what was measured, its target if the issue sets one, and the verdict."""

    wrong_answer = False  # a wrong answer voids the figures: run.py fails the run for it (never for timings)

    def __init__(self, label: str, shown: str, target: str = "", ok: bool | None = None):
        self.label, self.shown, self.target, self.ok = label, shown, target, ok

    @classmethod
    def measured(cls, label: str, value: float, unit: str, digits: int, op: str = "", limit: float = 0.0):
        shown = f"{value:,.{digits}f} {unit}".rstrip()
        if not op:
            return cls(label, shown)  # a baseline or context figure: no target
        ok = value <= limit if op == "<=" else value >= limit
        return cls(label, shown, f"{op} {limit:g} {unit}".rstrip(), ok)

    @classmethod
    def answer(cls, label: str, problems: list[str]):
        """Whether the answers were right (the problems themselves are printed where they were found)."""
        figure = cls(label, "WRONG" if problems else "right", "right", not problems)
        figure.wrong_answer = bool(problems)
        return figure

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "NO", None: "-"}[self.ok]


def report_answers(problems: dict, checked: str) -> None:
    """Print the wrong answers a latency run met (its figures are then of the wrong thing), or what was
    checked on every request."""
    if problems:
        print("\n  !!!!! WRONG ANSWERS: the latencies above are of requests that answered the wrong thing !!!!!")
        for problem in problems.values():
            print(f"  !!!!! {problem}")
        print()
    else:
        print(f"  answers checked on every request: {checked}")
