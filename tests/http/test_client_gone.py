"""A client that goes away in the middle of its request's body: one line in the log, no traceback, nothing
changed, and the server goes on answering (a real `cimid serve`: aiohttp's test server cancels the handler
instead, which hides what a real connection does)."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from test_ephemeral import served


@pytest.mark.parametrize("idempotent", [False, True])
def test_a_body_cut_short_by_the_client_is_logged_in_one_line_and_changes_nothing(tmp_path, idempotent):
    with served(tmp_path, "--ephemeral", "--listen", "127.0.0.1:0") as proc:
        entry_point = json.loads(proc.stdout.readline())["cloudEntryPoint"]
        url = urlsplit(entry_point)
        key = "Idempotency-Key: k1\r\n" if idempotent else ""
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(f"POST /cimi/volumes HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                         f"{key}Content-Length: 1000\r\n\r\n{{\"name\": \"cut".encode())
        log = ""
        deadline = time.monotonic() + 30
        while "went away" not in log and time.monotonic() < deadline:  # the server logs as it goes
            if select.select([proc.stderr], [], [], 1)[0]:  # raw reads: nothing waits in a buffer unseen
                log += os.read(proc.stderr.fileno(), 65536).decode()
        with urllib.request.urlopen(entry_point.replace("cloudEntryPoint", "volumes")) as r:
            assert json.loads(r.read())["count"] == 0  # still answering; nothing made
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log += proc.stderr.read()
    assert "Traceback" not in log and "unexpected error" not in log, log
    assert "went away" in log, log
