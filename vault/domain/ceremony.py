"""Key ceremonies: the signed documents they write (records and root-transfer files), the
fingerprints they show, and their errors. Pure: no token, no files.

A signed document is one JSON object:
  {"format": ..., "body": {...},
   "signature": {"algorithm": "ECDSA-P256-SHA256", "signer_public_key": <base64 DER SPKI>,
                 "signer_fingerprint": <hex SHA-256 of that DER>, "value": <base64 DER>}}
The signature covers the canonical JSON of {"format": ..., "body": ...}: keys sorted, no
whitespace, ASCII only. A verifier pins the signer's fingerprint (the token's ceremony key),
since anyone can make a document that verifies under a key of their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.domain.errors import InvalidArgument, WrongState

RECORD_FORMAT: Final = "vault-ceremony-record/1"
TRANSFER_FORMAT: Final = "vault-root-transfer/1"
SIGNATURE_ALGORITHM: Final = "ECDSA-P256-SHA256"
TRANSFER_SCHEME: Final = "RSA-OAEP (SHA-1, MGF1-SHA-1, no label) of each 32-byte root"


class CeremonyRefused(WrongState):
    """A ceremony step the token or the vault's state does not allow; nothing was changed
    unless the message says so."""

    reason = "CEREMONY_REFUSED"


class KeyNotWrappable(CeremonyRefused):
    """The roots cannot be wrapped under the given key: the SO did not trust it."""

    reason = "KEY_NOT_WRAPPABLE"


class DocumentInvalid(InvalidArgument):
    """A record or transfer file that is malformed, or whose signature does not verify, or
    whose signer is not the expected one."""

    reason = "SIGNATURE_INVALID"


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    label: str
    serial: str
    manufacturer: str
    model: str

    def as_dict(self) -> dict[str, str]:
        return {
            "label": self.label,
            "serial": self.serial,
            "manufacturer": self.manufacturer,
            "model": self.model,
        }


@dataclass(frozen=True, slots=True)
class WrappedRoot:
    label: str
    generation: int
    family: str
    check_value: str
    wrapped: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RootInfo:
    label: str
    generation: int
    family: str | None  # None: a generation's single root, made before roots were split
    check_value: str


@dataclass(frozen=True, slots=True)
class TransportKey:
    label: str
    public_der: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.public_der)


def public_key_fingerprint(der: bytes) -> str:
    """Hex SHA-256 of a DER SubjectPublicKeyInfo."""
    return hashlib.sha256(der).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as typed: case, separators (':' or spaces) and a 'sha256:' prefix are
    ignored. InvalidArgument unless 64 hex digits remain."""
    value = text.strip().lower()
    value = value.removeprefix("sha256:")
    value = "".join(ch for ch in value if ch not in ": \t-")
    if len(value) != 64 or any(ch not in string.hexdigits for ch in value):
        raise InvalidArgument("a fingerprint is 64 hexadecimal digits (SHA-256)")
    return value


def grouped(fingerprint: str) -> str:
    """A fingerprint in groups of four, for reading aloud."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


def canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signed_payload(document_format: str, body: Mapping[str, Any]) -> bytes:
    return canonical({"format": document_format, "body": body})


def signed_document(
    document_format: str, body: Mapping[str, Any], signature: bytes, signer_der: bytes
) -> dict[str, Any]:
    return {
        "format": document_format,
        "body": dict(body),
        "signature": {
            "algorithm": SIGNATURE_ALGORITHM,
            "signer_public_key": base64.b64encode(signer_der).decode(),
            "signer_fingerprint": public_key_fingerprint(signer_der),
            "value": base64.b64encode(signature).decode(),
        },
    }


@dataclass(frozen=True, slots=True)
class VerifiedDocument:
    document_format: str
    body: dict[str, Any]
    signer_fingerprint: str


def verify_document(
    document: Any, expected_format: str | None, expected_signer: str | None
) -> VerifiedDocument:
    """The document's body once its signature verifies (and its signer is expected_signer,
    a fingerprint, when given). DocumentInvalid otherwise, one message per kind of fault."""
    try:
        document_format = document["format"]
        body = document["body"]
        signature = document["signature"]
        signer_der = base64.b64decode(signature["signer_public_key"], validate=True)
        value = base64.b64decode(signature["value"], validate=True)
        algorithm = signature["algorithm"]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise DocumentInvalid("not a signed ceremony document") from None
    if not isinstance(body, dict) or not isinstance(document_format, str):
        raise DocumentInvalid("not a signed ceremony document")
    if expected_format is not None and document_format != expected_format:
        raise DocumentInvalid(f"a {expected_format} document was expected, not {document_format}")
    if algorithm != SIGNATURE_ALGORITHM:
        raise DocumentInvalid(f"unknown signature algorithm {algorithm!r}")
    fingerprint = public_key_fingerprint(signer_der)
    if expected_signer is not None and fingerprint != normalise_fingerprint(expected_signer):
        expected = normalise_fingerprint(expected_signer)
        raise DocumentInvalid(f"signed by key {fingerprint}, not by the expected {expected}")
    try:
        public = serialization.load_der_public_key(signer_der)
    except ValueError:
        raise DocumentInvalid("the signer's public key is malformed") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise DocumentInvalid("the signer's key is not an ECDSA P-256 key")
    try:
        public.verify(value, signed_payload(document_format, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise DocumentInvalid("the signature does not verify: the document was changed") from None
    return VerifiedDocument(document_format, body, fingerprint)


def transfer_body(
    source: TokenIdentity, transport_fingerprint: str, roots: list[WrappedRoot], time: str
) -> dict[str, Any]:
    return {
        "scheme": TRANSFER_SCHEME,
        "source_token": source.as_dict(),
        "transport_key_fingerprint": transport_fingerprint,
        "time": time,
        "roots": [
            {
                "label": root.label,
                "generation": root.generation,
                "family": root.family,
                "check_value": root.check_value,
                "wrapped": base64.b64encode(root.wrapped).decode(),
            }
            for root in roots
        ],
    }


def roots_of_transfer(body: Mapping[str, Any]) -> list[WrappedRoot]:
    try:
        return [
            WrappedRoot(
                str(item["label"]),
                int(item["generation"]),
                str(item["family"]),
                str(item["check_value"]),
                base64.b64decode(item["wrapped"], validate=True),
            )
            for item in body["roots"]
        ]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise DocumentInvalid("the root-transfer file lists malformed roots") from None
