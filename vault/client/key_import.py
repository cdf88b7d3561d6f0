"""Wrapping key material for ImportKeyVersion, on the caller's machine.

The format is the composite PKCS#11 calls CKM_RSA_AES_KEY_WRAP: a fresh AES-256 key
encrypted with RSA-OAEP (SHA-1, MGF1-SHA-1, empty label) under the import job's public key,
followed by the material wrapped under that AES key with AES key wrap with padding (RFC 5649).
The material is the raw key for AES and HMAC keys and PKCS#8 DER for RSA and EC private keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from vault.domain.algorithms import Algorithm, HashName, KeyFamily

EPHEMERAL_KEY_BYTES = 32

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_HMAC_HASHES: dict[HashName, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    HashName.SHA256: hashes.SHA256,
    HashName.SHA384: hashes.SHA384,
    HashName.SHA512: hashes.SHA512,
}


@dataclass(frozen=True, slots=True)
class ImportMaterial:
    """Material ready to wrap: the bytes the vault unwraps, and the public key of a private
    key (sent beside the wrapped material; the vault checks it against the key)."""

    encoded: bytes = field(repr=False)
    public_key_der: bytes | None = None


def import_material(algorithm: Algorithm, key: bytes | PrivateKey) -> ImportMaterial:
    """Encode key for a key of algorithm. key: raw bytes for AES and HMAC; for RSA and EC, a
    private key object, or its PEM or DER (PKCS#8 or traditional, unencrypted)."""
    family = algorithm.spec.family
    if family in (KeyFamily.AES, KeyFamily.HMAC):
        if not isinstance(key, bytes):
            raise TypeError(f"{algorithm} takes the raw key as bytes")
        if family is KeyFamily.HMAC:
            hash_algorithm = _HMAC_HASHES[algorithm.spec.hash]()
            if len(key) > hash_algorithm.block_size:
                # HMAC itself replaces a key longer than a block by its hash (RFC 2104):
                # the same MACs, and a key the vault can store exactly.
                digest = hashes.Hash(hash_algorithm)
                digest.update(key)
                key = digest.finalize()
        return ImportMaterial(key)
    if family not in (KeyFamily.RSA, KeyFamily.EC):
        raise ValueError(f"{algorithm} keys cannot be imported")
    private = _load_private(key) if isinstance(key, bytes) else key
    expected = rsa.RSAPrivateKey if family is KeyFamily.RSA else ec.EllipticCurvePrivateKey
    if not isinstance(private, expected):
        raise ValueError(f"the key is not a {family} private key, as {algorithm} needs")
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return ImportMaterial(pkcs8, public)


def _load_private(data: bytes) -> PrivateKey:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_private_key(data, password=None)
        else:
            loaded = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        # Not the parser's message: it could quote the input.
        raise ValueError("not an unencrypted PEM or DER private key") from None
    if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("only RSA and EC private keys can be imported")
    return loaded


def wrap_for_import(job_public_key_der: bytes, material: bytes) -> bytes:
    """RSA-OAEP(SHA-1) of a fresh AES-256 key under the job's public key, then AES-KWP of
    material under that AES key."""
    public = serialization.load_der_public_key(job_public_key_der)
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("an import job's public key is an RSA key")
    ephemeral = os.urandom(EPHEMERAL_KEY_BYTES)
    wrapped_ephemeral = public.encrypt(
        ephemeral,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),  # noqa: S303 (the only OAEP hash SoftHSM has; OAEP does not rely on collision resistance)
    )
    return wrapped_ephemeral + aes_key_wrap_with_padding(ephemeral, material)
