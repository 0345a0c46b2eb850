"""HTTPS: the server's certificate (made self-signed on first start when none is configured), its
SSLContext, and the name a verified client certificate stands for.

- With `server.tls_certificate` and `server.tls_key` empty, the certificate is `<state_dir>/server.crt`
  with its key in `server.key` (mode 0600). If neither exists, cimid makes them once (ECDSA P-384, ten
  years, as Incus does) and the fingerprint stays the same across restarts. Configured files are never
  made: a missing one is a configuration error.
- The fingerprint is the SHA-256 of the certificate's DER bytes in lowercase hex, as Incus prints it
  (`openssl x509 -noout -fingerprint -sha256` shows the same digits, upper case with colons).
- With `server.tls_client_ca`, the server asks for a client certificate but does not require one
  (Basic auth still works). A certificate that does not chain to that CA fails the TLS handshake
  itself, so no HTTP request is ever read from it. A verified one stands for the user named by its
  subject's common name (CN).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..config import Config, ConfigError

VALID_DAYS = 3650


@dataclass(frozen=True)
class ServerCertificate:
    certificate: Path
    key: Path
    fingerprint: str
    not_after: dt.datetime
    made_now: bool = False  # made self-signed by this call


def certificate_paths(config: Config) -> tuple[Path, Path, bool]:
    """(certificate, key, whether cimid may make them): configured files, else the state directory's."""
    server = config["server"]
    if server["tls_certificate"]:
        return Path(server["tls_certificate"]).absolute(), Path(server["tls_key"]).absolute(), False
    return config.state_dir / "server.crt", config.state_dir / "server.key", True


def read_certificate(path: Path) -> tuple[str, dt.datetime]:
    """(SHA-256 fingerprint, expiry) of the first certificate in a PEM file."""
    from cryptography import x509
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate: {exc}") from None
    from cryptography.hazmat.primitives.serialization import Encoding
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(), cert.not_valid_after_utc


def existing_certificate(config: Config) -> ServerCertificate | None:
    """The server certificate as it is on disk; None if cimid would make it on the next start."""
    cert, key, makeable = certificate_paths(config)
    if makeable and not cert.exists() and not key.exists():
        return None
    for path, what in ((cert, "certificate"), (key, "key")):
        if not path.exists():
            hint = "" if not makeable else " (remove the other file of the pair to have a new pair made)"
            raise ConfigError(f"the TLS {what} {path} does not exist{hint}")
    fingerprint, not_after = read_certificate(cert)
    return ServerCertificate(cert, key, fingerprint, not_after)


def ensure_certificate(config: Config) -> ServerCertificate:
    """The server certificate, made self-signed in the state directory if none is configured or made yet."""
    found = existing_certificate(config)
    if found is not None:
        return found
    cert, key, _ = certificate_paths(config)
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert_pem, key_pem = self_signed(config.listen[0])
    _write(key, key_pem, 0o600)  # the key first: a certificate on disk always has its key
    _write(cert, cert_pem, 0o644)
    fingerprint, not_after = read_certificate(cert)
    return ServerCertificate(cert, key, fingerprint, not_after, made_now=True)


def self_signed(listen_host: str) -> tuple[bytes, bytes]:
    """A self-signed server certificate and its unencrypted key, both PEM, for this host's names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        address = ipaddress.ip_address(listen_host)
        if not address.is_unspecified and not address.is_loopback:
            names.append(x509.IPAddress(address))
    except ValueError:
        if listen_host not in (hostname, "localhost"):
            names.append(x509.DNSName(listen_host))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cimid"),
                         x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))  # tolerate a client clock that lags
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA384()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a new file whole or not at all (a crash leaves no half key), with `mode` from the start."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def server_context(config: Config, certificate: ServerCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate.certificate, certificate.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the TLS certificate {certificate.certificate} with the key "
                          f"{certificate.key}: {exc}") from None
    client_ca = config["server"]["tls_client_ca"]
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read server.tls_client_ca {client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_OPTIONAL  # clients without a certificate may still use Basic auth
    federation_ca = config["cluster"]["tls_ca"]
    if federation_ca:  # fronts show a certificate of the federation CA (see cimid/cluster/certs.py)
        try:
            context.load_verify_locations(cafile=federation_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read cluster.tls_ca {federation_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


@functools.cache
def ca_subject(ca: str) -> tuple:
    """A CA file's subject, in the form `getpeercert()` gives a peer's issuer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read {ca}: {exc}") from None
    found = context.get_ca_certs()
    if len(found) != 1:
        raise ConfigError(f"{ca} must hold exactly one certificate, the CA's")
    return found[0]["subject"]


def _peer(request: web.Request) -> dict | None:
    transport = request.transport
    return transport.get_extra_info("peercert") if transport is not None else None


# Who asks, as the front that forwards a request authenticated them: "<role> <name, percent-encoded>".
# Believed only on a connection that showed a front's certificate (see from_front).
FRONT_USER_HEADER = "CIMID-User"


def from_front(request: web.Request, federation_ca: str) -> bool:
    """Whether this connection showed a verified certificate of the federation CA (a front's)."""
    peer = _peer(request)
    return bool(peer and federation_ca and peer.get("issuer") == ca_subject(federation_ca))


def client_certificate_name(request: web.Request) -> str | None:
    """The subject CN of the client certificate the TLS layer verified for this connection; None without
    one. A verified certificate with no CN gives "" (a name no user has)."""
    peer = _peer(request)
    if not peer:  # plain HTTP, or no certificate sent
        return None
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""
