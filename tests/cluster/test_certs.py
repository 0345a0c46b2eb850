"""`cimid cluster certificate`: one CA signs every member; what it issues verifies against that CA with
the names asked for, is good as server and as client, and nothing is ever overwritten."""

from __future__ import annotations

import ipaddress
import re
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cimid.cli import main
from cimid.cluster.certs import issue
from cimid.config import ConfigError


def test_the_ca_is_made_once_and_signs_every_certificate(tmp_path, capsys):
    assert main(["cluster", "certificate", "--dir", str(tmp_path), "n1", "10.0.0.11", "node1.example.org"]) == 0
    out = capsys.readouterr().out
    assert "made the federation CA" in out and "issued" in out
    ca = (tmp_path / "ca.crt").read_bytes()
    assert main(["cluster", "certificate", "--dir", str(tmp_path), "front1"]) == 0
    assert "made the federation CA" not in capsys.readouterr().out
    assert (tmp_path / "ca.crt").read_bytes() == ca  # the same CA signs the second one
    for name in ("n1", "front1"):
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"),
                                   str(tmp_path / f"{name}.crt")], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
        assert stat.S_IMODE((tmp_path / f"{name}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "n1.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n1"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.11")]
    assert names.get_values_for_type(x509.DNSName) == ["node1.example.org"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_two_federations_have_cas_a_node_tells_apart(tmp_path):
    issue(tmp_path / "a", "x", [])
    issue(tmp_path / "b", "x", [])
    subjects = {x509.load_pem_x509_certificate((tmp_path / d / "ca.crt").read_bytes()).subject for d in "ab"}
    assert len(subjects) == 2


@pytest.mark.parametrize("name, addresses, message", [
    ("ca", [], "not a usable certificate name"),
    ("../n1", [], "not a usable certificate name"),
    ("n1", ["not an address!"], "neither an IP address nor a DNS name"),
])
def test_bad_names_are_refused_and_nothing_is_made(tmp_path, name, addresses, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        issue(tmp_path / "ca", name, addresses)
    assert not (tmp_path / "ca").exists()


def test_an_existing_certificate_is_never_overwritten(tmp_path, capsys):
    issue(tmp_path, "n1", ["127.0.0.1"])
    before = (tmp_path / "n1.crt").read_bytes(), (tmp_path / "n1.key").read_bytes()
    assert main(["cluster", "certificate", "--dir", str(tmp_path), "n1"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert ((tmp_path / "n1.crt").read_bytes(), (tmp_path / "n1.key").read_bytes()) == before
    (tmp_path / "ca.crt").unlink()  # a key without its certificate is not silently replaced
    with pytest.raises(ConfigError, match="exists without"):
        issue(tmp_path, "n2", [])
    assert not (tmp_path / "n2.crt").exists()
