"""The federation's certificate authority (`cimid cluster certificate`) and the TLS contexts its members
use with each other.

One CA signs every member: nodes (their HTTPS server certificate), fronts (the client certificate they
show nodes) and etcd members and clients. Each certificate is good for both ends of a connection
(serverAuth and clientAuth), names its holder in the subject CN and carries the addresses given as
subjectAltNames. The CA's key stays in the directory it was made in; copy only `ca.crt`,
`<name>.crt` and `<name>.key` to each machine.

A node recognises a front by its certificate's issuer (the federation CA): such a connection is a
federated one, and the client's own `Authorization`, which the front passes on, says who asks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
from pathlib import Path

from ..config import ConfigError

CA_VALID_DAYS = 3650
VALID_DAYS = 825  # members are reissued; the CA outlives them
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _write(path: Path, data: bytes, mode: int) -> None:
    """A new file with `mode` from the start; an existing one is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def issue(directory: Path, name: str, addresses: list[str]) -> tuple[Path, Path, bool]:
    """Make `directory`/ca.crt and ca.key if missing, then `name`.crt and `name`.key signed by that CA.
    Returns (certificate, key, whether the CA was made now). Never overwrites a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not NAME.match(name) or name == "ca":
        raise ConfigError(f"'{name}' is not a usable certificate name (letters, digits, '.', '_', '-'; not 'ca')")
    alt_names: list[x509.GeneralName] = []
    for address in addresses:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*][A-Za-z0-9.-]*$", address):
                raise ConfigError(f"'{address}' is neither an IP address nor a DNS name") from None
            alt_names.append(x509.DNSName(address))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if cert_path.exists() or key_path.exists():
        raise ConfigError(f"{cert_path} or {key_path} exists already: remove both to issue a new pair")
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    now = dt.datetime.now(dt.UTC)
    made_ca = False
    if not ca_cert_path.exists():
        if ca_key_path.exists():
            raise ConfigError(f"{ca_key_path} exists without {ca_cert_path}: remove it to make a new CA")
        ca_key = ec.generate_private_key(ec.SECP384R1())
        # A random serial in the CA's name: two federations' CAs never look alike to a node.
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cimid"),
                             x509.NameAttribute(NameOID.COMMON_NAME,
                                                f"cimid federation CA {x509.random_serial_number():x}"[:64])])
        ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                           crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA384()))
        _write(ca_key_path, ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
        _write(ca_cert_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
        made_ca = True
    try:
        ca = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the CA in {directory}: {exc.strerror} ({exc.filename})") from None
    except ValueError as exc:
        raise ConfigError(f"the CA in {directory} is not a PEM certificate and key: {exc}") from None
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cimid"),
                                        x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA384())
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path, made_ca


def client_context(ca: str, certificate: str, key: str) -> ssl.SSLContext:
    """What a front uses towards nodes: it checks the node's certificate against the federation CA (and
    the node's address against its names) and shows its own."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use cluster.tls_ca {ca} with cluster.tls_certificate {certificate} and "
                          f"cluster.tls_key {key}: {exc}") from None
    return context

