"""A throwaway certificate authority for the TLS tests: a CA, a server certificate for 127.0.0.1/localhost and
client certificates, written as PEM files with the ``cryptography`` package (EC P-256 keys: fast to make)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, key, cert: x509.Certificate) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def make_ca(directory: Path, stem: str = "ca"):
    """(cert path, key, certificate) of a new self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(f"fastml test {stem}", _name(f"fastml test {stem}"), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    cert_path, _ = _write(directory, stem, key, cert)
    return cert_path, key, cert


def issue(directory: Path, stem: str, ca_key, ca_cert: x509.Certificate, server: bool) -> tuple[Path, Path]:
    """(cert path, key path) of a leaf certificate signed by the CA: a server one names 127.0.0.1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(stem, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _write(directory, stem, key, builder.sign(ca_key, hashes.SHA256()))


def make_pki(directory: Path) -> dict[str, Path]:
    """CA, server and client certificates under ``directory``, plus a client certificate from another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, ca_key, ca_cert = make_ca(directory, "ca")
    server_cert, server_key = issue(directory, "server", ca_key, ca_cert, server=True)
    client_cert, client_key = issue(directory, "client", ca_key, ca_cert, server=False)
    _, rogue_key, rogue_cert = make_ca(directory, "rogue-ca")
    rogue_client_cert, rogue_client_key = issue(directory, "rogue-client", rogue_key, rogue_cert, server=False)
    return {
        "ca": ca_path,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "rogue_client_cert": rogue_client_cert,
        "rogue_client_key": rogue_client_key,
    }
