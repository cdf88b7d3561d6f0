"""Key purposes and algorithms: what each key can do, fixed when the key is created."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum


class Purpose(StrEnum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    BUCKET_MASTER = "BUCKET_MASTER"
    WRAP_UNWRAP = "WRAP_UNWRAP"
    SIGN_VERIFY = "SIGN_VERIFY"
    ASYMMETRIC_DECRYPT = "ASYMMETRIC_DECRYPT"
    MAC = "MAC"


class KeyFamily(StrEnum):
    AES = "AES"
    RSA = "RSA"
    EC = "EC"
    ED25519 = "ED25519"
    HMAC = "HMAC"


class Padding(StrEnum):
    NONE = "NONE"
    PSS = "PSS"
    PKCS1 = "PKCS1"
    OAEP = "OAEP"


class HashName(StrEnum):
    NONE = "NONE"
    SHA1 = "SHA1"
    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"


# The largest message Sign and Verify take whole; a larger one is signed by its digest.
MAX_SIGNED_MESSAGE_BYTES = 65_536

DIGEST_SIZES = {HashName.SHA1: 20, HashName.SHA256: 32, HashName.SHA384: 48, HashName.SHA512: 64}


def digest(name: HashName, data: bytes) -> bytes:
    """The digest of data under name. The token's ECDSA takes a digest made outside it."""
    return hashlib.new(name.value.lower(), data).digest()


@dataclass(frozen=True, slots=True)
class AlgorithmSpec:
    purpose: Purpose
    family: KeyFamily
    bits: int
    padding: Padding = Padding.NONE
    hash: HashName = HashName.NONE
    curve: str = ""
    # SoftHSM 2.6.1 cannot wrap Ed25519 private keys, so they live in the token.
    requires_token_resident: bool = False


class Algorithm(StrEnum):
    AES_256_GCM = "AES_256_GCM"
    BUCKET_AES_256 = "BUCKET_AES_256"
    AES_256_KWP = "AES_256_KWP"
    RSA_SIGN_PSS_2048_SHA256 = "RSA_SIGN_PSS_2048_SHA256"
    RSA_SIGN_PSS_3072_SHA256 = "RSA_SIGN_PSS_3072_SHA256"
    RSA_SIGN_PSS_4096_SHA256 = "RSA_SIGN_PSS_4096_SHA256"
    RSA_SIGN_PKCS1_2048_SHA256 = "RSA_SIGN_PKCS1_2048_SHA256"
    RSA_SIGN_PKCS1_3072_SHA256 = "RSA_SIGN_PKCS1_3072_SHA256"
    RSA_SIGN_PKCS1_4096_SHA256 = "RSA_SIGN_PKCS1_4096_SHA256"
    EC_SIGN_P256_SHA256 = "EC_SIGN_P256_SHA256"
    EC_SIGN_P384_SHA384 = "EC_SIGN_P384_SHA384"
    EC_SIGN_ED25519 = "EC_SIGN_ED25519"
    RSA_DECRYPT_OAEP_2048_SHA1 = "RSA_DECRYPT_OAEP_2048_SHA1"
    RSA_DECRYPT_OAEP_3072_SHA1 = "RSA_DECRYPT_OAEP_3072_SHA1"
    RSA_DECRYPT_OAEP_4096_SHA1 = "RSA_DECRYPT_OAEP_4096_SHA1"
    RSA_DECRYPT_OAEP_2048_SHA256 = "RSA_DECRYPT_OAEP_2048_SHA256"
    RSA_DECRYPT_OAEP_3072_SHA256 = "RSA_DECRYPT_OAEP_3072_SHA256"
    RSA_DECRYPT_OAEP_4096_SHA256 = "RSA_DECRYPT_OAEP_4096_SHA256"
    HMAC_SHA256 = "HMAC_SHA256"
    HMAC_SHA384 = "HMAC_SHA384"
    HMAC_SHA512 = "HMAC_SHA512"

    @property
    def spec(self) -> AlgorithmSpec:
        return SPECS[self]

    @property
    def purpose(self) -> Purpose:
        return SPECS[self].purpose

    @property
    def digest_hash(self) -> HashName | None:
        """The hash a digest given to Sign or Verify must be made with; None for algorithms
        that sign whole messages only: Ed25519 is pure EdDSA (it hashes the message itself,
        twice), and PKCS#1 v1.5 over a digest needs CKM_RSA_PKCS, which the token has
        switched off."""
        spec = SPECS[self]
        if spec.purpose is not Purpose.SIGN_VERIFY or spec.family is KeyFamily.ED25519:
            return None
        if spec.padding is Padding.PKCS1:
            return None
        return spec.hash


