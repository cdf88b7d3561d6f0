"""Cryptographic use cases. Each call loads the key from the store, checks purpose and state,
then asks the token; nothing here touches key material except data keys the caller asked for."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from vault.domain.algorithms import DIGEST_SIZES, MAX_SIGNED_MESSAGE_BYTES
from vault.domain.envelope import NONCE_SIZE, GcmEnvelope, WrappedEnvelope, gcm_aad
from vault.domain.errors import (
    DecryptionFailed,
    InputTooLarge,
    InvalidArgument,
    NotFound,
    UnsupportedAlgorithm,
)
from vault.domain.models import Key, KeyVersion, Operation
from vault.domain.names import KeyName, parse_key_or_version
from vault.domain.policy import KeyPolicy
from vault.domain.ports import KeyStore
from vault.domain.public_keys import verify_signature
from vault.service.keys import KeyManagement

MAX_AAD_BYTES = 65_536
MAX_SIGN_MESSAGE_BYTES = MAX_SIGNED_MESSAGE_BYTES
MAX_RANDOM_BYTES = 1024
MAX_SIGNATURE_BYTES = 1024  # RSA-4096 signatures are 512 bytes
MIN_WRAPPED_MATERIAL = 16
MAX_WRAPPED_MATERIAL = 4096
DATA_KEY_SIZES = frozenset({16, 24, 32, 64})
_ENVELOPE_ADVICE = (
    "encrypt larger data locally under a data key from GenerateDataKey (envelope "
    "encryption), and store the encrypted data key beside it"
)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A result produced with a specific key version."""

    data: bytes
    key_version_name: str


