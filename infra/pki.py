"""A small certificate authority with ``cryptography``: the CA, broker/client certificates,
JVM keystores and secret files (issue 16; reused by the edge–cloud TLS tunnel).

Nothing here knows Kafka.  What it makes::

    ca = pki.CertificateAuthority.create("USER CA")
    ca.save(security_dir)                       # ca.pem (public), ca.key (0600)
    broker = ca.issue("broker", sans=("127.0.0.1", "localhost"), server=True, client=True)
    pki.write_secret(dir / "broker.p12", pki.pkcs12(broker, password, ca))

Keys are ECDSA P-256 (TLS) — small and fast, and both the JVM and OpenSSL (librdkafka)
take them.  Every private key and password goes through :func:`write_secret`: a 0600
file written atomically in a 0700 directory, never to a command line or a log.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12 as _pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "Issued",
    "new_password",
    "pkcs12",
    "write_secret",
]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_password(nbytes: int = 24) -> str:
    """A random URL-safe password (``nbytes`` of entropy)."""
    return secrets.token_urlsafe(nbytes)


def write_secret(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` with mode 0600 (its directory 0700), atomically.

    The file never exists with wider permissions, even for a moment: it is created 0600
    under a temporary name and renamed over ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_secret(path: Path) -> str:
    """A secret file's text, stripped; raises ``PermissionError`` if others may read it."""
    mode = path.stat().st_mode & 0o077
    if mode:
        raise PermissionError(f"{path} is readable by group/others (mode {oct(mode)}); "
                              f"run `chmod 600 {path}`")
    return path.read_text().strip()


@dataclass(frozen=True)
class Issued:
    """A private key and the certificate the CA issued for it (both PEM)."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def common_name(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    @property
    def not_after(self) -> dt.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, common_name: str = "USER CA", *, days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA saved in ``directory`` (``ca.pem`` + ``ca.key``)."""
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / CA_KEY} is not an EC private key")
        return cls(key, cert)

    def save(self, directory: Path) -> None:
        """``ca.pem`` (public, 0644) and ``ca.key`` (0600) in ``directory``."""
        write_secret(directory / CA_KEY, _key_pem(self.key))
        (directory / CA_CERT).write_bytes(self.cert_pem)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, sans: Sequence[str] = (), server: bool = False,
              client: bool = True, days: int = 825) -> Issued:
        """A new key and a certificate for ``common_name`` (subject ``CN=<common_name>``),
        valid for ``sans`` (IP addresses or DNS names) when ``server``."""
        if not (server or client):
            raise ValueError("a certificate is for a server, a client, or both")
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))

    def verify(self, issued: Issued) -> None:
        """Raise if ``issued`` was not signed by this CA (``InvalidSignature``)."""
        cert = x509.load_pem_x509_certificate(issued.cert_pem)
        cert.verify_directly_issued_by(self.cert)


def pkcs12(issued: Issued, password: str, ca: CertificateAuthority, *,
           alias: str | None = None) -> bytes:
    """A PKCS#12 keystore (key + certificate chain) the JVM reads with
    ``ssl.keystore.type=PKCS12``, encrypted with ``password``.

    (For trust, give the JVM the CA's PEM with ``ssl.truststore.type=PEM``: a PKCS#12
    store of bare certificates lacks the attribute Java needs to trust them.)
    """
    key = serialization.load_pem_private_key(issued.key_pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("only EC keys are issued here")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    return _pkcs12.serialize_key_and_certificates(
        (alias or issued.common_name).encode(), key, cert, [ca.cert],
        serialization.BestAvailableEncryption(password.encode()))
