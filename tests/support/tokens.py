"""Direct token access for tests that inspect or attack objects with python-pkcs11."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass

from vault.domain.algorithms import Algorithm
from vault.domain.models import KeyVersion, VersionState
from vault.domain.names import KeyName
from vault.hsm.keystore import Pkcs11KeyStore

KEY_CLASSES = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)


def session_of(keystore: Pkcs11KeyStore) -> Any:
    """The calling thread's logged-in session of the keystore."""
    return keystore._library.context().session


def version_for(material_label: str | None = None, **fields: Any) -> KeyVersion:
    defaults: dict[str, Any] = {
        "name": KeyName("tests", f"k{uuid.uuid4().hex[:12]}").version(1),
        "state": VersionState.ENABLED,
        "create_time": datetime.now(UTC),
        "root_generation": None,
        "wrapped_blob": None,
        "token_label": material_label,
        "public_key_der": None,
    }
    defaults.update(fields)
    return KeyVersion(**defaults)


def generated_version(
    keystore: Pkcs11KeyStore, algorithm: Algorithm, resident: bool = False
) -> KeyVersion:
    """A key version made by the vault's own generation path."""
    label = f"vault:key:{uuid.uuid4().hex}" if resident else None
    material = keystore.generate(algorithm, label)
    return version_for(
        material.token_label,
        root_generation=material.root_generation,
        wrapped_blob=material.wrapped_blob,
        public_key_der=material.public_key_der,
    )


def usable_object(keystore: Pkcs11KeyStore, version: KeyVersion, algorithm: Algorithm) -> Any:
    """The object the vault operates with, as a PIN holder would hold it: the token object
    itself. The keystore hands each thread a view of a shared unwrapped object that only
    performs operations; attacks (attribute changes, copies) go at the object behind it."""
    used = keystore._key(keystore._library.context(), version, algorithm)
    return getattr(used.wrapper, "origin", used)


def root_object(keystore: Pkcs11KeyStore, algorithm: Algorithm = Algorithm.AES_256_GCM) -> Any:
    """The current root that wraps algorithm's keys."""
    context = keystore._library.context()
    return keystore._root(context, keystore.current_root_generation(), algorithm)


def key_objects(session: Any, token_only: bool = False) -> list[Any]:
    found: list[Any] = []
    for object_class in KEY_CLASSES:
        template: dict[Attribute, Any] = {Attribute.CLASS: object_class}
        if token_only:
            template[Attribute.TOKEN] = True
        found.extend(session.get_objects(template))
    return found


@contextmanager
def attacker_wrapping_key(session: Any) -> Iterator[Any]:
    """A wrapping key whose value the attacker knows: anything it wraps is exported."""
    key = session.create_object(
        {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: b"\x42" * 32,
            Attribute.TOKEN: False,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: False,
            Attribute.EXTRACTABLE: True,
            Attribute.WRAP: True,
            Attribute.UNWRAP: True,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
        }
    )
    try:
        yield key
    finally:
        key.destroy()
