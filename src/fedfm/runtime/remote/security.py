"""TLS material and per-client credentials for remote clients.

- :func:`make_tls` writes a private CA, a server certificate for the given host names, and
  (for mutual TLS) client certificates signed by the same CA (``cryptography``: ECDSA P-256).
- :func:`add_client` issues a client's secret token into a file the admin hands to that
  client. The server keeps only the token's SHA-256 (``clients.json``), and
  :func:`check_token` compares in constant time.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> token = add_client(folder, "hospital-3", folder / "hospital-3.json")
    >>> check_token(folder, "hospital-3", token), check_token(folder, "hospital-3", "guess")
    (True, False)
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedfm.errors import ConfigError
from fedfm.io import atomic_write_bytes, atomic_write_json

CLIENTS_FILE = "clients.json"
CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
VALID_DAYS = 365


# ----------------------------------------------------------------------- credentials


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _registry(folder: Path) -> dict[str, str]:
    path = folder / CLIENTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def add_client(folder: str | Path, client_id: str, out: str | Path) -> str:
    """Issue ``client_id`` a new secret token: its hash goes into ``folder/clients.json``, the
    token into ``out`` (``{"client_id", "token"}``, for the client's ``fedfm join``).

    Re-issuing revokes the old token. Returns the token.
    """
    if not CLIENT_ID.fullmatch(client_id):
        raise ConfigError(f"client id {client_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    folder = Path(folder)
    token = secrets.token_urlsafe(32)
    registry = {**_registry(folder), client_id: _digest(token)}
    atomic_write_json(Path(out), {"client_id": client_id, "token": token})
    atomic_write_json(folder / CLIENTS_FILE, registry)
    return token


def check_token(folder: str | Path, client_id: str, token: str) -> bool:
    """Whether ``token`` is ``client_id``'s current token (constant-time comparison)."""
    expected = _registry(Path(folder)).get(client_id)
    return expected is not None and hmac.compare_digest(expected, _digest(token))


def read_credentials(path: str | Path) -> tuple[str, str]:
    """``(client_id, token)`` from a file written by :func:`add_client`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        client_id, token = str(data["client_id"]), str(data["token"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"--credentials {path}: not a credentials file written by `fedfm admin add-client` "
            f"({type(err).__name__})"
        ) from None
    if not CLIENT_ID.fullmatch(client_id):  # it names this client's state folder
        raise ConfigError(
            f"--credentials {path}: client id {client_id[:80]!r} must be 1-64 letters, digits, "
            "'.', '_' or '-'"
        )
    return client_id, token


# ----------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSFiles:
    """Where :func:`make_tls` put things (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def make_tls(folder: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> TLSFiles:
    """A private CA (``ca.pem``, ``ca.key``) and a server certificate for ``hosts``
    (``server.pem``, ``server.key``). Hand ``ca.pem`` to the clients; keep the keys."""
    folder = Path(folder)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedfm CA")])
    ca = (
        _builder("fedfm CA", ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = _key()
    server = (
        _builder(hosts[0], ca_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    atomic_write_bytes(folder / "ca.key", _pem_key(ca_key))
    atomic_write_bytes(files.ca_cert, _pem_cert(ca))
    atomic_write_bytes(files.server_key, _pem_key(server_key))
    atomic_write_bytes(files.server_cert, _pem_cert(server))
    for key_file in (folder / "ca.key", files.server_key):
        key_file.chmod(0o600)
    return files


def client_certificate(folder: str | Path, client_id: str) -> tuple[Path, Path]:
    """A client certificate for mutual TLS, signed by ``folder``'s CA:
    ``(client-ID.pem, client-ID.key)``."""
    folder = Path(folder)
    ca, ca_key = _load_ca(folder)
    key = _key()
    cert = (
        _builder(client_id, ca.subject, key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"client-{client_id}.pem", folder / f"client-{client_id}.key"
    atomic_write_bytes(key_path, _pem_key(key))
    key_path.chmod(0o600)
    atomic_write_bytes(cert_path, _pem_cert(cert))
    return cert_path, key_path
