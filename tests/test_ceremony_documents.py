"""Unit tests of the signed ceremony documents and fingerprints (vault.domain.ceremony).

The token signs with ECDSA P-256 over SHA-256, so a software P-256 key stands in for it here;
the token's own signatures are checked in tests/test_ceremony_generations.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.domain.ceremony import (
    RECORD_FORMAT,
    TRANSFER_FORMAT,
    DocumentInvalid,
    TokenIdentity,
    WrappedRoot,
    grouped,
    normalise_fingerprint,
    public_key_fingerprint,
    roots_of_transfer,
    signed_document,
    signed_payload,
    transfer_body,
    verify_document,
)
from vault.domain.errors import InvalidArgument


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed(key: Any, body: dict[str, Any], document_format: str = RECORD_FORMAT) -> dict[str, Any]:
    signature = key.sign(signed_payload(document_format, body), ec.ECDSA(hashes.SHA256()))
    return signed_document(document_format, body, signature, _der(key))


@pytest.fixture(scope="module")
def signer() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_a_signed_record_verifies_against_its_signer(signer: Any) -> None:
    body = {"ceremony": "new-root-generation", "objects": [{"label": "vault:root:2:ec-sign"}]}
    document = _signed(signer, body)
    fingerprint = public_key_fingerprint(_der(signer))
    verified = verify_document(document, RECORD_FORMAT, fingerprint)
    assert verified.body == body and verified.signer_fingerprint == fingerprint
    assert verify_document(document, None, None).body == body


def test_any_change_to_the_body_or_format_is_detected(signer: Any) -> None:
    document = _signed(signer, {"ceremony": "clone-roots", "operators": ["alice"]})
    changed = copy.deepcopy(document)
    changed["body"]["operators"] = ["mallory"]
    with pytest.raises(DocumentInvalid, match="does not verify"):
        verify_document(changed, None, None)
    relabelled = copy.deepcopy(document)
    relabelled["format"] = TRANSFER_FORMAT
    with pytest.raises(DocumentInvalid, match="does not verify"):
        verify_document(relabelled, None, None)
    with pytest.raises(DocumentInvalid, match="document was expected"):
        verify_document(document, TRANSFER_FORMAT, None)


def test_a_document_signed_by_another_key_is_refused_when_the_signer_is_pinned(
    signer: Any,
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    document = _signed(other, {"ceremony": "clone-roots"})
    with pytest.raises(DocumentInvalid, match="not by the expected"):
        verify_document(document, None, public_key_fingerprint(_der(signer)))


def test_only_p256_signers_are_accepted() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    document = _signed(p384, {"ceremony": "x"})
    with pytest.raises(DocumentInvalid, match="P-256"):
        verify_document(document, None, None)


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {},
        {"format": RECORD_FORMAT, "body": {}},
        {"format": 1, "body": [], "signature": {}},
    ],
)
def test_malformed_documents_are_refused(document: Any) -> None:
    with pytest.raises(DocumentInvalid, match="not a signed ceremony document"):
        verify_document(document, None, None)


def test_fingerprints_are_compared_as_typed() -> None:
    value = "ab" * 32
    assert normalise_fingerprint(value.upper()) == value
    assert normalise_fingerprint("sha256:" + grouped(value)) == value
    assert normalise_fingerprint(":".join(value[i : i + 2] for i in range(0, 64, 2))) == value
    for wrong in ("", "ab" * 31, "zz" * 32):
        with pytest.raises(InvalidArgument):
            normalise_fingerprint(wrong)


def test_a_transfer_body_round_trips() -> None:
    roots = [WrappedRoot("vault:root:1:ec-sign", 1, "ec-sign", "00" * 8, b"\x01" * 384)]
    identity = TokenIdentity("vault", "0123", "SoftHSM project", "SoftHSM v2")
    body = transfer_body(identity, "cd" * 32, roots, "2026-12-03T00:00:00+00:00")
    assert roots_of_transfer(body) == roots
    assert repr(roots[0]).count("\\x01") == 0  # the wrapped bytes stay out of reprs
    body["roots"][0]["wrapped"] = "not base64!"
    with pytest.raises(DocumentInvalid):
        roots_of_transfer(body)
