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
from vault.hsm.native import NestedTemplate

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
    """A key version unwrapped into this process. The root's UNWRAP_TEMPLATE forces SENSITIVE,
    WRAP_WITH_TRUSTED and MODIFIABLE=FALSE; EXTRACTABLE=FALSE closes the last door."""
    key_shape = shape(algorithm)
    return {
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.WRAP_WITH_TRUSTED: True,
        Attribute.ALLOWED_MECHANISMS: list(key_shape.mechanisms),
        **key_shape.usage,
        # Last: SoftHSM applies the template in order, and nothing is settable after this.
        Attribute.MODIFIABLE: False,
    }


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


def root_key(generation: int) -> tuple[Template, NestedTemplate]:
    """The root of the hierarchy (DESIGN.md section 3). Returns the template and the nested
    unwrap template it points into, which must stay referenced until the key is generated."""
    # MODIFIABLE=FALSE in the unwrap template is what lets unwrapped keys carry it at all
    # (SoftHSM refuses it in a plain unwrap call); without it a PIN holder could add DECRYPT
    # to an unwrapped wrapping key.
    forced = NestedTemplate(
        {
            int(Attribute.SENSITIVE): True,
            int(Attribute.WRAP_WITH_TRUSTED): True,
            int(Attribute.MODIFIABLE): False,
        }
    )
    label = f"{ROOT_LABEL_PREFIX}{generation}"
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
