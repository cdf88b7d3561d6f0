"""A development CA and server certificate in <data_dir>/tls, so `make run` serves TLS.

`vaultctl serve` calls ensure_dev_tls() before serving (unless server.tls_cert_file is set or
server.dev_tls is false). The first call creates the CA and the server certificate; later
calls keep both, and reissue only the server certificate (never the CA, which clients have
been given) when it lacks a name the server now listens on, expires within 30 days, or does
not match its key or the CA. Private keys are written mode 0600 in a directory of mode 0700,
and never printed or logged.

This is for development and for trying the vault out: in production, point
server.tls_cert_file and server.tls_key_file at a certificate from your own CA.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault.config import DevTlsPaths

CA_VALIDITY: Final = timedelta(days=3650)
CERT_VALIDITY: Final = timedelta(days=397)
RENEW_BEFORE: Final = timedelta(days=30)
# Names every development server certificate carries: a client on the same machine dials one.
LOCAL_NAMES: Final = ("localhost", "127.0.0.1", "::1")
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 - compared only
_CLOCK_SKEW: Final = timedelta(hours=1)


class DevTlsError(Exception):
    """The development TLS files cannot be used or created; the message says what to do."""


@dataclass(frozen=True, slots=True)
class DevTls:
    """What ensure_dev_tls found or made."""

    paths: DevTlsPaths
    names: tuple[str, ...]  # the server certificate's subject alternative names
    ca_created: bool
    server_issued: bool


def server_names(listen: str) -> list[str]:
    """The names a development certificate needs for a server bound to listen: the local
    ones, plus the listen host; a wildcard bind (0.0.0.0, [::]) adds this machine's name,
    which other machines dial."""
    names = list(LOCAL_NAMES)
    if listen.startswith(("unix:", "unix-abstract:")):
        return names
    host = listen.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in _WILDCARD_HOSTS:
        host = socket.gethostname()
    if host and host.isascii() and _normalise(host) not in {_normalise(n) for n in names}:
        names.append(host)
    return names


def ensure_dev_tls(paths: DevTlsPaths, names: Iterable[str] = LOCAL_NAMES) -> DevTls:
    """Create the CA and server certificate under paths.directory if absent; keep them when
    usable (see the module docstring). Safe against a concurrent call (a lock file)."""
    wanted = _unique(names)
    with _locked(paths.directory):
        ca = _load_ca(paths)
        ca_created = False
        existing = _load_server(paths)
        if ca is None:
            ca = create_ca()
            write_private_key(paths.ca_key, ca[1])
            write_certificate(paths.ca_cert, ca[0])
            ca_created = True
        elif isinstance(ca, str):
            if existing is not None and _server_usable(existing, None, wanted):
                return DevTls(paths, _san_names(existing[0]), False, False)
            raise DevTlsError(f"{ca}; delete {paths.directory} to create a new development CA")
        ca_cert, ca_key = ca
        if existing is not None and _server_usable(existing, ca_cert, wanted):
            return DevTls(paths, _san_names(existing[0]), ca_created, False)
        if existing is not None:
            wanted = _unique([*wanted, *_san_names(existing[0])])
        cert, key = issue_certificate(ca_cert, ca_key, "vault development server", wanted)
        write_private_key(paths.server_key, key)
        write_certificate(paths.server_cert, cert)
        return DevTls(paths, tuple(wanted), ca_created, True)


# -- certificates -----------------------------------------------------------------------------


def create_ca(
    common_name: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA certificate (P-256) that may issue end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "key vault development"),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                common_name or f"vault development CA {socket.gethostname()}"[:64],
            ),
        ]
    )
    now = datetime.now(UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    names: Iterable[str] = (),
    *,
    client: bool = False,
    validity: timedelta = CERT_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new P-256 key and a certificate for it signed by the CA: for a TLS server with names
    as its subject alternative names (DNS names or IP addresses), or with client, for a TLS
    client."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    alternative = [_general_name(name) for name in names]
    if alternative:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(path, pem, 0o600)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    # Public, but in a 0700 directory: copy ca.pem out to give it to clients.
    _write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


# -- internals --------------------------------------------------------------------------------


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _normalise(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower().rstrip(".")


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(_normalise(name), name)
    return list(seen.values())


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        [*san.get_values_for_type(x509.DNSName)]
        + [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    )


def _load_ca(
    paths: DevTlsPaths,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | str | None:
    """The CA pair; None when there is no CA certificate yet; a string saying what is wrong
    when the CA cannot issue (its key missing or not its key, expired)."""
    if not paths.ca_cert.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except ValueError:
        return f"{paths.ca_cert} holds no readable certificate"
    if cert.not_valid_after_utc - datetime.now(UTC) < RENEW_BEFORE:
        return f"the development CA {paths.ca_cert} expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except FileNotFoundError:
        return f"the development CA's key {paths.ca_key} is missing"
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return f"the development CA's key {paths.ca_key} is not readable"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _der(key.public_key()) != _der(
        cert.public_key()
    ):
        return f"{paths.ca_key} is not the key of the development CA {paths.ca_cert}"
    return cert, key


def _load_server(paths: DevTlsPaths) -> tuple[x509.Certificate, PublicKeyTypes] | None:
    try:
        cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return cert, key.public_key()


def _server_usable(
    server: tuple[x509.Certificate, PublicKeyTypes],
    ca_cert: x509.Certificate | None,
    wanted: list[str],
) -> bool:
    cert, public_key = server
    if _der(public_key) != _der(cert.public_key()):
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) < RENEW_BEFORE:
        return False
    if ca_cert is not None:
        if cert.issuer != ca_cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
    have = {_normalise(name) for name in _san_names(cert)}
    return all(_normalise(name) in have for name in wanted)


def _der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write data to path with mode, replacing it only once complete: a crash leaves the old
    file or the new one, never half of one, and never a moment with a wider mode."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()  # left by a crash of an earlier process with the same pid
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