@dataclass(frozen=True, slots=True)
class DataKey:
    ciphertext: bytes
    plaintext: bytes | None
    key_version_name: str

    def __repr__(self) -> str:
        return (
            f"DataKey(key_version_name={self.key_version_name!r}, "
            f"ciphertext=<{len(self.ciphertext)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class ReEncrypted:
    ciphertext: bytes
    key_version_name: str
    source_key_version_name: str


class CryptoOperations:
    def __init__(self, keys: KeyManagement, keystore: KeyStore, policy: KeyPolicy) -> None:
        self._keys = keys
        self._keystore = keystore
        self._policy = policy

    def _usable(self, name: str, operation: Operation) -> tuple[Key, KeyVersion]:
        key, version, _ = self._usable_named(name, operation)
        return key, version

    def _usable_named(self, name: str, operation: Operation) -> tuple[Key, KeyVersion, bool]:
        """(key, the version name names or the primary, whether name named a version)."""
        key_name, number = parse_key_or_version(name)
        key = self._keys.load(key_name)
        key.require(operation)
        version = self._keys.version(key, number)
        version.require(operation)
        return key, version, number is not None

    # -- symmetric ----------------------------------------------------------------------

    def encrypt(self, name: str, plaintext: bytes, aad: bytes) -> Sealed:
        _limit("plaintext", plaintext, self._policy.max_plaintext_bytes, _ENVELOPE_ADVICE)
        _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
        key, version = self._usable(name, Operation.ENCRYPT)
        return self._seal(key, version, plaintext, aad)

    def _seal(self, key: Key, version: KeyVersion, plaintext: bytes, aad: bytes) -> Sealed:
        # 96-bit random nonces: collision risk stays below 2^-32 up to 2^32 messages per key
        # version, and rotation starts a new version.
        envelope = GcmEnvelope(version.number, secrets.token_bytes(NONCE_SIZE), b"")
        full_aad = gcm_aad(envelope.header(), str(key.name), aad)
        sealed = self._keystore.encrypt_gcm(
            version, key.algorithm, envelope.nonce, plaintext, full_aad
        )
        result = GcmEnvelope(version.number, envelope.nonce, sealed)
        return Sealed(result.to_bytes(), str(version.name))

    def decrypt(self, name: str, ciphertext: bytes, aad: bytes) -> Sealed:
        _limit("ciphertext", ciphertext, self._policy.max_plaintext_bytes + 64)
        _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
        key_name = KeyName.parse(name)
        key = self._keys.load(key_name)
        key.require(Operation.DECRYPT)
        return self._open(key, ciphertext, aad)

    def _open(self, key: Key, ciphertext: bytes, aad: bytes) -> Sealed:
        envelope = GcmEnvelope.parse(ciphertext)
        try:
            version = self._keys.version(key, envelope.key_version)
        except NotFound:
            raise DecryptionFailed() from None
        full_aad = gcm_aad(envelope.header(), str(key.name), aad)
        plaintext = self._keystore.decrypt_gcm(
            version, key.algorithm, envelope.nonce, envelope.sealed, full_aad
        )
        return Sealed(plaintext, str(version.name))

    def generate_data_key(
        self, name: str, size: int, aad: bytes, include_plaintext: bool
    ) -> DataKey:
        size = size or 32
        if size not in DATA_KEY_SIZES:
            raise InvalidArgument(
                "data key size must be 16, 24, 32 or 64 bytes", metadata={"size": str(size)}
            )
        _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
        key, version = self._usable(name, Operation.GENERATE_DATA_KEY)
        material = self._keystore.random(size)
        sealed = self._seal(key, version, material, aad)
        return DataKey(
            sealed.data, material if include_plaintext else None, sealed.key_version_name
        )

    def re_encrypt(
        self,
        source_name: str,
        ciphertext: bytes,
        source_aad: bytes,
        destination_name: str,
        destination_aad: bytes,
    ) -> ReEncrypted:
        _limit("ciphertext", ciphertext, self._policy.max_plaintext_bytes + 64)
        _limit("source_additional_authenticated_data", source_aad, MAX_AAD_BYTES)
        _limit("destination_additional_authenticated_data", destination_aad, MAX_AAD_BYTES)
        source = self._keys.load(KeyName.parse(source_name))
        destination, destination_version = self._usable(
            destination_name or source_name, Operation.ENCRYPT
        )
        source.require(Operation.DECRYPT)
        opened = self._open(source, ciphertext, source_aad)
        sealed = self._seal(destination, destination_version, opened.data, destination_aad)
        return ReEncrypted(sealed.data, sealed.key_version_name, opened.key_version_name)

    # -- key wrapping ---------------------------------------------------------------------

    def wrap_key(self, name: str, material: bytes) -> Sealed:
        if not MIN_WRAPPED_MATERIAL <= len(material) <= MAX_WRAPPED_MATERIAL or len(material) % 8:
            # SoftHSM pads KWP input with zeros to a multiple of 8, which a standard unwrap
            # would hand back as part of the key; whole 8-byte blocks round-trip exactly.
            raise InvalidArgument(
                f"key material must be {MIN_WRAPPED_MATERIAL} to {MAX_WRAPPED_MATERIAL} bytes, "
                "a multiple of 8",
                metadata={"size": str(len(material))},
            )
        key, version = self._usable(name, Operation.WRAP)
        wrapped = self._keystore.wrap_secret(version, key.algorithm, material)
        return Sealed(WrappedEnvelope(version.number, wrapped).to_bytes(), str(version.name))

    def unwrap_key(self, name: str, wrapped_key: bytes) -> Sealed:
        _limit("wrapped_key", wrapped_key, MAX_WRAPPED_MATERIAL + 64)
        key = self._keys.load(KeyName.parse(name))
        key.require(Operation.UNWRAP)
        envelope = WrappedEnvelope.parse(wrapped_key)
        try:
            version = self._keys.version(key, envelope.key_version)
        except NotFound:
            raise DecryptionFailed() from None
        material = self._keystore.unwrap_secret(version, key.algorithm, envelope.wrapped)
        return Sealed(material, str(version.name))

    # -- asymmetric -----------------------------------------------------------------------

    def sign(self, name: str, *, message: bytes | None, digest: bytes | None) -> Sealed:
        data, prehashed = _message_or_digest(message, digest)
        key, version = self._usable(name, Operation.SIGN)
        _check_signing_input(key, data, prehashed)
        signature = self._keystore.sign(version, key.algorithm, data, prehashed)
        return Sealed(signature, str(version.name))

    def verify(
        self, name: str, *, message: bytes | None, digest: bytes | None, signature: bytes
    ) -> tuple[bool, str]:
        """(valid, key version). valid=False for any signature that does not verify,
        malformed or oversized included; errors only for what Sign would also refuse.

        A key version in name checks against that version only. A key name checks against
        its primary version, then its other versions that still verify, so a signature made
        before a rotation is still recognised; the version that matched is returned, and a
        signature that matches none gets the same answer as always: invalid, primary."""
        data, prehashed = _message_or_digest(message, digest)
        key, primary, explicit = self._usable_named(name, Operation.VERIFY)
        _check_signing_input(key, data, prehashed)
        if len(signature) > MAX_SIGNATURE_BYTES:
            return False, str(primary.name)
        for version in self._candidates(key, primary, explicit=explicit):
            if version.public_key_der is not None and verify_signature(
                key.algorithm, version.public_key_der, data, prehashed, signature
            ):
                return True, str(version.name)
        return False, str(primary.name)

    def _candidates(self, key: Key, first: KeyVersion, *, explicit: bool) -> Iterator[KeyVersion]:
        """The versions a Verify or VerifyMac checks: first (the one named, or the primary),
        then, unless a version was named, every other version that holds material, newest
        first (the most likely match after the primary)."""
        yield first
        if explicit:
            return
        others = [
            version
            for version in self._keys.list_enabled_versions(key)
            if version.number != first.number
        ]
        yield from sorted(others, key=lambda version: version.number, reverse=True)

    def asymmetric_decrypt(self, name: str, ciphertext: bytes) -> Sealed:
        _limit("ciphertext", ciphertext, 1024)
        key, version = self._usable(name, Operation.ASYMMETRIC_DECRYPT)
        plaintext = self._keystore.asymmetric_decrypt(version, key.algorithm, ciphertext)
        return Sealed(plaintext, str(version.name))

    # -- MAC and random -------------------------------------------------------------------

    def generate_mac(self, name: str, data: bytes) -> Sealed:
        _limit("data", data, self._policy.max_plaintext_bytes)
        key, version = self._usable(name, Operation.GENERATE_MAC)
        return Sealed(self._keystore.generate_mac(version, key.algorithm, data), str(version.name))

    def verify_mac(self, name: str, data: bytes, mac: bytes) -> tuple[bool, str]:
        """(valid, key version), trying versions as verify does."""
        _limit("data", data, self._policy.max_plaintext_bytes)
        _limit("mac", mac, 128)
        key, primary, explicit = self._usable_named(name, Operation.VERIFY_MAC)
        for version in self._candidates(key, primary, explicit=explicit):
            if self._keystore.verify_mac(version, key.algorithm, data, mac):
                return True, str(version.name)
        return False, str(primary.name)

    def generate_random(self, size: int) -> bytes:
        if not 1 <= size <= MAX_RANDOM_BYTES:
            raise InvalidArgument(f"size must be 1 to {MAX_RANDOM_BYTES} bytes")
        return self._keystore.random(size)


def _check_signing_input(key: Key, data: bytes, prehashed: bool) -> None:
    """What a key's algorithm accepts, the same for Sign and Verify."""
    if not prehashed:
        return
    digest_hash = key.algorithm.digest_hash
    if digest_hash is None:
        raise UnsupportedAlgorithm(
            f"{key.algorithm} signs messages, not digests",
            metadata={"algorithm": str(key.algorithm)},
        )
    if len(data) != DIGEST_SIZES[digest_hash]:
        raise InvalidArgument(
            f"digest must be {DIGEST_SIZES[digest_hash]} bytes of {digest_hash}",
            metadata={"algorithm": str(key.algorithm)},
        )


def _message_or_digest(message: bytes | None, digest: bytes | None) -> tuple[bytes, bool]:
    if (message is None) == (digest is None):
        raise InvalidArgument("give exactly one of message and digest")
    if message is not None:
        _limit(
            "message",
            message,
            MAX_SIGN_MESSAGE_BYTES,
            "send the digest of a larger message instead (EC and RSA-PSS keys; Ed25519 and "
            "RSA PKCS#1 v1.5 keys sign whole messages only)",
        )
        return message, False
    assert digest is not None
    return digest, True


def _limit(field: str, value: bytes, limit: int, advice: str = "") -> None:
    if len(value) > limit:
        raise InputTooLarge(
            f"{field} is larger than {limit} bytes" + (f": {advice}" if advice else ""),
            metadata={"field": field, "limit": str(limit)},
        )
