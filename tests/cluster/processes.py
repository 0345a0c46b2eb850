"""cimid processes for the federation tests: nodes (`cimid serve` with [cluster]) and fronts
(`cimid front`), each on a loopback port or on an address of a test-made namespace (`netns`; served in
clear there, which only that private network sees), stopped by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cluster.namespaces import in_netns
from ports import free_port

CIMID = [sys.executable, "-m", "cimid.cli"]


def _toml(value) -> str:
    return json.dumps(value)  # a TOML basic string, number, boolean or array of strings is JSON too


def _cluster_tls(ca: Path | None, name: str) -> str:
    """[cluster] keys for a member of a TLS federation; its certificate is issued on first use."""
    if ca is None:
        return ""
    if not (ca / f"{name}.crt").exists():
        from cimid.cluster.certs import issue
        issue(ca, name, ["127.0.0.1", "localhost"])
    return (f"tls_ca = {_toml(str(ca / 'ca.crt'))}\ntls_certificate = {_toml(str(ca / f'{name}.crt'))}\n"
            f"tls_key = {_toml(str(ca / f'{name}.key'))}\n")


def _users(users: dict[str, str] | None) -> str:
    from cimid.http.auth import hash_password
    return "".join(f'[[auth.users]]\nname = {_toml(name)}\nrole = "admin"\n'
                   f'password_hash = {_toml(hash_password(password, 1000))}\n' for name, password in (users or {}).items())


class Process:
    def __init__(self, command: list[str], log: Path, env: dict | None = None):
        self.command, self.log, self.env = command, log, env
        self.popen: subprocess.Popen | None = None

    def start(self) -> str:
        """Start and wait for the JSON line saying where it serves; that URL."""
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log,
                                          env={**os.environ, **(self.env or {})})
        line = self.popen.stdout.readline()
        if not line:
            self.popen.wait()
            raise RuntimeError(f"{self.command} exited: {self.log.read_text()[-3000:]}")
        return json.loads(line)["cloudEntryPoint"]

    def signal(self, sig: int) -> None:
        os.kill(self.popen.pid, sig)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen is not None:
            self.popen.stdout.close()


class Node(Process):
    """A sandbox cimid node registered in the federation as `name`."""

    def __init__(self, base: Path, name: str, endpoints: list[str], lease_ttl: int = 10,
                 etcd_timeout: float = 1.0, cpu_allocation_ratio: float = 4.0, ca: Path | None = None,
                 netns: str | None = None, host: str = "127.0.0.1", api_level: int = 0,
                 users: dict[str, str] | None = None):
        """users: consumers of the node's own, name -> password, each an admin."""
        self.name, self.port = name, 8080 if netns else free_port()
        self.url = f"{'https' if ca else 'http'}://{host}:{self.port}"
        state = base / name
        state.mkdir(parents=True, exist_ok=True)
        config = state / "cimid.toml"
        config.write_text(f"""profile = "sandbox"
[server]
listen = "{host}:{self.port}"
insecure = {_toml(netns is not None)}
log_requests = false
[store]
synchronous = "NORMAL"
[meters]
sampling = false
[cluster]
endpoints = {_toml(endpoints)}
node = {_toml(name)}
lease_ttl = {lease_ttl}
etcd_timeout = {etcd_timeout}
cpu_allocation_ratio = {cpu_allocation_ratio}
api_level = {api_level}
{_cluster_tls(ca, name)}{_users(users)}""")
        if ca:  # the node serves HTTPS with its certificate of the federation CA
            config.write_text(config.read_text().replace(
                "[server]\n", f"[server]\ntls = true\ntls_certificate = {_toml(str(ca / f'{name}.crt'))}\n"
                              f"tls_key = {_toml(str(ca / f'{name}.key'))}\n", 1))
        super().__init__(in_netns(netns, [*CIMID, "serve", "--config", str(config), "--state-dir", str(state)]),
                         base / f"{name}.log")


class Front(Process):
    def __init__(self, base: Path, name: str, endpoints: list[str], strict: bool = False,
                 node_timeout: float = 2.0, public_base_url: str = "", reconcile_seconds: float = 30.0,
                 lease_ttl: int = 10, reservation_seconds: float = 60.0, ca: Path | None = None,
                 netns: str | None = None, host: str = "127.0.0.1", port: int | None = None):
        self.name, self.port = name, port or free_port()
        self.url = f"{'https' if ca else 'http'}://{host}:{self.port}"
        config = base / f"{name}.toml"
        config.write_text(f"""[cluster]
endpoints = {_toml(endpoints)}
lease_ttl = {lease_ttl}
etcd_timeout = 1.0
[front]
listen = "{host}:{self.port}"
strict = {_toml(strict)}
node_timeout = {node_timeout}
public_base_url = {_toml(public_base_url)}
reconcile_seconds = {reconcile_seconds}
reservation_seconds = {reservation_seconds}
""".replace("[front]\n", f"{_cluster_tls(ca, name)}[front]\n"))
        if ca:  # HTTPS towards clients too, with the same certificate
            config.write_text(config.read_text() + f"[server]\ntls = true\ntls_certificate = "
                              f"{_toml(str(ca / f'{name}.crt'))}\ntls_key = {_toml(str(ca / f'{name}.key'))}\n")
        if netns and not ca:
            config.write_text(config.read_text() + "[server]\ninsecure = true\n")
        super().__init__(in_netns(netns, [*CIMID, "front", "--config", str(config)]), base / f"{name}.log")
