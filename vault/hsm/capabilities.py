"""Which algorithms this token can serve, decided from what it does, not what it claims.

A mechanism in the token's list is not enough: SoftHSM 2.6.1 lists RSA-OAEP but refuses
SHA-2 parameters (CKR_ARGUMENTS_BAD), so OAEP hashes are tried on a throwaway key. The vault
offers only what passed and never falls back to a weaker mechanism.
"""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, exceptions

from vault.domain.algorithms import Algorithm, HashName, KeyFamily, Padding
from vault.hsm import templates
from vault.hsm.library import TokenLibrary
from vault.hsm.objects import destroy_quietly

_OAEP_HASHES = (HashName.SHA1, HashName.SHA256)
_KEY_PAIR_GENERATION = {
    KeyFamily.RSA: Mechanism.RSA_PKCS_KEY_PAIR_GEN,
    KeyFamily.EC: Mechanism.EC_KEY_PAIR_GEN,
    KeyFamily.ED25519: Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
}


def supported_algorithms(library: TokenLibrary) -> frozenset[Algorithm]:
    mechanisms = library.mechanisms()
    supported = {algorithm for algorithm in Algorithm if _required(algorithm) <= mechanisms}
    if Mechanism.RSA_PKCS_OAEP in mechanisms:
        refused = _oaep_hashes_refused(library.login_session)
        supported -= {
            a for a in supported if a.spec.padding is Padding.OAEP and a.spec.hash in refused
        }
    return frozenset(supported)


def _required(algorithm: Algorithm) -> set[Any]:
    required: set[Any] = set(templates.shape(algorithm).mechanisms)
    generation = _KEY_PAIR_GENERATION.get(algorithm.spec.family)
    if generation is not None:
        required.add(generation)
    if not algorithm.spec.requires_token_resident:
        required.add(templates.WRAP_MECHANISM)
    return required


def _oaep_hashes_refused(session: Any) -> set[HashName]:
    """The OAEP hashes the token refuses, tried on one throwaway key pair."""
    probe = Algorithm.RSA_DECRYPT_OAEP_2048_SHA1
    public, private = session.generate_keypair(
        KeyType.RSA,
        2048,
        capabilities=0,
        public_template={
            **templates.public_generation(probe),
            Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
        },
        private_template={
            **templates.private_generation(probe, None),
            Attribute.EXTRACTABLE: False,
        },
    )
    refused: set[HashName] = set()
    try:
        for hash_name in _OAEP_HASHES:
            hash_mechanism, mgf = templates.HASH_MECHANISMS[hash_name]
            try:
                public.encrypt(
                    b"probe",
                    mechanism=Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=(hash_mechanism, mgf, None),
                )
            except (
                exceptions.ArgumentsBad,
                exceptions.MechanismParamInvalid,
                exceptions.MechanismInvalid,
            ):
                refused.add(hash_name)
    finally:
        destroy_quietly(public)
        destroy_quietly(private)
    return refused
