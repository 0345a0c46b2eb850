"""A real etcd cluster for the tests: members on loopback ports, or one in each host namespace of a
Topology (cluster/namespaces.py); data in a temporary directory, stopped by PID. `etcd` comes from
Debian's etcd-server (the Makefile's TEST_PACKAGES)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from cluster.namespaces import Topology, in_netns, inside
from ports import free_port


class EtcdCluster:
    """`size` members named m1..mN; `endpoints` are their client URLs. Members can be killed, stopped
    (SIGSTOP), continued and restarted with their data kept."""

    def __init__(self, base: Path, size: int = 3, ca: Path | None = None, network: Topology | None = None):
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd is not installed: apt-get install etcd-server (make test-packages)")
        self.base = base
        # ca: a federation CA directory (`cimid cluster certificate`): clients speak TLS and must show a
        # certificate of it; each member's certificate names 127.0.0.1 and "etcd" (cluster.etcd_server_name)
        self.ca = ca
        self.names = [f"m{i + 1}" for i in range(size)]
        # network: member mi runs in host i's namespace, on its client and peer addresses, standard ports
        self.network = network
        self.client_ports = {n: 2379 if network else free_port() for n in self.names}
        self.peer_ports = {n: 2380 if network else free_port() for n in self.names}
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(n) for n in self.names]

    def endpoint(self, name: str) -> str:
        host = self.network.client_address(self._index(name)) if self.network else "127.0.0.1"
        return f"{'https' if self.ca else 'http'}://{host}:{self.client_ports[name]}"

    def peer_url(self, name: str, port: int) -> str:
        host = self.network.peer_address(self._index(name)) if self.network else "127.0.0.1"
        return f"http://{host}:{port}"

    def netns(self, name: str) -> str | None:
        return self.network.host(self._index(name)) if self.network else None

    def _index(self, name: str) -> int:
        return self.names.index(name) + 1

    def _tls_flags(self, member: str) -> list[str]:
        if self.ca is None:
            return []
        if not (self.ca / f"etcd-{member}.crt").exists():
            from cimid.cluster.certs import issue
            issue(self.ca, f"etcd-{member}", ["127.0.0.1", "etcd"])
        return ["--cert-file", str(self.ca / f"etcd-{member}.crt"), "--key-file", str(self.ca / f"etcd-{member}.key"),
                "--client-cert-auth", "--trusted-ca-file", str(self.ca / "ca.crt")]

    def start(self, name: str | None = None, state: str = "new") -> None:
        for member in [name] if name else self.names:
            peers = ",".join(f"{n}={self.peer_url(n, self.peer_ports[n])}" for n in self.names)
            log = open(self.base / f"{member}.log", "ab")
            self.processes[member] = subprocess.Popen(in_netns(self.netns(member), [
                 "etcd", "--name", member, "--data-dir", str(self.base / member),
                 "--listen-peer-urls", self.peer_url(member, self.peer_ports[member]),
                 "--initial-advertise-peer-urls", self.peer_url(member, self.peer_ports[member]),
                 "--listen-client-urls", self.endpoint(member), "--advertise-client-urls", self.endpoint(member),
                 "--initial-cluster", peers, "--initial-cluster-state", state,
                 "--initial-cluster-token", "cimid-test", "--heartbeat-interval", "100",
                 "--election-timeout", "1000", "--pre-vote",  # as systemd/etcd-cimid.conf.example
                 "--logger", "zap", "--log-level", "warn",
                 *self._tls_flags(member)]),
                stdout=log, stderr=log)
            log.close()
        self.wait_healthy(name)


    def wait_healthy(self, name: str | None = None, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for member in [name] if name else self.names:
            while True:
                try:
                    with self._in(member), urllib.request.urlopen(f"{self.endpoint(member)}/health", timeout=1,
                                                                  context=self._health_context()) as reply:
                        if b'"true"' in reply.read():
                            break
                except OSError:
                    pass
                if self.processes[member].poll() is not None:
                    raise RuntimeError(f"etcd {member} exited: {(self.base / f'{member}.log').read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {member} not healthy after {timeout} s")
                time.sleep(0.1)

    def _in(self, member: str):
        """This thread in the member's namespace (its client address is local there)."""
        netns = self.netns(member)
        return inside(netns) if netns else contextlib.nullcontext()

    def _health_context(self):
        if self.ca is None:
            return None
        import ssl
        context = ssl.create_default_context(cafile=str(self.ca / "ca.crt"))
        if not (self.ca / "harness.crt").exists():
            from cimid.cluster.certs import issue
            issue(self.ca, "harness", [])
        context.load_cert_chain(self.ca / "harness.crt", self.ca / "harness.key")
        return context

    def leader(self) -> str:
        """The member that leads, from etcdctl's view of every live member."""
        live = [n for n in self.names if n in self.processes and self.processes[n].poll() is None]
        status = subprocess.run(in_netns(self.netns(live[0]), [
                                    "etcdctl", "--endpoints", ",".join(self.endpoint(n) for n in live),
                                    "endpoint", "status"]), capture_output=True, text=True, timeout=10,
                                env={**os.environ, "ETCDCTL_API": "3"}).stdout
        for line in status.splitlines():  # url, id, version, db size, is leader, ...
            fields = [f.strip() for f in line.split(",")]
            if len(fields) > 4 and fields[4] == "true":
                return next(n for n in live if self.endpoint(n) == fields[0])
        raise RuntimeError(f"no leader among {live}: {status}")

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def pause(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGCONT)

    def restart(self, name: str) -> None:
        self.start(name, state="existing")

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                os.kill(process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            process.kill()
            process.wait()