def _rsa_specs() -> dict[Algorithm, AlgorithmSpec]:
    specs: dict[Algorithm, AlgorithmSpec] = {}
    for bits in (2048, 3072, 4096):
        specs[Algorithm(f"RSA_SIGN_PSS_{bits}_SHA256")] = AlgorithmSpec(
            Purpose.SIGN_VERIFY, KeyFamily.RSA, bits, Padding.PSS, HashName.SHA256
        )
        specs[Algorithm(f"RSA_SIGN_PKCS1_{bits}_SHA256")] = AlgorithmSpec(
            Purpose.SIGN_VERIFY, KeyFamily.RSA, bits, Padding.PKCS1, HashName.SHA256
        )
        for hash_name in (HashName.SHA1, HashName.SHA256):
            specs[Algorithm(f"RSA_DECRYPT_OAEP_{bits}_{hash_name}")] = AlgorithmSpec(
                Purpose.ASYMMETRIC_DECRYPT, KeyFamily.RSA, bits, Padding.OAEP, hash_name
            )
    return specs


SPECS: dict[Algorithm, AlgorithmSpec] = {
    Algorithm.AES_256_GCM: AlgorithmSpec(Purpose.ENCRYPT_DECRYPT, KeyFamily.AES, 256),
    Algorithm.BUCKET_AES_256: AlgorithmSpec(Purpose.BUCKET_MASTER, KeyFamily.AES, 256),
    Algorithm.AES_256_KWP: AlgorithmSpec(Purpose.WRAP_UNWRAP, KeyFamily.AES, 256),
    **_rsa_specs(),
    Algorithm.EC_SIGN_P256_SHA256: AlgorithmSpec(
        Purpose.SIGN_VERIFY, KeyFamily.EC, 256, hash=HashName.SHA256, curve="secp256r1"
    ),
    Algorithm.EC_SIGN_P384_SHA384: AlgorithmSpec(
        Purpose.SIGN_VERIFY, KeyFamily.EC, 384, hash=HashName.SHA384, curve="secp384r1"
    ),
    Algorithm.EC_SIGN_ED25519: AlgorithmSpec(
        Purpose.SIGN_VERIFY, KeyFamily.ED25519, 256, requires_token_resident=True
    ),
    Algorithm.HMAC_SHA256: AlgorithmSpec(Purpose.MAC, KeyFamily.HMAC, 256, hash=HashName.SHA256),
    Algorithm.HMAC_SHA384: AlgorithmSpec(Purpose.MAC, KeyFamily.HMAC, 384, hash=HashName.SHA384),
    Algorithm.HMAC_SHA512: AlgorithmSpec(Purpose.MAC, KeyFamily.HMAC, 512, hash=HashName.SHA512),
}

DEFAULT_ALGORITHM: dict[Purpose, Algorithm] = {
    Purpose.ENCRYPT_DECRYPT: Algorithm.AES_256_GCM,
    Purpose.BUCKET_MASTER: Algorithm.BUCKET_AES_256,
    Purpose.WRAP_UNWRAP: Algorithm.AES_256_KWP,
    Purpose.SIGN_VERIFY: Algorithm.EC_SIGN_P256_SHA256,
    Purpose.ASYMMETRIC_DECRYPT: Algorithm.RSA_DECRYPT_OAEP_2048_SHA1,
    Purpose.MAC: Algorithm.HMAC_SHA256,
}
