"""Talking to systemd: readiness, stopping and watchdog pings sent as datagrams to $NOTIFY_SOCKET (the
protocol of sd_notify(3)), and log lines the journal can file by priority. Outside systemd (no
NOTIFY_SOCKET, no JOURNAL_STREAM) every call here does nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import MutableMapping

log = logging.getLogger("cimid.systemd")

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # no timestamp: journald and terminals add their own
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class ServiceManager:
    """cimid's side of the notify socket. The environment is read once and the variables removed, so the
    commands cimid runs (qemu-img, lvm, dnsmasq) never notify in its name."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ):
        self.address = _socket_address(environ.pop("NOTIFY_SOCKET", ""))
        usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        # Ping at half the interval systemd allows, and only if the watchdog is ours (not a parent's).
        self.watchdog_interval: float | None = None
        if self.address is not None and usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_interval = int(usec) / 2e6 if int(usec) > 0 else None
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
        self._failing = False

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; False (and a warning, once) if systemd did not get it.
        Never raises: a service manager that went away must not take the API down with it."""
        if self.address is None:
            return False
        try:
            # A socket per message, as sd_notify does: nothing to go stale if systemd re-executes.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Connected, a full queue makes send() wait for room: a moment's stall of the loop, not a
                # lost READY=1; the timeout bounds it if systemd is wedged.
                sock.settimeout(1.0)
                sock.connect(self.address)
                sock.send("\n".join(fields).encode())
        except OSError as exc:
            if not self._failing:
                log.warning("systemd notification %s not sent: %s", fields[0], exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def start_watchdog(self) -> asyncio.Task | None:
        """Ping from a task of the running loop: if the loop is stuck, the pings stop and systemd restarts
        cimid after WatchdogSec."""
        if self.watchdog_interval is None:
            return None
        return asyncio.get_running_loop().create_task(self._ping(self.watchdog_interval))

    async def _ping(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def _socket_address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@"):  # Linux abstract namespace
        return b"\0" + value[1:].encode()
    if value:
        log.warning("ignoring NOTIFY_SOCKET=%r: only unix socket paths and @abstract names are supported", value)
    return None


class _JournalFormatter(logging.Formatter):
    """Prefix each line with its syslog priority (`<6>`), which journald reads and strips."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{priority}>" + super().format(record)


def stderr_is_journal(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Is stderr connected to journald? systemd sets JOURNAL_STREAM to its device:inode (systemd.exec(5))."""
    try:
        dev, ino = (int(n) for n in environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def stderr_log_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter((_JournalFormatter if stderr_is_journal() else logging.Formatter)(LOG_FORMAT))
    return handler
