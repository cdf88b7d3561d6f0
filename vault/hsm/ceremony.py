"""Key ceremonies on the token: transport keys, trusting another token's transport key, moving
the roots between tokens under a trusted key, root generations, and the ceremony signing key.

How roots travel (DESIGN.md section 3, README "Ceremonies"): each root (AES-256, 32 bytes) is
wrapped directly with RSA-OAEP (SHA-1, MGF1-SHA1: the only OAEP hash SoftHSM 2.6.1 offers)
under the destination's transport public key, which the source token's SO imported with
TRUSTED=TRUE. An RSA-3072 OAEP-SHA-1 block holds up to 342 bytes, so no intermediate AES key
is needed. A root is WRAP_WITH_TRUSTED, so an untrusted key (even a copy of the trusted one)
gets KeyNotWrappable. The destination unwraps each root with its transport private key into a
token object with the source root's attributes, its UNWRAP_TEMPLATE included.

Roots cannot encrypt, so their check value is not the usual encryption of zeros: it is the
first 8 bytes of SHA-256 of an all-zero AES-256 key wrapped under the root with AES-KWP
(deterministic, so equal on both tokens exactly when the root values are equal).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass, exceptions

from vault.config import Settings
from vault.domain.algorithms import Algorithm
from vault.domain.ceremony import (
    CeremonyRefused,
    DocumentInvalid,
    KeyNotWrappable,
    RootInfo,
    TokenIdentity,
    TransportKey,
    WrappedRoot,
)
from vault.domain.errors import NotFound, PinIncorrect, TokenUnavailable
from vault.hsm import objects, templates
from vault.hsm.environment import use_softhsm_config
from vault.hsm.keystore import generate_pair
from vault.hsm.library import ThreadContext, TokenLibrary, attribute_mapper
from vault.hsm.native import NestedTemplate
from vault.hsm.public import public_key_der

CEREMONY_KEY_LABEL: Final = "vault:system:ceremony:1"
TRANSPORT_PREFIX: Final = "vault:transport:"
TRUSTED_PREFIX: Final = "vault:trusted:"
TRANSPORT_BITS: Final = (3072, 4096)
_CEREMONY_ALGORITHM: Final = Algorithm.EC_SIGN_P256_SHA256
_P256_HALF: Final = 32
_OAEP: Final = (Mechanism.SHA_1, MGF.SHA1, None)
_CHECK_VALUE_BYTES: Final = 8


def transport_label(name: str) -> str:
    return TRANSPORT_PREFIX + name


def trusted_label(name: str) -> str:
    return TRUSTED_PREFIX + name


def _no_usage_private() -> templates.Template:
    return {
        Attribute.DECRYPT: False,
        Attribute.SIGN: False,
        Attribute.SIGN_RECOVER: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }


def _public_rsa_template(public_der: bytes) -> templates.Template:
    key = serialization.load_der_public_key(public_der)
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size not in TRANSPORT_BITS:
        raise CeremonyRefused("a transport public key must be RSA-3072 or RSA-4096")
    numbers = key.public_numbers()
    return {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: KeyType.RSA,
        Attribute.MODULUS: numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
        Attribute.PUBLIC_EXPONENT: numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"),
    }


def _root_shape_pins() -> NestedTemplate:
    """What a transport private key may unwrap: a root-shaped secret key and nothing else (no
    ENCRYPT/DECRYPT/SIGN, never extractable except under a trusted key). MODIFIABLE=FALSE
    last, so the unwrapped root can be made unmodifiable, as the source's is."""
    pins: dict[int, bool | int | bytes] = {
        int(Attribute.CLASS): int(ObjectClass.SECRET_KEY),
        int(Attribute.KEY_TYPE): int(KeyType.AES),
        int(Attribute.PRIVATE): True,
        int(Attribute.SENSITIVE): True,
        int(Attribute.EXTRACTABLE): True,
        int(Attribute.WRAP_WITH_TRUSTED): True,
        int(Attribute.COPYABLE): False,
        int(Attribute.ENCRYPT): False,
        int(Attribute.DECRYPT): False,
        int(Attribute.SIGN): False,
        int(Attribute.VERIFY): False,
        int(Attribute.DERIVE): False,
        int(Attribute.WRAP): True,
        int(Attribute.UNWRAP): True,
        int(Attribute.MODIFIABLE): False,
    }
    return NestedTemplate(pins)


def _pkcs11_lib(settings: Settings) -> Any:
    use_softhsm_config(settings)
    return pkcs11.lib(str(settings.hsm.module))


