"""TLS and node-authentication credentials for a Flower deployment, with ``cryptography`` only.

A deployment needs three kinds of material (no ``openssl`` or ``ssh-keygen`` binary):

* a **certificate authority** (``ca.crt``, ``ca.key``): devices trust the SuperLink because its
  certificate chains to this CA (``flower-supernode --root-certificates ca.crt``);
* a **server certificate** (``server.pem``, ``server.key``) signed by the CA, whose subject
  alternative names list every name and address devices dial (``localhost``, ``127.0.0.1`` and
  ``::1`` by default; add the host's DNS name and IP for a real deployment);
* one **device key pair** per SuperNode: ECDSA P-384 in OpenSSH format, what ``ssh-keygen -t
  ecdsa -b 384`` writes. The public half is registered with ``flwr supernode register``; the
  private half stays on the device (``--auth-supernode-private-key``).

Private keys are written 0600 and never overwritten: creating a credential whose file exists
fails with :class:`FileExistsError`, so rerunning a command cannot silently replace a CA that
devices already trust.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrec.common.files import write_atomic

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_HOSTS",
    "SERVER_CERT",
    "SERVER_KEY",
    "DeviceKey",
    "ServerCredentials",
    "make_device_key",
    "make_server_credentials",
    "public_key_of",
]

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
_CURVE = ec.SECP384R1()  # what Flower's node authentication signs with


@dataclass(frozen=True)
class ServerCredentials:
    """Where :func:`make_server_credentials` wrote the CA and the server certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class DeviceKey:
    """One device's authentication key pair (OpenSSH format)."""

    private: Path
    public: Path


def make_server_credentials(
    folder: str | Path, hosts: Sequence[str] = DEFAULT_HOSTS, *, days: int = 365
) -> ServerCredentials:
    """A new CA and a server certificate for ``hosts`` (DNS names or IP addresses) in ``folder``.

    The loopback names are always added: the operator's ``fedrec server`` commands dial the
    SuperLink on its own host. Refuses (FileExistsError, nothing written) if any of the four
    files exists."""
    folder = Path(folder)
    given = [h.strip() for h in hosts if h.strip()]
    if not given:
        raise ValueError("a server certificate needs at least one host name or address")
    names = tuple(dict.fromkeys([*given, *DEFAULT_HOSTS]))
    paths = [folder / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)]
    taken = [str(p) for p in paths if p.exists()]
    if taken:
        raise FileExistsError(
            f"{', '.join(taken)} already exist: keep using them (devices trust this CA), or"
            " choose a new folder"
        )
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(_CURVE)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec deployment CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(_CURVE)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    credentials = ServerCredentials(paths[0], paths[1], paths[2], paths[3], hosts=names)
    write_atomic(credentials.ca_key, _pem_private(ca_key), mode=0o600, exclusive=True)
    write_atomic(credentials.ca_cert, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_atomic(credentials.server_key, _pem_private(server_key), mode=0o600, exclusive=True)
    write_atomic(
        credentials.server_cert, server.public_bytes(serialization.Encoding.PEM), mode=0o644
    )
    return credentials


def make_device_key(path: str | Path, comment: str = "") -> DeviceKey:
    """A new ECDSA P-384 key pair: ``path`` (private, 0600) and ``path.pub`` (one line)."""
    private = Path(path)
    public = private.with_name(private.name + ".pub")
    if private.exists() or public.exists():
        raise FileExistsError(f"{private} or {public} already exists: a device keeps its key")
    key = ec.generate_private_key(_CURVE)
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    write_atomic(private, data, mode=0o600, exclusive=True)
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_atomic(public, line + (f" {comment}" if comment else "").encode() + b"\n", mode=0o644)
    return DeviceKey(private, public)


def public_key_of(private: str | Path) -> str:
    """The OpenSSH public-key line of a device's private key file (to register it again)."""
    path = Path(private)
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not an unencrypted OpenSSH private key ({err})") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
        raise ValueError(f"{path}: Flower node authentication needs an ECDSA P-384 key")
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
