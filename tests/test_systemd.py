"""`cimid serve` under a service manager: READY=1 once the API answers, WATCHDOG=1 pings from the running
daemon, STOPPING=1 and exit status 0 on SIGTERM, checked on a NOTIFY_SOCKET this test listens on; and
nothing changes without one. Log lines carry no timestamp, and a syslog priority when stderr is the
journal."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from cimid.systemd import ServiceManager
from ports import free_port

WAIT = 60.0  # generous: a loaded CI machine may start slowly; nothing here measures time
LOG_LINE = re.compile(r"^(<\d>)?(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")



class NotifyListener:
    """A datagram socket standing in for systemd's: every message with the pid of its sender."""

    def __init__(self, address: str):
        self.address = address  # as NOTIFY_SOCKET spells it
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the kernel tells who sent each one
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: queue.Queue[tuple[int, str]] = queue.Queue()
        self.seen: list[tuple[int, str]] = []
        self._closing = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:  # drain at once: the kernel's queue is short and cimid never blocks on it
        while not self._closing:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = next(struct.unpack("3i", d[:12])[0] for level, kind, d in ancillary
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            self.messages.put((pid, data.decode()))

    def wait_for(self, field: str) -> tuple[int, str]:
        """The next message carrying `field` (e.g. READY=1); the ones before it are kept in `seen`."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                message = self.messages.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(message)
            if field in message[1].split("\n"):
                return message
        raise AssertionError(f"no {field} within {WAIT} s; got {self.seen}")

    def drain(self) -> None:
        while True:
            try:
                self.seen.append(self.messages.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        self._closing = True
        self._reader.join()
        self.sock.close()


class Serve:
    """`cimid serve` on the sandbox profile with the environment systemd would give it."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/cimi/"
        self.log = tmp_path / "cimid.log"
        self.stderr = open(self.log, "ab")
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cimid.cli", "serve", "--state-dir", str(tmp_path / "state"),
             "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env={**clean, **env})

    def entry_point(self) -> dict:
        with urllib.request.urlopen(urllib.request.Request(
                self.base + "cloudEntryPoint", headers={"Accept": "application/json"}), timeout=WAIT) as r:
            assert r.status == 200
            return json.load(r)

    def wait_until_it_answers(self) -> dict:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return self.entry_point()
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("cimid did not answer: " + self.log.read_text()) from None
                time.sleep(0.05)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=WAIT)

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(**env: str) -> Serve:
        started.append(Serve(tmp_path, env))
        return started[-1]
    yield start
    for daemon in started:
        daemon.close()


@pytest.fixture
def listener():
    """A notify socket in the abstract namespace (no path-length limit, nothing left behind)."""
    made = NotifyListener(f"@cimid-test-{uuid.uuid4().hex}")
    yield made
    made.close()


def fields(messages: list[tuple[int, str]]) -> list[str]:
    return [f for _, text in messages for f in text.split("\n")]


def test_ready_once_the_api_answers_then_watchdog_pings_then_stopping_on_sigterm(serve, listener):
    daemon = serve(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="200000")
    pid, ready = listener.wait_for("READY=1")
    assert pid == daemon.proc.pid  # the main process, as NotifyAccess=main requires
    assert "STATUS=serving http://127.0.0.1:" in ready
    assert daemon.entry_point()["resourceURI"].endswith("CloudEntryPoint")  # at once, no retry
    assert "WATCHDOG=1" in fields(listener.seen[:-1])  # pinging already while the store opened
    for _ in range(3):  # and still pinging while it serves
        listener.wait_for("WATCHDOG=1")
        daemon.entry_point()
    assert daemon.terminate() == 0
    listener.wait_for("STOPPING=1")
    listener.drain()
    assert {pid for pid, _ in listener.seen} == {daemon.proc.pid}
    assert fields(listener.seen).count("READY=1") == 1
    assert all(LOG_LINE.match(line) for line in daemon.log_lines()), daemon.log_lines()


def test_no_watchdog_pings_when_the_watchdog_belongs_to_another_process(serve):
    # A path socket this time (the other form of NOTIFY_SOCKET); short, since sun_path is.
    with tempfile.TemporaryDirectory(prefix="cimid-") as short:
        listener = NotifyListener(f"{short}/notify")
        try:
            daemon = serve(NOTIFY_SOCKET=listener.address, WATCHDOG_USEC="200000", WATCHDOG_PID="1")
            listener.wait_for("READY=1")
            daemon.entry_point()
            assert daemon.terminate() == 0
            listener.wait_for("STOPPING=1")
            listener.drain()
        finally:
            listener.close()
    assert "WATCHDOG=1" not in fields(listener.seen)


def test_without_notify_socket_it_serves_and_stops_as_before(serve):
    daemon = serve(WATCHDOG_USEC="200000")
    daemon.wait_until_it_answers()
    assert daemon.terminate() == 0
    lines = daemon.log_lines()
    assert lines and all(LOG_LINE.match(line) and not line.startswith("<") for line in lines), lines
    assert not [line for line in lines if "cimid.systemd" in line], lines


def test_an_absent_service_manager_is_reported_once_and_changes_nothing(serve, tmp_path):
    daemon = serve(NOTIFY_SOCKET=str(tmp_path / "nobody-listens"), WATCHDOG_USEC="200000")
    daemon.wait_until_it_answers()
    daemon.entry_point()
    assert daemon.terminate() == 0
    warnings = [line for line in daemon.log_lines() if "cimid.systemd" in line]
    assert len(warnings) == 1 and "not sent" in warnings[0], warnings


def test_log_lines_carry_a_syslog_priority_when_stderr_is_the_journal(serve, tmp_path):
    log = tmp_path / "cimid.log"
    log.touch()
    st = log.stat()
    daemon = serve(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    daemon.wait_until_it_answers()
    assert daemon.terminate() == 0
    lines = daemon.log_lines()
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    assert lines[0].startswith("<6>INFO cimid: cimid "), lines  # journald files it as info, then strips <6>


def test_the_notify_variables_are_not_passed_on_to_child_processes():
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/"}
    manager = ServiceManager(environ)
    assert environ == {"PATH": "/"}
    assert manager.watchdog_interval == 0.5  # half of what systemd allows
    assert ServiceManager({"NOTIFY_SOCKET": "vsock:2:1234"}).notify("READY=1") is False