def trust_transport_key(
    settings: Settings, so_pin: Callable[[], str], name: str, public_der: bytes
) -> TransportKey:
    """As the SO: import another token's transport public key with TRUSTED=TRUE and WRAP=TRUE
    only, then log out. Must run before this process logs in as user (PKCS#11 allows one
    user type at a time per application), so before CeremonyToken is opened."""
    label = trusted_label(name)
    template = {
        **_public_rsa_template(public_der),
        Attribute.TOKEN: True,
        # The SO can create only public objects.
        Attribute.PRIVATE: False,
        Attribute.LABEL: label,
        Attribute.ID: label.encode(),
        Attribute.TRUSTED: True,
        Attribute.WRAP: True,
        Attribute.ENCRYPT: False,
        Attribute.VERIFY: False,
        Attribute.VERIFY_RECOVER: False,
        Attribute.DERIVE: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.ALLOWED_MECHANISMS: [Mechanism.RSA_PKCS_OAEP],
    }
    try:
        token = _pkcs11_lib(settings).get_token(token_label=settings.hsm.token_label)
    except exceptions.NoSuchToken:
        raise TokenUnavailable(
            f"no token labelled {settings.hsm.token_label!r}: run `vaultctl token init`"
        ) from None
    pin = so_pin()
    try:
        session = token.open(rw=True, so_pin=pin, attribute_mapper=attribute_mapper())
    except exceptions.PinIncorrect:
        raise PinIncorrect("PIN incorrect: the token refused the SO PIN") from None
    finally:
        del pin
    try:
        if any(True for _ in session.get_objects({Attribute.LABEL: label})):
            raise CeremonyRefused(f"the token already holds a key labelled {label}")
        session.create_object(template)
    except exceptions.PKCS11Error as error:
        raise CeremonyRefused(
            f"the token refused to import the trusted key ({type(error).__name__})"
        ) from None
    finally:
        # Closing the session that logged in logs the SO out.
        session.close()
    return TransportKey(label, public_der)


