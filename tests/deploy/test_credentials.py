"""Tests for fedrec.deploy.credentials: a CA, a server certificate, device keys, no openssl."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedrec.deploy.credentials import make_device_key, make_server_credentials, public_key_of


def test_the_server_certificate_chains_to_the_ca_for_every_host(tmp_path: Path) -> None:
    made = make_server_credentials(tmp_path, ["link.example.org", "203.0.113.7", "::1"])
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(made.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["link.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [  # loopback: the operator's commands
        ipaddress.ip_address("203.0.113.7"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    key = serialization.load_pem_private_key(made.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == server.public_key().public_numbers()  # type: ignore[union-attr]
    assert made.ca_key.stat().st_mode & 0o777 == 0o600
    assert made.server_key.stat().st_mode & 0o777 == 0o600


def test_existing_credentials_are_never_replaced(tmp_path: Path) -> None:
    made = make_server_credentials(tmp_path)
    before = made.ca_cert.read_bytes()
    with pytest.raises(FileExistsError, match="devices trust this CA"):
        make_server_credentials(tmp_path)
    assert made.ca_cert.read_bytes() == before
    with pytest.raises(ValueError, match="at least one host"):
        make_server_credentials(tmp_path / "other", [" "])


def test_a_device_key_is_ecdsa_p384_in_openssh_format(tmp_path: Path) -> None:
    made = make_device_key(tmp_path / "device-000", "device-000")
    key = serialization.load_ssh_private_key(made.private.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    line = made.public.read_text().strip()
    assert line.startswith("ecdsa-sha2-nistp384 ") and line.endswith(" device-000")
    assert line.split()[:2] == public_key_of(made.private).split()
    assert made.private.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError, match="keeps its key"):
        make_device_key(tmp_path / "device-000")


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "p256"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="needs an ECDSA P-384 key"):
        public_key_of(path)
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(ValueError, match="not an unencrypted OpenSSH private key"):
        public_key_of(tmp_path / "junk")
