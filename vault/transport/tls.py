"""The server's TLS material: read and checked once, before any worker starts.

The supervisor loads the files (refusing a private key that others may read, a key that does
not match the certificate, unreadable PEM) and hands the bytes to the workers it forks, so a
bad file stops `serve` with one clear message instead of crash-looping every worker.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from vault.config import TlsFiles

log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """The server's TLS settings or files cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """PEM bytes for grpc.ssl_server_credentials. The key never appears in a repr."""

    files: TlsFiles
    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def describe(self) -> str:
        return "mutual TLS" if self.mutual else "TLS"


def load_server_tls(files: TlsFiles) -> ServerTls:
    """Read and check files; raise TlsConfigError saying what is wrong."""
    key_setting = "server.tls_key_file" if files.dev_ca is None else "development TLS key"
    cert_setting = "server.tls_cert_file" if files.dev_ca is None else "development TLS cert"
    check_private_file(files.key_file, key_setting)
    chain_pem = _read(files.cert_file, cert_setting)
    key_pem = _read(files.key_file, key_setting)
    chain = _certificates(chain_pem, files.cert_file, cert_setting)
    key = _private_key(key_pem, files.key_file, key_setting)
    if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
        raise TlsConfigError(
            f"{key_setting} {files.key_file} is not the private key of the certificate in "
            f"{files.cert_file}"
        )
    expires = chain[0].not_valid_after_utc
    if expires <= datetime.now(UTC):
        log.warning(
            "the server certificate %s expired on %s: clients will refuse it",
            files.cert_file,
            expires.isoformat(),
        )
    client_ca = None
    if files.client_ca_file is not None:
        client_ca = _read(files.client_ca_file, "server.client_ca_file")
        _certificates(client_ca, files.client_ca_file, "server.client_ca_file")
    return ServerTls(files, chain_pem, key_pem, client_ca)


def check_private_file(path: Path, setting: str) -> None:
    """Refuse a private key file that anyone but its owner may read or write."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        raise TlsConfigError(f"{setting} {path} does not exist") from None
    except OSError as error:
        raise TlsConfigError(f"{setting} {path}: {error.strerror or error}") from None
    if mode & 0o077:
        raise TlsConfigError(
            f"{setting} {path} has mode {mode:04o}: a private key must be readable by its "
            f"owner only (mode 0600 or stricter); run chmod 600 {path}"
        )


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{setting} {path} does not exist") from None
    except OSError as error:
        raise TlsConfigError(f"{setting} {path}: {error.strerror or error}") from None


def _certificates(pem: bytes, path: Path, setting: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsConfigError(f"{setting} {path} holds no PEM certificate")
    return certificates


def _private_key(pem: bytes, path: Path, setting: str) -> PrivateKeyTypes:
    # The exception text of a failed parse is not quoted: it could carry key bytes.
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise TlsConfigError(
            f"{setting} {path} is encrypted with a passphrase; the server needs an "
            "unencrypted PEM key (protected by its file mode)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(f"{setting} {path} holds no readable PEM private key") from None


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
