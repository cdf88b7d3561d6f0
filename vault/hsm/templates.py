"""Every attribute of every object the vault creates, spelled out (DESIGN.md section 3).

python-pkcs11 fills in capabilities it thinks useful unless told otherwise, so each template
names every usage attribute. No template combines WRAP/UNWRAP with ENCRYPT/DECRYPT/SIGN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.constants import DEFAULT

from vault.domain.algorithms import Algorithm, HashName, KeyFamily, Padding, Purpose
from vault.hsm.native import NestedTemplate, pack_mechanism_list

Template = dict[Attribute, Any]

ROOT_LABEL_PREFIX = "vault:root:"
WRAP_MECHANISM = Mechanism.AES_KEY_WRAP_PAD

_NO_USAGE: Template = {
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.VERIFY: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}

# python-pkcs11's unwrap sets every capability; a private key rejects the public-only ones
# (VERIFY, ENCRYPT, WRAP) with AttributeTypeInvalid, and DEFAULT drops them from the template.
_PRIVATE_NO_USAGE: Template = {
    Attribute.DECRYPT: False,
    Attribute.SIGN: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
    Attribute.VERIFY: DEFAULT,
    Attribute.ENCRYPT: DEFAULT,
    Attribute.WRAP: DEFAULT,
}

# Hash -> (digest mechanism, MGF) for PSS and OAEP parameters.
HASH_MECHANISMS = {
    HashName.SHA1: (Mechanism.SHA_1, MGF.SHA1),
    HashName.SHA256: (Mechanism.SHA256, MGF.SHA256),
    HashName.SHA384: (Mechanism.SHA384, MGF.SHA384),
    HashName.SHA512: (Mechanism.SHA512, MGF.SHA512),
}
HMAC_MECHANISMS = {
    HashName.SHA256: Mechanism.SHA256_HMAC,
    HashName.SHA384: Mechanism.SHA384_HMAC,
    HashName.SHA512: Mechanism.SHA512_HMAC,
}


@dataclass(frozen=True, slots=True)
class KeyShape:
    """How an algorithm's key looks in the token."""

    object_class: ObjectClass
    key_type: KeyType
    usage: Template
    mechanisms: tuple[Mechanism, ...]


def shape(algorithm: Algorithm) -> KeyShape:
    spec = algorithm.spec
    if spec.family is KeyFamily.AES:
        if spec.purpose is Purpose.WRAP_UNWRAP:
            usage = {Attribute.WRAP: True, Attribute.UNWRAP: True}
            mechanisms: tuple[Mechanism, ...] = (WRAP_MECHANISM,)
        else:
            usage = {Attribute.ENCRYPT: True, Attribute.DECRYPT: True}
            mechanisms = (Mechanism.AES_GCM,)
        return KeyShape(ObjectClass.SECRET_KEY, KeyType.AES, {**_NO_USAGE, **usage}, mechanisms)
    if spec.family is KeyFamily.HMAC:
        return KeyShape(
            ObjectClass.SECRET_KEY,
            KeyType.GENERIC_SECRET,
            {**_NO_USAGE, Attribute.SIGN: True, Attribute.VERIFY: True},
            (HMAC_MECHANISMS[spec.hash],),
        )
    if spec.family is KeyFamily.RSA:
        if spec.purpose is Purpose.ASYMMETRIC_DECRYPT:
            return KeyShape(
                ObjectClass.PRIVATE_KEY,
                KeyType.RSA,
                {**_PRIVATE_NO_USAGE, Attribute.DECRYPT: True},
                (Mechanism.RSA_PKCS_OAEP,),
            )
        if spec.padding is Padding.PSS:
            mechanisms = (Mechanism.SHA256_RSA_PKCS_PSS, Mechanism.RSA_PKCS_PSS)
        else:
            mechanisms = (Mechanism.SHA256_RSA_PKCS,)
        return KeyShape(
            ObjectClass.PRIVATE_KEY,
            KeyType.RSA,
            {**_PRIVATE_NO_USAGE, Attribute.SIGN: True},
            mechanisms,
        )
    if spec.family is KeyFamily.EC:
        return KeyShape(
            ObjectClass.PRIVATE_KEY,
            KeyType.EC,
            {**_PRIVATE_NO_USAGE, Attribute.SIGN: True},
            (Mechanism.ECDSA,),
        )
    return KeyShape(
        ObjectClass.PRIVATE_KEY,
        KeyType.EC_EDWARDS,
        {**_PRIVATE_NO_USAGE, Attribute.SIGN: True},
        (Mechanism.EDDSA,),
    )


def _storage(token_label: str | None) -> Template:
    if token_label is None:
        return {Attribute.TOKEN: False}
    return {
        Attribute.TOKEN: True,
        Attribute.LABEL: token_label,
        Attribute.ID: token_label.encode(),
    }


