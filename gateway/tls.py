"""Development TLS: a local CA and a server certificate, made once and then reused.

``gateway tokens init`` calls :func:`ensure_dev_tls` when the config's
``server.tls_cert`` and ``server.tls_key`` both live in ``<state_dir>/tls``
(as in ``config/dev.toml``); certificates anywhere else are the operator's and
are never touched.  Clients trust the dev server with
``curl --cacert <state_dir>/tls/ca.crt``.

The CA is made once (its key, mode 0600, never leaves the directory); the
server certificate is re-issued from the same CA only when it is missing,
about to expire, or does not name a host the config listens on, so a client
that trusts ``ca.crt`` keeps working.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from gateway.config import Config

log = logging.getLogger(__name__)

TLS_DIR_NAME: Final = "tls"
CA_CERT_NAME: Final = "ca.crt"
CA_KEY_NAME: Final = "ca.key"
SERVER_CERT_NAME: Final = "server.crt"
SERVER_KEY_NAME: Final = "server.key"
CA_LIFETIME: Final = datetime.timedelta(days=3650)
SERVER_LIFETIME: Final = datetime.timedelta(days=397)  # what browsers accept for leaf certificates
RENEW_BEFORE: Final = datetime.timedelta(days=30)
DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1", "::1")
_WILDCARD_HOSTS: Final = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class DevTls:
    """Where the dev CA and server certificate are, and what :func:`ensure_dev_tls` did."""

    directory: Path
    created_ca: bool
    issued_server: bool

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT_NAME

    @property
    def cert(self) -> Path:
        return self.directory / SERVER_CERT_NAME

    @property
    def key(self) -> Path:
        return self.directory / SERVER_KEY_NAME


def dev_tls_dir(config: Config) -> Path:
    return config.state_dir / TLS_DIR_NAME


def uses_dev_tls(config: Config) -> bool:
    """Whether the configured certificate and key are the dev ones under ``state_dir/tls``."""
    server = config.server
    directory = dev_tls_dir(config)
    return (server.tls_cert is not None and server.tls_key is not None
            and server.tls_cert.parent == directory and server.tls_key.parent == directory)


def hosts_for(config: Config) -> list[str]:
    """Names the server certificate must cover: loopback, plus the listen host if specific."""
    hosts = list(DEFAULT_HOSTS)
    if config.server.host not in _WILDCARD_HOSTS and config.server.host not in hosts:
        hosts.append(config.server.host)
    return hosts


# --------------------------------------------------------------------------- files


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# --------------------------------------------------------------------------- certificates


def _make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pkcs11-gateway development"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"pkcs11-gateway dev CA {os.uname().nodename}"[:64]),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a certificate without its key would be useless and block a retry.
    _write_private(directory / CA_KEY_NAME, _key_pem(key))
    _write_public(directory / CA_CERT_NAME, cert.public_bytes(serialization.Encoding.PEM))
    log.info("created a development CA in %s", directory)
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    if not cert_path.is_file() or not key_path.is_file():
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return cert, key


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _server_cert_ok(directory: Path, ca: x509.Certificate, hosts: Sequence[str]) -> bool:
    cert_path, key_path = directory / SERVER_CERT_NAME, directory / SERVER_KEY_NAME
    if not cert_path.is_file() or not key_path.is_file():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        return False
    if cert.issuer != ca.subject or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return False
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return False
    try:
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in present for name in _san(hosts))


def _issue_server(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                  hosts: Sequence[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / SERVER_KEY_NAME, _key_pem(key))
    _write_public(directory / SERVER_CERT_NAME, cert.public_bytes(serialization.Encoding.PEM))
    log.info("issued a development server certificate for %s", ", ".join(hosts))


def ensure_dev_tls(directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> DevTls:
    """Make sure ``directory`` holds a dev CA and a valid server certificate for ``hosts``."""
    directory = Path(os.path.abspath(directory))
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    loaded = _load_ca(directory)
    created_ca = loaded is None
    ca, ca_key = _make_ca(directory) if loaded is None else loaded
    issued = not _server_cert_ok(directory, ca, hosts)
    if issued:
        _issue_server(directory, ca, ca_key, hosts)
    return DevTls(directory=directory, created_ca=created_ca, issued_server=issued)


def curl_hint(config: Config) -> str | None:
    """``curl --cacert ... https://.../readyz`` for the dev CA, or None when not using it."""
    if not uses_dev_tls(config):
        return None
    ca = dev_tls_dir(config) / CA_CERT_NAME
    host = config.server.host
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"curl --cacert {ca} https://{shown}:{config.server.port}/readyz"
