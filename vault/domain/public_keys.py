"""Signature checks with public keys. Public material needs no token: verifying in process
with `cryptography` keeps the token's capacity for private-key work."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from vault.domain.algorithms import Algorithm, HashName, KeyFamily, Padding

_HASHES: dict[HashName, type[hashes.HashAlgorithm]] = {
    HashName.SHA1: hashes.SHA1,
    HashName.SHA256: hashes.SHA256,
    HashName.SHA384: hashes.SHA384,
    HashName.SHA512: hashes.SHA512,
}


def hash_algorithm(name: HashName) -> hashes.HashAlgorithm:
    return _HASHES[name]()


def verify_signature(
    algorithm: Algorithm, public_key_der: bytes, data: bytes, prehashed: bool, signature: bytes
) -> bool:
    """True when signature is valid; False for every kind of failure, malformed input included."""
    spec = algorithm.spec
    try:
        public = serialization.load_der_public_key(public_key_der)
        if spec.family is KeyFamily.ED25519:
            if not isinstance(public, ed25519.Ed25519PublicKey) or prehashed:
                return False
            public.verify(signature, data)
            return True
        chosen: hashes.HashAlgorithm | utils.Prehashed = hash_algorithm(spec.hash)
        if prehashed:
            chosen = utils.Prehashed(hash_algorithm(spec.hash))
        if spec.family is KeyFamily.EC and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(chosen))
            return True
        if spec.family is KeyFamily.RSA and isinstance(public, rsa.RSAPublicKey):
            if spec.padding is Padding.PSS:
                pss = padding.PSS(
                    mgf=padding.MGF1(hash_algorithm(spec.hash)),
                    salt_length=hash_algorithm(spec.hash).digest_size,
                )
                public.verify(signature, data, pss, chosen)
            else:
                public.verify(signature, data, padding.PKCS1v15(), chosen)
            return True
    except (InvalidSignature, ValueError, TypeError):
        return False
    return False