def secret_generation(algorithm: Algorithm, token_label: str | None) -> Template:
    """A new secret key: extractable only to be wrapped under the root right away; a
    token-resident key is never extractable."""
    key_shape = shape(algorithm)
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: key_shape.key_type,
        Attribute.VALUE_LEN: algorithm.spec.bits // 8,
        **_storage(token_label),
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: token_label is None,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.ALLOWED_MECHANISMS: list(key_shape.mechanisms),
        **key_shape.usage,
    }


def private_generation(algorithm: Algorithm, token_label: str | None) -> Template:
    key_shape = shape(algorithm)
    return {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: key_shape.key_type,
        **_storage(token_label),
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: token_label is None,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.ALLOWED_MECHANISMS: list(key_shape.mechanisms),
        **{k: v for k, v in key_shape.usage.items() if v is not DEFAULT},
    }


def public_generation(algorithm: Algorithm) -> Template:
    """The public half lives only long enough to be read; the store keeps its DER."""
    return {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.VERIFY: algorithm.spec.purpose is Purpose.SIGN_VERIFY,
        Attribute.ENCRYPT: algorithm.spec.purpose is Purpose.ASYMMETRIC_DECRYPT,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
    }


def unwrapped_for_use(algorithm: Algorithm) -> Template:
    """A key version unwrapped into this process: exactly what its root's UNWRAP_TEMPLATE
    pins (SoftHSM refuses any other value of a pinned attribute), MODIFIABLE=FALSE last."""
    pins = unwrap_pins(algorithm)
    key_shape = shape(algorithm)
    # python-pkcs11 sets every capability it knows; DEFAULT keeps it from setting the ones a
    # private key rejects.
    dropped = {k: v for k, v in key_shape.usage.items() if v is DEFAULT}
    return {**pins, **dropped, Attribute.MODIFIABLE: False}


def transient_secret(material: bytes | None) -> Template:
    """Caller key material passing through WrapKey/UnwrapKey: a session object with no usage,
    readable by the vault only for the moment it takes to wrap or return it."""
    template: Template = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: True,
        **_NO_USAGE,
    }
    if material is not None:
        template[Attribute.VALUE] = material
    return template


# -- roots ------------------------------------------------------------------------------------
#
# One root per family of key shapes and generation. A root's UNWRAP_TEMPLATE pins every
# capability of its family: SoftHSM lets a PIN holder add any attribute an UNWRAP_TEMPLATE
# leaves out (DERIVE on an EC signing key is an ECDH oracle), so one root for all shapes
# could pin only what they share. Labels: vault:root:<generation>:<family>. Tokens
# provisioned before the split hold a single root per generation, vault:root:<generation>.


def root_family(algorithm: Algorithm) -> str:
    """The root family of an algorithm's wrapped keys; all its members share one shape."""
    spec = algorithm.spec
    if spec.family is KeyFamily.AES:
        return "aes-wrap" if spec.purpose is Purpose.WRAP_UNWRAP else "aes-encrypt"
    if spec.family is KeyFamily.HMAC:
        return f"hmac-{spec.hash.value.lower()}"
    if spec.family is KeyFamily.RSA:
        if spec.purpose is Purpose.ASYMMETRIC_DECRYPT:
            return "rsa-decrypt"
        return "rsa-sign-pss" if spec.padding is Padding.PSS else "rsa-sign-pkcs1"
    if spec.family is KeyFamily.EC:
        return "ec-sign"
    raise ValueError(f"{algorithm} keys are token-resident and have no root")


def _family_members() -> dict[str, tuple[Algorithm, ...]]:
    members: dict[str, list[Algorithm]] = {}
    for algorithm in Algorithm:
        if not algorithm.spec.requires_token_resident:
            members.setdefault(root_family(algorithm), []).append(algorithm)
    return {family: tuple(algorithms) for family, algorithms in members.items()}


# Every family's algorithms; the first one stands for the family's shape.
ROOT_FAMILIES: dict[str, tuple[Algorithm, ...]] = _family_members()


def root_label(generation: int, family: str | None) -> str:
    """family None: the single root of a generation made before roots were split."""
    if family is None:
        return f"{ROOT_LABEL_PREFIX}{generation}"
    return f"{ROOT_LABEL_PREFIX}{generation}:{family}"


def parse_root_label(label: str) -> tuple[int, str | None] | None:
    """(generation, family or None) of a root label; None for any other label."""
    if not label.startswith(ROOT_LABEL_PREFIX):
        return None
    generation, _, family = label.removeprefix(ROOT_LABEL_PREFIX).partition(":")
    if not generation.isdigit():
        return None
    if family and family not in ROOT_FAMILIES:
        return None
    return int(generation), family or None


