"""Loopback ports for the daemons the tests start (cimid, etcd members, fronts, proxies)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_given: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port nobody listens on, never given twice in this process, and below the kernel's
    ephemeral range: a port the kernel hands out (bind to 0) can be taken again as the source port of any
    outgoing connection (etcd members dial each other while the next member starts) before the daemon it
    was meant for binds it."""
    top = min(_ephemeral_start(), 65536) - 1
    while True:
        port = random.randint(10000, top)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
