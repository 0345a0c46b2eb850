"""HTTPS with a test CA made here: the server certificate is trusted, hrefs say https, a client certificate
from the trusted CA logs in as the user its CN names (with that user's role), one from another CA fails the
handshake; the self-signed certificate of `cimid serve`; the refusal to listen beyond loopback in clear."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cimid.config import ConfigError, load
from cimid.daemon import build_app
from cimid.http.auth import hash_password
from cimid.http.tls import ensure_certificate, server_context
from ports import free_port

CIMI = "http://schemas.dmtf.org/cimi/1"


class TestCA:
    """A certificate authority for one test: issues server and client certificates as PEM files."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, directory: Path, name: str):
        self.directory, self.key = directory, ec.generate_private_key(ec.SECP256R1())
        self.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (self._builder(self.subject, self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = self._write(name.replace(" ", "-") + "-ca.crt", self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1)))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def issue(self, common_name: str, *, server: bool = False) -> tuple[Path, Path]:
        """(certificate file, key file) for `common_name`, signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = self._builder(subject, key.public_key()).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = f"{self.directory.name}-{common_name}"
        return (self._write(f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{stem}.key", key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption())))


def client_context(ca: TestCA, certificate: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.path))
    if certificate:
        context.load_cert_chain(*certificate)
    return context


def basic(name: str, password: str) -> str:
    import base64
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


@pytest.fixture
async def https(tmp_path):
    """cimid's application served over HTTPS on 127.0.0.1 with a certificate from `ca`, client certificates
    from the same CA accepted, users alice (admin) and bob (reader)."""
    (tmp_path / "pki").mkdir()
    ca = TestCA(tmp_path / "pki", "cimid test CA")
    server_cert, server_key = ca.issue("localhost", server=True)
    users = [{"name": "alice", "role": "admin", "password_hash": hash_password("a-pass", iterations=1000)},
             {"name": "bob", "role": "reader", "password_hash": hash_password("b-pass", iterations=1000)}]
    config = load(state_dir=tmp_path / "state", overrides={
        "server": {"tls": True, "tls_certificate": str(server_cert), "tls_key": str(server_key),
                   "tls_client_ca": str(ca.path), "log_requests": False},
        "auth": {"users": users}})
    certificate = ensure_certificate(config)
    assert not certificate.made_now  # configured files are used, never replaced
    server = TestServer(build_app(config))
    await server.start_server(ssl=server_context(config, certificate))
    server.ca = ca
    yield server
    await server.close()


async def get(server, context: ssl.SSLContext, path: str = "/cimi/cloudEntryPoint", *, method: str = "GET",
              headers: dict | None = None, body: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, server.make_url(path), ssl=context, json=body,
                                   headers={"Accept": "application/json", **(headers or {})}) as r:
            return r.status, await r.json()


async def test_served_over_https_with_https_hrefs_and_basic_auth_still_works(https):
    assert str(https.make_url("/")).startswith("https://127.0.0.1:")
    status, doc = await get(https, client_context(https.ca), headers={"Authorization": basic("bob", "b-pass")})
    assert status == 200, doc
    base = f"https://127.0.0.1:{https.port}/cimi/"
    assert doc["baseURI"] == base and doc["id"] == base + "cloudEntryPoint"
    assert doc["machines"]["href"] == base + "machines"
    status, listing = await get(https, client_context(https.ca), "/cimi/machineConfigs",
                                headers={"Authorization": basic("bob", "b-pass")})
    assert status == 200 and listing["machineConfigurations"]
    assert all(c["id"].startswith(base) for c in listing["machineConfigurations"])
    # without a certificate and without credentials: the usual 401
    status, doc = await get(https, client_context(https.ca))
    assert status == 401, doc


async def test_an_untrusted_server_certificate_is_refused_by_a_default_client(https):
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get(https, ssl.create_default_context())  # the system CAs do not know the test CA


async def test_a_client_certificate_logs_in_as_the_user_its_cn_names_with_that_users_role(https):
    alice = client_context(https.ca, https.ca.issue("alice"))
    bob = client_context(https.ca, https.ca.issue("bob"))
    config = {"name": "tls-made", "cpu": 1, "memory": 1024}
    status, doc = await get(https, bob, "/cimi/machineConfigs", method="POST", body=config)
    assert status == 403, doc  # bob is a reader: authenticated (not 401), but may not write
    status, doc = await get(https, alice, "/cimi/machineConfigs", method="POST", body=config)
    assert status == 201, doc  # alice is an admin, with no password sent
    # the certificate decides, whatever the Authorization header says
    status, doc = await get(https, bob, "/cimi/machineConfigs", method="POST", body=config,
                            headers={"Authorization": basic("alice", "a-pass")})
    assert status == 403, doc


async def test_a_client_certificate_whose_cn_is_no_user_gets_401(https):
    status, doc = await get(https, client_context(https.ca, https.ca.issue("mallory")))
    assert status == 401 and "'mallory'" in doc["statusMessage"], doc


def exchange(port: int, context: ssl.SSLContext) -> tuple[str, bytes]:
    """Over a raw TLS socket: ("handshake", b"") if the handshake itself fails, else ("answer", the first
    bytes answered to a GET, b"" if the connection ended without an answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            tls = context.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, ConnectionResetError):
            return "handshake", b""
        with tls:
            tls.sendall(b"GET /cimi/cloudEntryPoint HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            try:
                return "answer", tls.recv(12)
            except (ssl.SSLError, ConnectionResetError):
                return "answer", b""


async def test_a_client_certificate_from_another_ca_fails_the_handshake(https, tmp_path):
    (tmp_path / "other").mkdir()
    stranger = TestCA(tmp_path / "other", "another CA").issue("alice")  # the right name, the wrong issuer
    trusted = https.ca.issue("alice")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        contexts = {}
        for name, certificate in (("trusted", trusted), ("stranger", stranger)):
            contexts[name] = client_context(https.ca, certificate)
            contexts[name].minimum_version = contexts[name].maximum_version = version
        assert await asyncio.to_thread(exchange, https.port, contexts["trusted"]) == ("answer", b"HTTP/1.1 200")
        refused = await asyncio.to_thread(exchange, https.port, contexts["stranger"])
        if version is ssl.TLSVersion.TLSv1_2:
            # The server checks a client certificate before it finishes the handshake: that is the refusal.
            assert refused == ("handshake", b""), refused
        else:
            # TLS 1.3: the client's side of the handshake is over when the server checks the certificate,
            # and the server's failed handshake ends the connection before it reads any request.
            assert refused == ("answer", b""), refused


# --- `cimid serve` as a process: the self-signed certificate, the refusal to listen in clear ---


def cimid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cimid.cli", *args], capture_output=True, text=True, timeout=60)


def peer_fingerprint(port: int) -> str:
    """SHA-256 of the certificate the server presents, taken without trusting it (as a client pinning it
    on first contact does)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


async def serve_once(tmp_path: Path, config: Path, port: int) -> str:
    """Start `cimid serve` (host profile, no compute driver), wait for HTTPS, take the certificate's
    fingerprint, stop it with SIGTERM; return its log."""
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cimid.cli", "serve", "--config", str(config), "--profile",
                                 "host", "--state-dir", str(tmp_path / "state"), "--listen", f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                assert proc.poll() is None, log.read_text()
                try:
                    async with session.get(f"https://127.0.0.1:{port}/cimi/cloudEntryPoint", ssl=context) as r:
                        if r.status == 200:
                            assert (await r.json())["baseURI"] == f"https://127.0.0.1:{port}/cimi/"
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("cimid did not answer over HTTPS:\n" + log.read_text())
        presented = await asyncio.to_thread(peer_fingerprint, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert f"fingerprint (SHA-256): {presented}" in text, text
    return text


async def test_serve_makes_a_self_signed_certificate_once_and_keeps_its_fingerprint(tmp_path):
    config = tmp_path / "cimid.toml"
    config.write_text('[server]\ntls = true\nlog_requests = false\n[compute]\ndriver = "none"\n'
                      '[network]\ndriver = ""\n')  # no bridge in the namespace the tests run in
    state = tmp_path / "state"
    checked = cimid("check", "--config", str(config), "--profile", "host", "--state-dir", str(state))
    assert "tls: no certificate yet" in checked.stdout, checked.stdout
    assert not (state / "server.crt").exists()  # check never makes it

    port = free_port()
    first = await serve_once(tmp_path, config, port)
    assert "made a self-signed TLS certificate" in first
    fingerprint = re.search(r"fingerprint \(SHA-256\): ([0-9a-f]{64})", first).group(1)
    assert (state / "server.key").stat().st_mode & 0o077 == 0  # the key is readable by its owner only
    made = (state / "server.crt").read_bytes()

    second = await serve_once(tmp_path, config, port)
    assert "made a self-signed" not in second
    assert f"fingerprint (SHA-256): {fingerprint}" in second
    assert (state / "server.crt").read_bytes() == made

    checked = cimid("check", "--config", str(config), "--profile", "host", "--state-dir", str(state))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"fingerprint (SHA-256): {fingerprint}" in checked.stdout


def test_a_lone_certificate_or_key_in_the_state_dir_is_an_error_not_replaced(tmp_path):
    config = load(state_dir=tmp_path, overrides={"server": {"tls": True}})
    (tmp_path / "server.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="server.key does not exist"):
        ensure_certificate(config)
    assert (tmp_path / "server.crt").read_text() == "not a certificate"


def test_listening_beyond_loopback_in_clear_or_without_users_is_refused(tmp_path):
    config = tmp_path / "cimid.toml"
    users = '[[auth.users]]\nname = "alice"\nrole = "admin"\npassword_hash = "pbkdf2_sha256$1$00$00"\n'
    # Plain HTTP is refused with the configuration, before anything is made; no one to log in (no
    # configured user, no consumer in the store) is refused at start-up, once the store is open.
    cases = [("", "serves plain HTTP", "clear"), (users, "serves plain HTTP", "clear"),
             ("[server]\ntls = true\n", "has no consumer", "start-up")]
    for text, reason, when in cases:
        config.write_text(text)
        state = tmp_path / f"state-{when}"
        r = cimid("serve", "--config", str(config), "--state-dir", str(state), "--listen", "0.0.0.0:8080")
        assert r.returncode == 2, r.stderr
        assert "refusing to listen on 0.0.0.0:8080" in r.stderr and reason in r.stderr, r.stderr
        assert "server.insecure = true" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "state-clear").exists()
    # TLS and users together are enough; so is insecure = true; loopback in clear stays the default
    load(listen="0.0.0.0:8443", overrides={"server": {"tls": True}, "auth": {"users": [
        {"name": "alice", "role": "admin", "password_hash": "x"}]}})
    load(listen="[::]:8080", overrides={"server": {"insecure": True}})
    for loopback in ("127.0.0.1:8080", "[::1]:8080", "localhost:8080", "127.0.0.2:8080"):
        load(listen=loopback)
    with pytest.raises(ConfigError, match="refusing to listen on 192.0.2.1:8080"):
        load(listen="192.0.2.1:8080")
    with pytest.raises(ConfigError, match="refusing to listen on cimid.example:8080"):
        load(listen="cimid.example:8080")  # a name could resolve to anything


def test_insecure_true_lets_serve_past_the_check(tmp_path):
    """`cimid check` runs the same configuration checks as `cimid serve` without binding the port (these
    tests only touch loopback)."""
    config = tmp_path / "cimid.toml"
    config.write_text('[server]\nlisten = "0.0.0.0:8080"\ninsecure = true\n[compute]\ndriver = "none"\n')
    r = cimid("check", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 0 and "config: ok" in r.stdout, r.stdout + r.stderr
    config.write_text('[server]\nlisten = "0.0.0.0:8080"\n[compute]\ndriver = "none"\n')
    r = cimid("check", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 2 and "refusing to listen" in r.stderr


def test_tls_settings_that_cannot_work_are_config_errors(tmp_path):
    for overrides, needle in (({"tls_certificate": "/c.pem"}, "server.tls is false"),
                              ({"tls": True, "tls_certificate": "/c.pem"}, "go together"),
                              ({"tls": True, "public_base_url": "http://cloud.example"}, "must be an https URL")):
        with pytest.raises(ConfigError, match=needle):
            load(state_dir=tmp_path, overrides={"server": overrides})
    config = load(state_dir=tmp_path, overrides={"server": {"tls": True, "tls_certificate": str(tmp_path / "no.crt"),
                                                            "tls_key": str(tmp_path / "no.key")}})
    with pytest.raises(ConfigError, match="no.crt does not exist"):
        ensure_certificate(config)  # a configured file is never made
    assert not (tmp_path / "no.crt").exists()


async def test_a_federation_certificate_is_a_fronts_and_never_logs_in_as_a_user(tmp_path):
    """A node of a TLS federation also takes certificates of the federation CA (cluster.tls_ca), but
    such a certificate only says a front forwards the request: the Authorization it passes on decides,
    even when the certificate's CN names a user."""
    from cimid.cluster.certs import issue
    (tmp_path / "pki").mkdir()
    ca = TestCA(tmp_path / "pki", "cimid test CA")
    server_cert, server_key = ca.issue("localhost", server=True)
    issue(tmp_path / "federation", "alice", [])  # a front's certificate, with a user's name as CN
    users = [{"name": "alice", "role": "admin", "password_hash": hash_password("a-pass", iterations=1000)},
             {"name": "bob", "role": "reader", "password_hash": hash_password("b-pass", iterations=1000)}]
    config = load(state_dir=tmp_path / "state", overrides={
        "server": {"tls": True, "tls_certificate": str(server_cert), "tls_key": str(server_key),
                   "tls_client_ca": str(ca.path), "log_requests": False},
        "cluster": {"tls_ca": str(tmp_path / "federation" / "ca.crt"),
                    "tls_certificate": str(tmp_path / "federation" / "alice.crt"),
                    "tls_key": str(tmp_path / "federation" / "alice.key")},
        "auth": {"users": users}})
    server = TestServer(build_app(config))
    await server.start_server(ssl=server_context(config, ensure_certificate(config)))
    try:
        front = client_context(ca, (tmp_path / "federation" / "alice.crt", tmp_path / "federation" / "alice.key"))
        body = {"name": "via-front", "cpu": 1, "memory": 1024}
        status, doc = await get(server, front, "/cimi/machineConfigs", method="POST", body=body)
        assert status == 401, doc  # no Authorization: nobody, whatever the CN says
        status, doc = await get(server, front, "/cimi/machineConfigs", method="POST", body=body,
                                headers={"Authorization": basic("bob", "b-pass")})
        assert status == 403, doc  # bob, a reader
        status, doc = await get(server, front, "/cimi/machineConfigs", method="POST", body=body,
                                headers={"Authorization": basic("alice", "a-pass")})
        assert status == 201, doc
        # a user's own certificate still logs in as its CN
        status, doc = await get(server, client_context(ca, ca.issue("alice")), "/cimi/machineConfigs",
                                method="POST", body={**body, "name": "direct"})
        assert status == 201, doc
    finally:
        await server.close()
