"""Cryptographic use cases. Each call loads the key from the store, checks purpose and state,
then asks the token; nothing here touches key material except data keys the caller asked for."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar, cast

from vault.domain.algorithms import DIGEST_SIZES, MAX_SIGNED_MESSAGE_BYTES
from vault.domain.envelope import (
    NONCE_SIZE,
    GcmEnvelope,
    WrappedEnvelope,
    gcm_aad,
    gcm_aad_prefix,
    gcm_header,
)
from vault.domain.errors import (
    DecryptionFailed,
    InputTooLarge,
    InvalidArgument,
    NotFound,
    UnsupportedAlgorithm,
    VaultError,
)
from vault.domain.models import Key, KeyVersion, Operation
from vault.domain.names import KeyName, parse_key_or_version
from vault.domain.policy import KeyPolicy
from vault.domain.ports import KeyStore, TokenGcm, TokenSign
from vault.domain.public_keys import verify_signature
from vault.service.keys import KeyManagement

MAX_AAD_BYTES = 65_536
MAX_SIGN_MESSAGE_BYTES = MAX_SIGNED_MESSAGE_BYTES
MAX_RANDOM_BYTES = 1024
MAX_SIGNATURE_BYTES = 1024  # RSA-4096 signatures are 512 bytes
MIN_WRAPPED_MATERIAL = 16
MAX_WRAPPED_MATERIAL = 4096
DATA_KEY_SIZES = frozenset({16, 24, 32, 64})
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
_Request = TypeVar("_Request")
_Context = TypeVar("_Context")
_ENVELOPE_ADVICE = (
    "encrypt larger data locally under a data key from GenerateDataKey (envelope "
    "encryption), and store the encrypted data key beside it"
)


class Sealed(NamedTuple):
    """A result produced with a specific key version. A tuple: a batch makes one per item."""

    data: bytes
    key_version_name: str

    def __repr__(self) -> str:
        return f"Sealed(key_version_name={self.key_version_name!r}, data=<{len(self.data)} bytes>)"


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


# One item of a batch call each: the arguments of the unary method. The GCM items are
# tuples, cheaper to build than frozen dataclasses, as a batch makes one per item.


class EncryptItem(NamedTuple):
    name: str
    plaintext: bytes
    aad: bytes

    def __repr__(self) -> str:
        return f"EncryptItem(name={self.name!r}, plaintext=<{len(self.plaintext)} bytes>)"


class DecryptItem(NamedTuple):
    name: str
    ciphertext: bytes
    aad: bytes


@dataclass(frozen=True, slots=True)
class SignItem:
    name: str
    message: bytes | None
    digest: bytes | None


@dataclass(frozen=True, slots=True)
class VerifyItem:
    name: str
    message: bytes | None
    digest: bytes | None
    signature: bytes


@dataclass(frozen=True, slots=True)
class DataKeyItem:
    name: str
    size: int
    aad: bytes
    include_plaintext: bool


_Check = Callable[[str, Operation, "_Keys"], tuple[Key, KeyVersion, bool]]
_Wanted = TypeVar("_Wanted")
_Found = TypeVar("_Found")


def _once(
    memo: dict[_Wanted, _Found | VaultError], wanted: _Wanted, find: Callable[[_Wanted], _Found]
) -> _Found:
    """find(wanted), or the VaultError it raised, worked out once per batch call: the items
    naming the same thing share the answer and cost one dictionary lookup each."""
    found = memo.get(wanted)
    if found is None:
        try:
            found = find(wanted)
        except VaultError as error:
            found = error
        memo[wanted] = found
    if isinstance(found, VaultError):
        raise found.with_traceback(None)
    return found


class _Keys:
    """Where a call finds its keys and versions: the store (through KeyManagement's caches)
    for a unary call."""

    def __init__(self, keys: KeyManagement) -> None:
        self._keys = keys

    def load(self, name: KeyName) -> Key:
        return self._keys.load(name)

    def version(self, key: Key, number: int | None) -> KeyVersion:
        return self._keys.version(key, number)

    def load_with_version(
        self, name: KeyName, number: int | None
    ) -> tuple[Key, KeyVersion | VaultError]:
        """load(name) and version(key, number), the version's error returned, not raised."""
        return self._keys.load_with_version(name, number)

    def usable(
        self, name: str, operation: Operation, check: _Check
    ) -> tuple[Key, KeyVersion, bool]:
        """check(name, operation, self): what name may be used for, or its error."""
        return check(name, operation, self)


class _BatchKeys(_Keys):
    """A batch call's keys: each key read from the store once per call, however many items
    name it, so an item costs its token operation and not another store read. A snapshot
    taken as the call runs, as a unary call's is; errors are remembered as well, so an item
    naming a missing key costs no more than one naming a present one."""

    def __init__(self, keys: KeyManagement) -> None:
        super().__init__(keys)
        self._loaded: dict[KeyName, Key | VaultError] = {}
        self._versions: dict[tuple[KeyName, int | None], KeyVersion | VaultError] = {}
        # Items naming the same key for the same operation are checked once per call.
        self._usable: dict[tuple[str, Operation], tuple[Key, KeyVersion, bool] | VaultError] = {}

    def usable(
        self, name: str, operation: Operation, check: _Check
    ) -> tuple[Key, KeyVersion, bool]:
        return _once(self._usable, (name, operation), lambda _: check(name, operation, self))

    def load(self, name: KeyName) -> Key:
        return _once(self._loaded, name, self._keys.load)

    def version(self, key: Key, number: int | None) -> KeyVersion:
        return _once(self._versions, (key.name, number), lambda _: self._keys.version(key, number))

    def load_with_version(
        self, name: KeyName, number: int | None
    ) -> tuple[Key, KeyVersion | VaultError]:
        key = self.load(name)
        try:
            return key, self.version(key, number)
        except VaultError as error:
            return key, error


def _each(
    items: Sequence[_Item], operation: Callable[[_Item], _Result]
) -> list[_Result | VaultError]:
    """operation's result for each item, or the VaultError it raised; in order."""
    results: list[_Result | VaultError] = []
    for item in items:
        try:
            results.append(operation(item))
        except VaultError as error:
            results.append(error)
    return results


def through_token(
    items: Sequence[_Item],
    prepare: Callable[[_Item], tuple[_Request, _Context]],
    token: Callable[[list[_Request]], list[bytes | VaultError]],
    finish: Callable[[bytes, _Request, _Context], _Result],
) -> list[_Result | VaultError]:
    """For each item: prepare(item) checks it and says what to ask of the token; the token
    does every prepared request in one call; finish makes the item's result of its answer.
    An item whose preparation, token answer or finish raises a VaultError gets that error;
    a token call that fails as a whole gives its error to every item it carried."""
    # Parallel lists rather than a tuple per item: this loop runs once per item.
    results: list[_Result | VaultError | None] = []
    places: list[int] = []
    requests: list[_Request] = []
    contexts: list[_Context] = []
    for item in items:
        try:
            request, context = prepare(item)
        except VaultError as error:
            results.append(error)
            continue
        places.append(len(results))
        requests.append(request)
        contexts.append(context)
        results.append(None)
    answers: list[bytes | VaultError]
    try:
        answers = token(requests) if requests else []
    except VaultError as error:
        answers = [error] * len(requests)
    for index, request, context, answer in zip(places, requests, contexts, answers, strict=True):
        if isinstance(answer, VaultError):
            results[index] = answer
            continue
        try:
            results[index] = finish(answer, request, context)
        except VaultError as error:
            results[index] = error
    return cast(list[_Result | VaultError], results)


@dataclass(frozen=True, slots=True)
class _Sealing:
    """What the AES-GCM items of one batch on one key version share, made once per call: the
    envelope's header and the start of the AAD that binds it and the key's name."""

    key: Key
    version: KeyVersion
    header: bytes
    aad_prefix: bytes
    version_name: str

    @classmethod
    def of(cls, key: Key, version: KeyVersion) -> _Sealing:
        header = gcm_header(version.number)
        return cls(key, version, header, gcm_aad_prefix(header, str(key.name)), str(version.name))

    def envelope(self, nonce: bytes, sealed: bytes) -> bytes:
        """GcmEnvelope(version, nonce, sealed).to_bytes(), in one copy of sealed."""
        return b"".join((self.header, nonce, sealed))

    def request(self, nonce: bytes, data: bytes, aad: bytes) -> TokenGcm:
        """The token request of one item: gcm_aad(header, key name, aad) as a unary call
        builds it."""
        return TokenGcm(self.version, self.key.algorithm, nonce, data, self.aad_prefix + aad)


class _BatchSealer:
    """The encryptions of one batch call: each name checked once for operation, and the
    items' nonces.

    The nonces come from one draw of the operating system's CSPRNG per call, cut into 96-bit
    pieces, one per item, never reused: each is as random and as unpredictable as a draw of
    its own (the pieces of one draw are independent), so the collision bound of random GCM
    nonces is unchanged, and a call makes one getrandom() instead of one per item."""

    def __init__(
        self, crypto: CryptoOperations, keys: _BatchKeys, operation: Operation, count: int
    ) -> None:
        self._crypto = crypto
        self._keys = keys
        self._operation = operation
        drawn = secrets.token_bytes(NONCE_SIZE * count)
        # Each nonce once: one more than count raises StopIteration, an internal error.
        self.nonce: Callable[[], bytes] = iter(
            [drawn[start : start + NONCE_SIZE] for start in range(0, len(drawn), NONCE_SIZE)]
        ).__next__
        self._found: dict[str, _Sealing | VaultError] = {}

    def sealing(self, name: str) -> _Sealing:
        return _once(self._found, name, self._sealing_of)

    def _sealing_of(self, name: str) -> _Sealing:
        return _Sealing.of(*self._crypto._usable(name, self._operation, self._keys))


class CryptoOperations:
    def __init__(self, keys: KeyManagement, keystore: KeyStore, policy: KeyPolicy) -> None:
        self._keys = keys
        self._keystore = keystore
        self._policy = policy
        self._direct = _Keys(keys)

    def _usable(
        self, name: str, operation: Operation, keys: _Keys | None = None
    ) -> tuple[Key, KeyVersion]:
        key, version, _ = self._usable_named(name, operation, keys)
        return key, version

    def _usable_named(
        self, name: str, operation: Operation, keys: _Keys | None = None
    ) -> tuple[Key, KeyVersion, bool]:
        """(key, the version name names or the primary, whether name named a version)."""
        keys = keys or self._direct
        return keys.usable(name, operation, self._check_usable)

    def _check_usable(
        self, name: str, operation: Operation, keys: _Keys
    ) -> tuple[Key, KeyVersion, bool]:
        key_name, number = parse_key_or_version(name)
        key, version = keys.load_with_version(key_name, number)
        key.require(operation)
        if isinstance(version, VaultError):
            raise version.with_traceback(None)
        version.require(operation)
        return key, version, number is not None

    # -- batches --------------------------------------------------------------------------

    def encrypt_batch(self, items: Sequence[EncryptItem]) -> list[Sealed | VaultError]:
        """encrypt() for each item; its result or its error, in order. Likewise the other
        *_batch methods: the checks, the answers and the errors are the unary method's, and
        the token does all items in one call (KeyStore's *_many). What items on one key
        share (its checks, envelope header and AAD prefix) is worked out once per call."""
        sealer = _BatchSealer(self, _BatchKeys(self._keys), Operation.ENCRYPT, len(items))
        max_plaintext = self._policy.max_plaintext_bytes

        def prepare(item: EncryptItem) -> tuple[TokenGcm, _Sealing]:
            plaintext, aad = item.plaintext, item.aad
            if len(plaintext) > max_plaintext:
                _limit("plaintext", plaintext, max_plaintext, _ENVELOPE_ADVICE)
            if len(aad) > MAX_AAD_BYTES:
                _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
            sealing = sealer.sealing(item.name)
            return sealing.request(sealer.nonce(), plaintext, aad), sealing

        def finish(sealed: bytes, request: TokenGcm, sealing: _Sealing) -> Sealed:
            return Sealed(sealing.envelope(request.nonce, sealed), sealing.version_name)

        return through_token(items, prepare, self._keystore.encrypt_gcm_many, finish)

    def decrypt_batch(self, items: Sequence[DecryptItem]) -> list[Sealed | VaultError]:
        keys = _BatchKeys(self._keys)
        max_ciphertext = self._policy.max_plaintext_bytes + 64
        # Per call: each name's key (or why it cannot decrypt), and each (name, version) the
        # ciphertexts name, with its AAD prefix (or the uniform error).
        named: dict[str, Key | VaultError] = {}
        opening: dict[tuple[str, int], _Sealing | VaultError] = {}

        def decrypting_key(name: str) -> Key:
            key = keys.load(KeyName.parse(name))
            key.require(Operation.DECRYPT)
            return key

        def opening_of(wanted: tuple[str, int]) -> _Sealing:
            name, number = wanted
            key = _once(named, name, decrypting_key)
            return _Sealing.of(key, self._ciphertext_version(key, number, keys))

        def prepare(item: DecryptItem) -> tuple[TokenGcm, _Sealing]:
            ciphertext, aad = item.ciphertext, item.aad
            if len(ciphertext) > max_ciphertext:
                _limit("ciphertext", ciphertext, max_ciphertext)
            if len(aad) > MAX_AAD_BYTES:
                _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
            _once(named, item.name, decrypting_key)  # the key's errors before the envelope's
            envelope = GcmEnvelope.parse(ciphertext)
            sealing = _once(opening, (item.name, envelope.key_version), opening_of)
            return sealing.request(envelope.nonce, envelope.sealed, aad), sealing

        def finish(plaintext: bytes, request: TokenGcm, sealing: _Sealing) -> Sealed:
            return Sealed(plaintext, sealing.version_name)

        return through_token(items, prepare, self._keystore.decrypt_gcm_many, finish)

    def sign_batch(self, items: Sequence[SignItem]) -> list[Sealed | VaultError]:
        keys = _BatchKeys(self._keys)

        def prepare(item: SignItem) -> tuple[TokenSign, KeyVersion]:
            data, prehashed = _message_or_digest(item.message, item.digest)
            key, version = self._usable(item.name, Operation.SIGN, keys)
            _check_signing_input(key, data, prehashed)
            return TokenSign(version, key.algorithm, data, prehashed), version

        def finish(signature: bytes, request: TokenSign, version: KeyVersion) -> Sealed:
            return Sealed(signature, str(version.name))

        return through_token(items, prepare, self._keystore.sign_many, finish)

    def verify_batch(self, items: Sequence[VerifyItem]) -> list[tuple[bool, str] | VaultError]:
        # Verification is done here with the public key, not by the token.
        keys = _BatchKeys(self._keys)
        return _each(
            items,
            lambda item: self.verify(
                item.name,
                message=item.message,
                digest=item.digest,
                signature=item.signature,
                keys=keys,
            ),
        )

    def generate_data_key_batch(self, items: Sequence[DataKeyItem]) -> list[DataKey | VaultError]:
        sealer = _BatchSealer(self, _BatchKeys(self._keys), Operation.GENERATE_DATA_KEY, len(items))

        def prepare(item: DataKeyItem) -> tuple[TokenGcm, tuple[_Sealing, bytes, bool]]:
            size = item.size or 32
            if size not in DATA_KEY_SIZES:
                raise InvalidArgument(
                    "data key size must be 16, 24, 32 or 64 bytes", metadata={"size": str(size)}
                )
            _limit("additional_authenticated_data", item.aad, MAX_AAD_BYTES)
            sealing = sealer.sealing(item.name)
            material = self._keystore.random(size)
            request = sealing.request(sealer.nonce(), material, item.aad)
            return request, (sealing, material, item.include_plaintext)

        def finish(sealed: bytes, request: TokenGcm, made: tuple[_Sealing, bytes, bool]) -> DataKey:
            sealing, material, include_plaintext = made
            plaintext = material if include_plaintext else None
            return DataKey(sealing.envelope(request.nonce, sealed), plaintext, sealing.version_name)

        return through_token(items, prepare, self._keystore.encrypt_gcm_many, finish)

    def _gcm_request(self, key: Key, version: KeyVersion, plaintext: bytes, aad: bytes) -> TokenGcm:
        """What _seal asks of the token: a fresh nonce, and the AAD that binds the envelope's
        header and the key's name."""
        envelope = GcmEnvelope(version.number, secrets.token_bytes(NONCE_SIZE), b"")
        full_aad = gcm_aad(envelope.header(), str(key.name), aad)
        return TokenGcm(version, key.algorithm, envelope.nonce, plaintext, full_aad)

    def _envelope_version(
        self, key: Key, ciphertext: bytes, keys: _Keys
    ) -> tuple[GcmEnvelope, KeyVersion]:
        envelope = GcmEnvelope.parse(ciphertext)
        return envelope, self._ciphertext_version(key, envelope.key_version, keys)

    @staticmethod
    def _ciphertext_version(key: Key, number: int, keys: _Keys) -> KeyVersion:
        """The version a ciphertext names; one that is gone fails as every decryption does."""
        try:
            return keys.version(key, number)
        except NotFound:
            raise DecryptionFailed() from None

    # -- symmetric ----------------------------------------------------------------------

    def encrypt(self, name: str, plaintext: bytes, aad: bytes, keys: _Keys | None = None) -> Sealed:
        _limit("plaintext", plaintext, self._policy.max_plaintext_bytes, _ENVELOPE_ADVICE)
        _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
        key, version = self._usable(name, Operation.ENCRYPT, keys)
        return self._seal(key, version, plaintext, aad)

    def _seal(self, key: Key, version: KeyVersion, plaintext: bytes, aad: bytes) -> Sealed:
        # 96-bit random nonces: collision risk stays below 2^-32 up to 2^32 messages per key
        # version, and rotation starts a new version.
        request = self._gcm_request(key, version, plaintext, aad)
        sealed = self._keystore.encrypt_gcm(
            version, key.algorithm, request.nonce, plaintext, request.aad
        )
        result = GcmEnvelope(version.number, request.nonce, sealed)
        return Sealed(result.to_bytes(), str(version.name))

    def decrypt(
        self, name: str, ciphertext: bytes, aad: bytes, keys: _Keys | None = None
    ) -> Sealed:
        _limit("ciphertext", ciphertext, self._policy.max_plaintext_bytes + 64)
        _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
        keys = keys or self._direct
        key_name = KeyName.parse(name)
        key = keys.load(key_name)
        key.require(Operation.DECRYPT)
        return self._open(key, ciphertext, aad, keys)

    def _open(self, key: Key, ciphertext: bytes, aad: bytes, keys: _Keys | None = None) -> Sealed:
        envelope, version = self._envelope_version(key, ciphertext, keys or self._direct)
        full_aad = gcm_aad(envelope.header(), str(key.name), aad)
        plaintext = self._keystore.decrypt_gcm(
            version, key.algorithm, envelope.nonce, envelope.sealed, full_aad
        )
        return Sealed(plaintext, str(version.name))

    def generate_data_key(
        self,
        name: str,
        size: int,
        aad: bytes,
        include_plaintext: bool,
        keys: _Keys | None = None,
    ) -> DataKey:
        size = size or 32
        if size not in DATA_KEY_SIZES:
            raise InvalidArgument(
                "data key size must be 16, 24, 32 or 64 bytes", metadata={"size": str(size)}
            )
        _limit("additional_authenticated_data", aad, MAX_AAD_BYTES)
        key, version = self._usable(name, Operation.GENERATE_DATA_KEY, keys)
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

    def sign(
        self,
        name: str,
        *,
        message: bytes | None,
        digest: bytes | None,
        keys: _Keys | None = None,
    ) -> Sealed:
        data, prehashed = _message_or_digest(message, digest)
        key, version = self._usable(name, Operation.SIGN, keys)
        _check_signing_input(key, data, prehashed)
        signature = self._keystore.sign(version, key.algorithm, data, prehashed)
        return Sealed(signature, str(version.name))

    def verify(
        self,
        name: str,
        *,
        message: bytes | None,
        digest: bytes | None,
        signature: bytes,
        keys: _Keys | None = None,
    ) -> tuple[bool, str]:
        """(valid, key version). valid=False for any signature that does not verify,
        malformed or oversized included; errors only for what Sign would also refuse.

        A key version in name checks against that version only. A key name checks against
        its primary version, then its other versions that still verify, so a signature made
        before a rotation is still recognised; the version that matched is returned, and a
        signature that matches none gets the same answer as always: invalid, primary."""
        data, prehashed = _message_or_digest(message, digest)
        key, primary, explicit = self._usable_named(name, Operation.VERIFY, keys)
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
