"""One dnsmasq per network, a child of cimid: DHCP on the bridge (and DNS on its gateway unless the network
names DNS servers), host reservations in a dhcp-hostsfile that dnsmasq re-reads on SIGHUP, leases
in a file of the network's directory. The directory is the process's mark: a dnsmasq whose command line
names a directory under cimid's run directory is cimid's, and any other is never touched."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
from pathlib import Path

from cimid.errors import DriverError

LEASE_TIME = "1h"


def config_text(spec, directory: Path) -> str:
    """DHCP for the reservations only (a "static" range): cimid allocates every address itself, so a
    lease always matches an Address resource. DNS: the network's servers if it names some; else dnsmasq
    answers on the gateway, with the guests' names, forwarding the rest to the host's resolvers on a
    PUBLIC network and nowhere on a PRIVATE one."""
    subnet = ipaddress.ip_network(spec.cidr)
    lines = [
        f"interface={spec.bridge}",
        "bind-interfaces",
        "except-interface=lo",
        "no-hosts",  # the host's /etc/hosts is not the guests' business
        "dhcp-authoritative",
        "dhcp-no-override",
        f"dhcp-range={subnet.network_address},static,{subnet.netmask},{LEASE_TIME}",
        f"dhcp-hostsfile={directory / 'hosts'}",
        f"dhcp-optsfile={directory / 'options'}",  # the routes to its forwarding group, re-read on SIGHUP
        f"dhcp-leasefile={directory / 'leases'}",
        f"pid-file={directory / 'dnsmasq.pid'}",
        # PUBLIC (routed) networks give their gateway as the default route; PRIVATE ones no route at all.
        f"dhcp-option=option:router,{spec.gateway}" if spec.network_type == "PUBLIC" and spec.gateway
        else "dhcp-option=option:router",
    ]
    if spec.dns:
        lines += ["port=0", f"dhcp-option=option:dns-server,{','.join(spec.dns)}"]
    elif not spec.gateway:
        lines.append("port=0")  # nowhere to answer DNS on
    elif spec.network_type == "PRIVATE":
        lines.append("no-resolv")  # the guests' own names only: a PRIVATE network reaches nothing else
    if spec.mtu:
        lines.append(f"dhcp-option=option:mtu,{spec.mtu}")
    return "\n".join(lines) + "\n"


def hosts_text(reservations) -> str:
    return "".join(f"{mac},{ip}" + (f",{name}" if name else "") + "\n" for mac, ip, name in reservations)


def options_text(spec, routes: list[str]) -> str:
    """DHCP option 121 (classless static routes): each subnet in `routes` (the other networks of its
    forwarding groups) via the gateway. A client that takes option 121 ignores option 3, so a PUBLIC
    network repeats its default route there."""
    if not routes or not spec.gateway:
        return ""
    pairs = ([f"0.0.0.0/0,{spec.gateway}"] if spec.network_type == "PUBLIC" else []) + \
        [f"{cidr},{spec.gateway}" for cidr in routes]
    return "option:classless-static-route," + ",".join(pairs) + "\n"


def write_files(spec, directory: Path, routes: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "dnsmasq.conf"
    _write(conf, config_text(spec, directory))
    _write(directory / "hosts", hosts_text(spec.reservations))
    _write(directory / "options", options_text(spec, routes))
    (directory / "leases").touch()
    return conf


def configured_as(spec, directory: Path) -> bool:
    """The network's dnsmasq configuration file says what `spec` asks (reservations apart)."""
    try:
        return (directory / "dnsmasq.conf").read_text() == config_text(spec, directory)
    except FileNotFoundError:
        return False


def _write(path: Path, text: str) -> None:
    """Replace the file atomically, unless it already says that (a start after the create wrote it)."""
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Daemon:
    """One network's dnsmasq: a child started here, or one an earlier cimid started and this one took
    over (a restart of cimid does not interrupt DHCP). Its end is seen through a pidfd either way."""

    def __init__(self, pid: int, child: asyncio.subprocess.Process | None = None):
        self.pid, self.child = pid, child

    def alive(self) -> bool:
        if self.child is not None:
            return self.child.returncode is None
        return Path(f"/proc/{self.pid}").exists() and not _zombie(self.pid)

    async def wait(self) -> str:
        """Return, saying how, when the process has ended."""
        if self.child is not None:
            return f"exited with status {await self.child.wait()}"
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return "was gone"
        ended = loop.create_future()
        loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return "exited"

    def reload(self) -> None:
        """Make it re-read the reservations (dhcp-hostsfile)."""
        if self.alive():
            os.kill(self.pid, signal.SIGHUP)

    async def stop(self) -> None:
        if self.child is not None:
            if self.child.returncode is None:
                self.child.terminate()
                try:
                    await asyncio.wait_for(self.child.wait(), 5)
                except asyncio.TimeoutError:
                    self.child.kill()
                    await self.child.wait()
        else:
            await kill(self.pid)


async def start(binary: str, conf: Path) -> Daemon:
    """Start dnsmasq in the foreground (a child cimid can wait on) and return once it serves DHCP (it
    writes its pid file after binding), or raise DriverError with what it said."""
    pid_file = conf.parent / "dnsmasq.pid"
    pid_file.unlink(missing_ok=True)
    log = open(conf.parent / "dnsmasq.log", "ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "--keep-in-foreground", f"--conf-file={conf}", "--user=root", "--group=root",
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    except OSError as exc:
        raise DriverError(f"cannot run {binary}: {exc}") from None
    finally:
        log.close()
    for _ in range(1000):
        if proc.returncode is not None:
            break
        if pid_file.exists() and pid_file.read_text().strip():
            return Daemon(proc.pid, proc)
        await asyncio.sleep(0.002)
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    said = (conf.parent / "dnsmasq.log").read_text(errors="replace").strip().splitlines()[-3:]
    raise DriverError(f"dnsmasq did not start for {conf.parent.name}: {' '.join(said) or 'no message'}")


def leases(directory: Path) -> dict[str, str]:
    """{mac: ip} of the leases dnsmasq handed out (its lease file: expiry mac ip name client-id)."""
    try:
        text = (directory / "leases").read_text()
    except FileNotFoundError:
        return {}
    found = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            found[fields[1].lower()] = fields[2]
    return found


def running_under(run_dir: Path) -> dict[int, Path]:
    """{pid: network directory} of every dnsmasq whose configuration lies under `run_dir` (cimid's,
    however it was left: a previous cimid's child survives a SIGKILL of cimid)."""
    prefix = f"--conf-file={run_dir}/"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in args:
            text = arg.decode(errors="replace")
            if text.startswith(prefix) and os.path.basename(args[0].decode(errors="replace")) == "dnsmasq":
                found[int(entry.name)] = Path(text[len("--conf-file="):]).parent
    return found


async def kill(pid: int) -> None:
    """End a dnsmasq that is not our child (left by an earlier cimid) and wait until it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(1000):
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        await asyncio.sleep(0.005)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