def unwrap_pins(algorithm: Algorithm) -> Template:
    """Every attribute a root of this algorithm's family forces on what it unwraps: class,
    type, each capability the class has (true only for the purpose's), the mechanisms, and
    the protections. MODIFIABLE=FALSE is not here: it has to come last, see root_key."""
    key_shape = shape(algorithm)
    usage = {k: v for k, v in key_shape.usage.items() if v is not DEFAULT}
    if key_shape.object_class is ObjectClass.PRIVATE_KEY:
        usage[Attribute.SIGN_RECOVER] = False
    return {
        Attribute.CLASS: key_shape.object_class,
        Attribute.KEY_TYPE: key_shape.key_type,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.WRAP_WITH_TRUSTED: True,
        Attribute.COPYABLE: False,
        Attribute.ALLOWED_MECHANISMS: list(key_shape.mechanisms),
        **usage,
    }


def _nested(pins: Template) -> NestedTemplate:
    packed: dict[int, bool | int | bytes] = {}
    for attribute, value in pins.items():
        if attribute is Attribute.ALLOWED_MECHANISMS:
            packed[int(attribute)] = pack_mechanism_list(value)
        elif isinstance(value, bool):
            packed[int(attribute)] = value
        else:
            packed[int(attribute)] = int(value)
    # Last: SoftHSM applies the template in order, and nothing is settable after this. Being
    # in the UNWRAP_TEMPLATE is also what lets an unwrap set it at all.
    packed[int(Attribute.MODIFIABLE)] = False
    return NestedTemplate(packed)


def root_key(generation: int, family: str) -> tuple[Template, NestedTemplate]:
    """A root of the hierarchy (DESIGN.md section 3) for one family. Returns the template and
    the nested unwrap template it points into, which must stay referenced until the key is
    generated."""
    forced = _nested(unwrap_pins(ROOT_FAMILIES[family][0]))
    label = root_label(generation, family)
    template: Template = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE_LEN: 32,
        Attribute.TOKEN: True,
        Attribute.LABEL: label,
        Attribute.ID: label.encode(),
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: True,
        Attribute.WRAP_WITH_TRUSTED: True,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.ALLOWED_MECHANISMS: [WRAP_MECHANISM],
        Attribute.UNWRAP_TEMPLATE: forced,
        **_NO_USAGE,
        Attribute.WRAP: True,
        Attribute.UNWRAP: True,
    }
    return template, forced


# -- import jobs -------------------------------------------------------------------------------
#
# An import job's private key is an RSA token object that can do one thing: unwrap, with
# RSA-OAEP, an ephemeral AES key that in turn can only unwrap (AES-KWP) the caller's material.
# Its UNWRAP_TEMPLATE pins the ephemeral key's every capability, so a PIN holder cannot use the
# job's key to make a key that encrypts, signs or derives.

IMPORT_MECHANISM = Mechanism.RSA_PKCS_OAEP
IMPORT_OAEP_PARAMS = (Mechanism.SHA_1, MGF.SHA1, None)


def ephemeral_pins() -> Template:
    """Everything the ephemeral AES key of an import is: a session object that only unwraps
    with AES-KWP, sensitive and never extractable. MODIFIABLE=FALSE is added last."""
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.COPYABLE: False,
        Attribute.ALLOWED_MECHANISMS: [WRAP_MECHANISM],
        **_NO_USAGE,
        Attribute.UNWRAP: True,
    }


def ephemeral_unwrap() -> Template:
    """The template an import's ephemeral key is unwrapped with: exactly the job key's pins."""
    return {**ephemeral_pins(), Attribute.MODIFIABLE: False}


def import_key_pair(token_label: str) -> tuple[Template, Template, NestedTemplate]:
    """(public, private, nested unwrap template) of an import job's RSA key pair. The public
    half is a session object, read once and destroyed; the nested template must stay
    referenced until the pair is generated."""
    forced = _nested(ephemeral_pins())
    public: Template = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.ENCRYPT: False,
        Attribute.VERIFY: False,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
        Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01",
    }
    private: Template = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: KeyType.RSA,
        **_storage(token_label),
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.ALLOWED_MECHANISMS: [IMPORT_MECHANISM],
        Attribute.DECRYPT: False,
        Attribute.SIGN: False,
        Attribute.SIGN_RECOVER: False,
        Attribute.DERIVE: False,
        Attribute.UNWRAP: True,
        Attribute.UNWRAP_TEMPLATE: forced,
    }
    return public, private, forced


def imported_material(algorithm: Algorithm) -> Template:
    """Caller material as the ephemeral key unwraps it: a session object of the algorithm's
    shape, extractable only so that the root of its family can wrap it at once (as a
    generated key is), and destroyed right after."""
    key_shape = shape(algorithm)
    template: Template = {
        Attribute.CLASS: key_shape.object_class,
        Attribute.KEY_TYPE: key_shape.key_type,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: True,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.ALLOWED_MECHANISMS: list(key_shape.mechanisms),
        **key_shape.usage,
    }
    if key_shape.object_class is ObjectClass.PRIVATE_KEY:
        template[Attribute.SIGN_RECOVER] = False
    return template
