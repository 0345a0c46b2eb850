"""A TLS federation, with real processes on loopback: every certificate from `cimid cluster certificate`,
etcd asking clients for certificates of the federation CA, nodes serving HTTPS, and a front that serves
HTTPS, shows its certificate to the nodes and checks theirs. Whoever has no certificate of that CA reaches neither
etcd nor a node's federated side, and a refused request changes nothing."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time

import aiohttp
import pytest

from cimid.cli import main
from cimid.cluster.etcd import Etcd, EtcdUnavailable
from cimid.cluster.node import API_LEVEL, FRONT_HEADER

from cluster.etcd_harness import EtcdCluster
from cluster.processes import Front, Node

pytestmark = pytest.mark.federation


class TlsFederation:
    def __init__(self, base):
        self.ca = base / "ca"
        self.etcd = EtcdCluster(base / "etcd", size=1, ca=self.ca)
        self.etcd.base.mkdir()
        self.nodes = [Node(base, f"n{i}", self.etcd.endpoints, lease_ttl=4, ca=self.ca) for i in (1, 2)]
        self.front = Front(base, "front", self.etcd.endpoints, ca=self.ca)
        # a second CA, as a stranger would make one
        self.other = base / "other"
        main(["cluster", "certificate", "--dir", str(self.other), "stranger", "127.0.0.1"])

    def start(self):
        self.etcd.start()
        for process in (*self.nodes, self.front):
            process.start()

    def stop(self):
        for process in (self.front, *self.nodes):
            process.stop()
        self.etcd.stop()

    def client_context(self, ca_dir, name: str | None) -> ssl.SSLContext:
        """Trusts the federation CA; shows `name`'s certificate of `ca_dir` (none with None)."""
        context = ssl.create_default_context(cafile=str(self.ca / "ca.crt"))
        if name is not None:
            context.load_cert_chain(ca_dir / f"{name}.crt", ca_dir / f"{name}.key")
        return context


@pytest.fixture(scope="module")
async def federation(tmp_path_factory):
    fed = TlsFederation(tmp_path_factory.mktemp("tls-federation"))
    try:
        await asyncio.to_thread(fed.start)
        # clients reach the front over HTTPS too, trusting the federation CA
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=fed.client_context(fed.ca, None))) \
                as session:
            fed.session = session
            deadline = time.monotonic() + 20
            while True:  # both nodes registered and answering the front
                async with session.get(f"{fed.front.url}/cimi/machines") as reply:
                    if reply.status == 200 and "Warning" not in reply.headers and \
                            await _registered(fed) == 2:
                        break
                assert time.monotonic() < deadline, "the TLS federation did not come up"
                await asyncio.sleep(0.2)
            yield fed
    finally:
        await asyncio.to_thread(fed.stop)


async def _registered(fed) -> int:
    etcd = Etcd.from_config({"endpoints": fed.etcd.endpoints, "etcd_timeout": 2.0, "etcd_server_name": "etcd",
                             "tls_ca": str(fed.ca / "ca.crt"), "tls_certificate": str(fed.ca / "front.crt"),
                             "tls_key": str(fed.ca / "front.key")})
    await etcd.connect()
    try:
        entries, _ = await etcd.get_prefix("/cimid/v1/nodes/")
        return len(entries)
    finally:
        await etcd.close()


async def test_creates_reads_and_lists_go_through_the_front_over_mutual_tls(federation):
    fed = federation
    ids = []
    for i in range(4):
        async with fed.session.post(f"{fed.front.url}/cimi/machines", json={
                "name": f"tls{i}",
                "machineTemplate": {"href": f"{fed.front.url}/cimi/machineTemplates/small-tiny-linux"}}) as reply:
            assert reply.status in (201, 202), await reply.text()
            ids.append(reply.headers["Location"])
    for url in ids:
        assert url.startswith(f"{fed.front.url}/cimi/machines/")
        async with fed.session.get(url) as reply:
            assert reply.status == 200
            assert (await reply.json())["id"] == url
    async with fed.session.get(f"{fed.front.url}/cimi/machines") as reply:
        text = await reply.text()
        assert reply.status == 200 and "Warning" not in reply.headers
    doc = json.loads(text)
    assert doc["count"] == 4 and {m["id"] for m in doc["machines"]} == set(ids)
    assert fed.front.url.startswith("https://")
    assert not any(node.url in text for node in fed.nodes)  # no node address leaks
    # the creates were spread: each node has some, over HTTPS
    counts = []
    for node in fed.nodes:
        async with fed.session.get(f"{node.url}/cimi/machines",
                                   ssl=fed.client_context(fed.ca, None)) as reply:
            counts.append((await reply.json())["count"])
    assert sorted(counts) == [2, 2]


