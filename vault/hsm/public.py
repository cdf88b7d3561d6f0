"""Public halves read from the token, as DER SubjectPublicKeyInfo."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import Attribute

from vault.domain.algorithms import Algorithm, KeyFamily

_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}


def _octet_string(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point; unwrap it."""
    if len(value) < 2 or value[0] != 0x04:
        raise ValueError("EC point is not a DER octet string")
    length = value[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(value[2 : 2 + count], "big")
        offset = 2 + count
    return value[offset : offset + length]


def public_key_der(algorithm: Algorithm, public: Any) -> bytes:
    spec = algorithm.spec
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    if spec.family is KeyFamily.RSA:
        key = rsa.RSAPublicNumbers(
            int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(public[Attribute.MODULUS], "big"),
        ).public_key()
    elif spec.family is KeyFamily.EC:
        point = _octet_string(bytes(public[Attribute.EC_POINT]))
        key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[spec.curve], point)
    else:
        key = ed25519.Ed25519PublicKey.from_public_bytes(
            _octet_string(bytes(public[Attribute.EC_POINT]))
        )
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rsa_public_key_der(key: Any) -> bytes:
    """The public key of an RSA key object (public or private: both carry the modulus and the
    public exponent), DER SubjectPublicKeyInfo."""
    public = rsa.RSAPublicNumbers(
        int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big"),
        int.from_bytes(key[Attribute.MODULUS], "big"),
    ).public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