class CeremonyToken:
    """The token logged in as user, for the ceremonies' user-side steps."""

    def __init__(self, library: TokenLibrary) -> None:
        self._library = library

    @property
    def library(self) -> TokenLibrary:
        return self._library

    def __repr__(self) -> str:
        return "CeremonyToken()"

    def _run(self, operation: Callable[[ThreadContext], Any]) -> Any:
        """operation on this thread's session, with the token layer's recovery and errors."""
        return self._library.run(operation)

    # -- identity and signing -----------------------------------------------------------------

    def identity(self) -> TokenIdentity:
        token = self._library.token
        return TokenIdentity(
            label=token.label,
            serial=bytes(token.serial).decode("ascii", "replace").strip(),
            manufacturer=token.manufacturer_id,
            model=token.model,
        )

    def ceremony_public_key(self, *, create: bool = True) -> bytes:
        """DER SubjectPublicKeyInfo of the ceremony signing key, created at first use (unless
        not create: NotFound then): ECDSA P-256, private half SIGN only, public half VERIFY
        only, both private token objects."""

        def ensure(context: ThreadContext) -> bytes:
            session = context.session
            try:
                public = objects.find_one(session, ObjectClass.PUBLIC_KEY, CEREMONY_KEY_LABEL)
            except exceptions.ObjectHandleInvalid:
                if not create:
                    raise NotFound(
                        "this token has no ceremony key, so it signed no ceremony record"
                    ) from None
                public_template = {
                    **templates.public_generation(_CEREMONY_ALGORITHM),
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.LABEL: CEREMONY_KEY_LABEL,
                    Attribute.ID: CEREMONY_KEY_LABEL.encode(),
                }
                public, _ = generate_pair(
                    session, _CEREMONY_ALGORITHM, CEREMONY_KEY_LABEL, public_template
                )
            return public_key_der(_CEREMONY_ALGORITHM, public)

        der: bytes = self._run(ensure)
        return der

    def sign(self, payload: bytes) -> bytes:
        """A DER ECDSA-P256-SHA256 signature of payload by the ceremony key."""
        self.ceremony_public_key()
        digest = hashlib.sha256(payload).digest()

        def sign(context: ThreadContext) -> bytes:
            key = objects.find_one(context.session, ObjectClass.PRIVATE_KEY, CEREMONY_KEY_LABEL)
            return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

        raw: bytes = self._run(sign)
        return asym_utils.encode_dss_signature(
            int.from_bytes(raw[:_P256_HALF], "big"), int.from_bytes(raw[_P256_HALF:], "big")
        )

    # -- transport keys -------------------------------------------------------------------------

    def create_transport_key(self, name: str, bits: int) -> TransportKey:
        """An RSA transport key pair: private half non-extractable, sensitive, UNWRAP only
        (RSA-OAEP only, and only into root-shaped keys); public half kept as a token object
        with no usage at all, so its fingerprint can be read again."""
        if bits not in TRANSPORT_BITS:
            raise CeremonyRefused("a transport key is RSA-3072 or RSA-4096")
        label = transport_label(name)
        pins = _root_shape_pins()

        def create(context: ThreadContext) -> bytes:
            session = context.session
            if any(True for _ in session.get_objects({Attribute.LABEL: label})):
                raise CeremonyRefused(f"the token already holds a key labelled {label}")
            public, _ = session.generate_keypair(
                KeyType.RSA,
                bits,
                capabilities=0,
                public_template={
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: label,
                    Attribute.ID: label.encode(),
                    Attribute.MODIFIABLE: False,
                    Attribute.COPYABLE: False,
                    Attribute.DESTROYABLE: True,
                    Attribute.ENCRYPT: False,
                    Attribute.VERIFY: False,
                    Attribute.VERIFY_RECOVER: False,
                    Attribute.WRAP: False,
                    Attribute.DERIVE: False,
                    Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
                },
                private_template={
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.TOKEN: True,
                    Attribute.LABEL: label,
                    Attribute.ID: label.encode(),
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.MODIFIABLE: False,
                    Attribute.COPYABLE: False,
                    Attribute.DESTROYABLE: True,
                    Attribute.ALLOWED_MECHANISMS: [Mechanism.RSA_PKCS_OAEP],
                    Attribute.UNWRAP_TEMPLATE: pins,
                    **_no_usage_private(),
                    Attribute.UNWRAP: True,
                },
            )
            return _rsa_public_der(public)

        der: bytes = self._run(create)
        return TransportKey(label, der)

    def transport_key(self, name: str) -> TransportKey:
        """The public half of this token's transport key name."""
        label = transport_label(name)
        der: bytes = self._run(
            lambda context: _rsa_public_der(
                _find(context.session, ObjectClass.PUBLIC_KEY, label, "transport key")
            )
        )
        return TransportKey(label, der)

    def trusted_key(self, name: str) -> TransportKey:
        label = trusted_label(name)
        der: bytes = self._run(
            lambda context: _rsa_public_der(
                _find(context.session, ObjectClass.PUBLIC_KEY, label, "trusted key")
            )
        )
        return TransportKey(label, der)

    # -- roots --------------------------------------------------------------------------------

    def roots(self) -> list[RootInfo]:
        """Every per-family root of every generation, with its check value."""

        def read(context: ThreadContext) -> list[RootInfo]:
            found = []
            for label in sorted(set(objects.token_labels(context.session, ObjectClass.SECRET_KEY))):
                parsed = templates.parse_root_label(label)
                if parsed is None:
                    continue
                generation, family = parsed
                root = objects.find_one(context.session, ObjectClass.SECRET_KEY, label)
                found.append(RootInfo(label, generation, family, _check_value(context, root)))
            return found

        result: list[RootInfo] = self._run(read)
        return result

    def wrap_roots(self, trusted_name: str) -> list[WrappedRoot]:
        """Every root wrapped under the trusted public key trusted_name (RSA-OAEP SHA-1).
        KeyNotWrappable when that key is not TRUSTED (the SO never marked it)."""
        label = trusted_label(trusted_name)
        roots = self.roots()
        if not roots:
            raise CeremonyRefused("the token holds no roots")
        legacy = [root.label for root in roots if root.family is None]
        if legacy:
            raise CeremonyRefused(
                f"root {legacy[0]} was made before roots were split by family and is not "
                "moved by this ceremony: retire its generation first"
            )

        def wrap(context: ThreadContext) -> list[WrappedRoot]:
            wrapping = _find(context.session, ObjectClass.PUBLIC_KEY, label, "trusted key")
            wrapped = []
            for root in roots:
                obj = objects.find_one(context.session, ObjectClass.SECRET_KEY, root.label)
                try:
                    blob = bytes(
                        wrapping.wrap_key(
                            obj, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=_OAEP
                        )
                    )
                except exceptions.KeyNotWrappable:
                    raise KeyNotWrappable(
                        f"the token refuses to wrap its roots under {label}: that key is not "
                        "trusted by this token's SO (run `vaultctl ceremony transport-key "
                        "trust` on this token first)"
                    ) from None
                family = root.family or ""
                wrapped.append(
                    WrappedRoot(root.label, root.generation, family, root.check_value, blob)
                )
            return wrapped

        result: list[WrappedRoot] = self._run(wrap)
        return result

    def unwrap_root(self, transport_name: str, root: WrappedRoot) -> RootInfo:
        """One received root, unwrapped with the transport private key into a token object
        with the attributes of a root of its family and generation (templates.root_key)."""
        transport = transport_label(transport_name)
        if (
            root.family not in templates.ROOT_FAMILIES
            or templates.root_label(root.generation, root.family) != root.label
        ):
            raise DocumentInvalid(f"the transfer names an unknown root {root.label!r}")
        # template holds the nested unwrap template's buffers while it is in use.
        template, _ = templates.root_key(root.generation, root.family)
        # An unwrapped key takes its length from the blob; MODIFIABLE=FALSE has to be last.
        template = {
            k: v
            for k, v in template.items()
            if k not in (Attribute.VALUE_LEN, Attribute.MODIFIABLE)
        }
        template[Attribute.MODIFIABLE] = False

        def unwrap(context: ThreadContext) -> RootInfo:
            private = _find(context.session, ObjectClass.PRIVATE_KEY, transport, "transport key")
            try:
                obj = private.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    root.wrapped,
                    mechanism=Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=_OAEP,
                    capabilities=0,
                    template=template,
                )
            except (
                exceptions.WrappedKeyInvalid,
                exceptions.WrappedKeyLenRange,
                exceptions.EncryptedDataInvalid,
                exceptions.DataInvalid,
            ):
                raise CeremonyRefused(
                    f"root {root.label} does not unwrap with {transport}: the transfer was "
                    "made for another transport key"
                ) from None
            received = RootInfo(
                root.label, root.generation, root.family, _check_value(context, obj)
            )
            if received.check_value != root.check_value:
                objects.destroy_quietly(obj)
                raise CeremonyRefused(
                    f"root {root.label} unwrapped to a key whose check value differs from the "
                    "source's; it was removed"
                )
            return received

        info: RootInfo = self._run(unwrap)
        return info

    def destroy_root(self, label: str) -> None:
        def destroy(context: ThreadContext) -> None:
            for obj in context.session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
            ):
                obj.destroy()

        self._run(destroy)

    def new_root_generation(self, above: int) -> int:
        """Create the roots of a new generation, numbered above every generation the token
        holds and above `above`; returns its number. If the token's newest generation is
        missing some families' roots (a run interrupted midway), those are created instead,
        as `token init` does."""
        from vault.hsm.provision import create_root_keys

        def create(context: ThreadContext) -> int:
            existing = objects.root_generations(context.session)
            newest = max(existing, default=0)
            families = existing.get(newest, frozenset())
            missing = set(templates.ROOT_FAMILIES) - set(families)
            if newest and None not in families and missing and newest >= above:
                generation = newest
            else:
                generation = max(newest, above) + 1
                missing = set(templates.ROOT_FAMILIES)
            create_root_keys(context.session, generation, missing)
            return generation

        generation: int = self._run(create)
        return generation

    def current_generation(self) -> int | None:
        """The generation new key versions go under (Pkcs11KeyStore's rule): the newest
        one with a root of every family."""

        def current(context: ThreadContext) -> int | None:
            generations = objects.root_generations(context.session)
            split = [
                g for g in objects.complete_generations(generations) if None not in generations[g]
            ]
            return max(split, default=None)

        result: int | None = self._run(current)
        return result

    def destroy_transport_key(self, name: str) -> None:
        """Both halves of this token's transport key name."""
        label = transport_label(name)

        def destroy(context: ThreadContext) -> None:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in context.session.get_objects(
                    {Attribute.CLASS: object_class, Attribute.LABEL: label}
                ):
                    obj.destroy()

        self._run(destroy)

    def root_generations(self) -> dict[int, frozenset[str | None]]:
        result: dict[int, frozenset[str | None]] = self._run(
            lambda context: objects.root_generations(context.session)
        )
        return result