async def test_etcd_refuses_clients_without_a_certificate_of_the_federation_ca(federation):
    fed = federation
    stranger = Etcd(fed.etcd.endpoints, timeout=1.0, tls=(str(fed.ca / "ca.crt"), str(fed.other / "stranger.crt"),
                                                          str(fed.other / "stranger.key")))
    await stranger.connect()
    try:
        with pytest.raises(EtcdUnavailable):
            await stranger.get("/cimid/v1/nodes/n1")
    finally:
        await stranger.close()
    plain = Etcd([e.replace("https://", "http://") for e in fed.etcd.endpoints], timeout=1.0)
    await plain.connect()
    try:
        with pytest.raises(EtcdUnavailable):
            await plain.get("/cimid/v1/nodes/n1")
    finally:
        await plain.close()
    assert await _registered(fed) == 2  # the front's certificate does reach it


async def _machine_count(fed, node) -> int:
    async with fed.session.get(f"{node.url}/cimi/machines", ssl=fed.client_context(fed.ca, None)) as reply:
        return (await reply.json())["count"]


async def test_a_node_takes_front_requests_only_from_a_front_certificate(federation):
    fed = federation
    node = fed.nodes[0]
    before = await _machine_count(fed, node)
    create = {"resourceURI": "http://schemas.dmtf.org/cimi/1/MachineCreate", "name": "forged",
              "machineTemplate": {"href": f"{node.url}/cimi/machineTemplates/small-tiny-linux"}}
    # without a certificate: refused; with a certificate of another CA: the handshake itself fails
    async with fed.session.post(f"{node.url}/cimi/machines", json=create, headers={FRONT_HEADER: "forged"},
                                ssl=fed.client_context(fed.ca, None)) as reply:
        assert reply.status == 403
        error = await reply.text()  # a failed Job, as any refused create
        assert FRONT_HEADER in error and "cluster.tls_ca" in error
    with pytest.raises(aiohttp.ClientError):
        async with fed.session.post(f"{node.url}/cimi/machines", json=create, headers={FRONT_HEADER: "forged"},
                                    ssl=fed.client_context(fed.other, "stranger")) as reply:
            await reply.read()
    assert await _machine_count(fed, node) == before
    # the same request with a front's certificate is a federated one, and is served
    async with fed.session.post(f"{node.url}/cimi/machines", json=create, headers={FRONT_HEADER: "test"},
                                ssl=fed.client_context(fed.ca, "front")) as reply:
        assert reply.status in (201, 202), await reply.text()
    assert await _machine_count(fed, node) == before + 1


async def test_the_front_refuses_a_node_whose_certificate_the_federation_ca_did_not_sign(tmp_path):
    """A front checks the node it talks to: a stranger's HTTPS server is not a node."""
    from cimid.cluster.certs import client_context
    main(["cluster", "certificate", "--dir", str(tmp_path / "ours"), "front", "127.0.0.1"])
    main(["cluster", "certificate", "--dir", str(tmp_path / "theirs"), "impostor", "127.0.0.1"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "theirs" / "impostor.crt", tmp_path / "theirs" / "impostor.key")
    served = asyncio.Event()

    async def handle(reader, writer):
        served.set()
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    context = client_context(str(tmp_path / "ours" / "ca.crt"), str(tmp_path / "ours" / "front.crt"),
                             str(tmp_path / "ours" / "front.key"))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{port}/cimi/cloudEntryPoint")
    finally:
        listener.close()
        await listener.wait_closed()


async def test_cluster_status_speaks_tls_to_etcd(federation):
    fed = federation
    config = fed.front.command[fed.front.command.index("--config") + 1]
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "cimid.cli", "cluster", "status",
                                                    "--config", config], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ", leader, version 3." in done.stdout
    for node in fed.nodes:
        assert f"  {node.name}: ready, {node.url}, api_level {API_LEVEL}" in done.stdout