def _find(session: Any, object_class: ObjectClass, label: str, what: str) -> Any:
    try:
        return objects.find_one(session, object_class, label)
    except exceptions.ObjectHandleInvalid:
        raise NotFound(f"the token holds no {what} labelled {label}") from None


def _rsa_public_der(public: Any) -> bytes:
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(bytes(public[Attribute.PUBLIC_EXPONENT]), "big"),
        int.from_bytes(bytes(public[Attribute.MODULUS]), "big"),
    )
    return numbers.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_value(context: ThreadContext, root: Any) -> str:
    """See the module docstring: the root's wrap of an all-zero AES key, hashed."""
    zero = context.session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: bytes(32),
            Attribute.TOKEN: False,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: False,
            Attribute.EXTRACTABLE: True,
            Attribute.ENCRYPT: False,
            Attribute.DECRYPT: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
    )
    try:
        wrapped = bytes(root.wrap_key(zero, mechanism=templates.WRAP_MECHANISM))
    finally:
        objects.destroy_quietly(zero)
    return hashlib.sha256(wrapped).hexdigest()[: 2 * _CHECK_VALUE_BYTES]


def open_ceremony_token(settings: Settings) -> CeremonyToken:
    """Start the module in this process and log in as user."""
    use_softhsm_config(settings)
    return CeremonyToken(
        TokenLibrary(settings.hsm.module, settings.hsm.token_label, settings.user_pin)
    )
