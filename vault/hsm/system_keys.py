"""The vault's own token keys, beside the root: the credential key and the audit key.

- The credential key (HMAC-SHA256, SIGN/VERIFY only) derives every access key's secret from a
  per-key random salt, and computes the keyed hash under which API keys are stored. The store
  therefore holds nothing a thief could sign requests with.
- The audit key (ECDSA P-256; private half SIGN only, public half VERIFY only) signs the audit
  log's checkpoints, so a chain recomputed by someone who edited the database does not verify.
- The audit anchor, a private data object holding the newest checkpoint's sequence number and
  chain hash: checkpoints live in the database too, and one who deletes them (or rolls the
  whole database back) must not be able to pass the result off as an intact log.

Both are private, sensitive, non-extractable token objects created once per token (by
`ensure`, which `vaultctl serve` runs before starting workers) and found by label afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from pkcs11 import Attribute, Mechanism, ObjectClass, exceptions

from vault.domain.algorithms import Algorithm
from vault.hsm import objects, templates
from vault.hsm.keystore import Pkcs11KeyStore, generate_pair
from vault.hsm.library import ThreadContext
from vault.hsm.public import public_key_der

log = logging.getLogger(__name__)

CREDENTIAL_KEY_LABEL: Final = "vault:system:credential:1"
AUDIT_KEY_LABEL: Final = "vault:system:audit:1"
AUDIT_ANCHOR_LABEL: Final = "vault:system:audit-anchor"
FEED_KEY_LABEL: Final = "vault:system:revocation-feed:1"
BACKUP_KEY_LABEL: Final = "vault:system:backup:1"
_ANCHOR: Final = struct.Struct(">Q32s")
_CREDENTIAL_ALGORITHM: Final = Algorithm.HMAC_SHA256
_AUDIT_ALGORITHM: Final = Algorithm.EC_SIGN_P256_SHA256
_FEED_ALGORITHM: Final = Algorithm.EC_SIGN_P256_SHA256
_P256_HALF: Final = 32


class SystemKeys:
    """Implements vault.domain.ports.SystemCrypto on the vault's token."""

    def __init__(self, keystore: Pkcs11KeyStore) -> None:
        self._keystore = keystore
        self._create_lock = threading.Lock()

    def __repr__(self) -> str:
        return "SystemKeys()"

    def ensure(self) -> list[str]:
        """Create whichever system key the token lacks; returns the labels created."""
        created: list[str] = []
        with self._create_lock:
            if not self._exists(ObjectClass.SECRET_KEY, CREDENTIAL_KEY_LABEL):
                self._keystore.run(self._create_credential_key, "create_credential_key")
                created.append(CREDENTIAL_KEY_LABEL)
            if not self._exists(ObjectClass.PRIVATE_KEY, AUDIT_KEY_LABEL):
                self._keystore.run(self._create_audit_key, "create_audit_key")
                created.append(AUDIT_KEY_LABEL)
        for label in created:
            log.info("created system key %s in the token", label)
        return created

    def _exists(self, object_class: ObjectClass, label: str) -> bool:
        def find(context: ThreadContext) -> bool:
            try:
                objects.find_one(context.session, object_class, label)
            except exceptions.ObjectHandleInvalid:
                return False
            return True

        return self._keystore.run(find, "find_system_key")

    def _create_credential_key(self, context: ThreadContext) -> None:
        shape = templates.shape(_CREDENTIAL_ALGORITHM)
        context.session.generate_key(
            shape.key_type,
            _CREDENTIAL_ALGORITHM.spec.bits,
            capabilities=0,
            template=templates.secret_generation(_CREDENTIAL_ALGORITHM, CREDENTIAL_KEY_LABEL),
        )

    def _create_audit_key(self, context: ThreadContext) -> None:
        # The public half stays in the token too: the verifier must not trust a public key
        # from the database the checkpoints protect.
        public_template = {
            **templates.public_generation(_AUDIT_ALGORITHM),
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.LABEL: AUDIT_KEY_LABEL,
            Attribute.ID: AUDIT_KEY_LABEL.encode(),
        }
        generate_pair(context.session, _AUDIT_ALGORITHM, AUDIT_KEY_LABEL, public_template)

    # -- use ------------------------------------------------------------------------------

    def _object(self, context: ThreadContext, object_class: ObjectClass, label: str) -> Any:
        cache_key = f"system:{object_class.name}:{label}"
        obj = context.objects.get(cache_key)
        if obj is None:
            obj = objects.find_one(context.session, object_class, label)
            context.objects[cache_key] = obj
        return obj

    def credential_mac(self, data: bytes) -> bytes:
        return self._keystore.run(
            lambda context: bytes(
                self._object(context, ObjectClass.SECRET_KEY, CREDENTIAL_KEY_LABEL).sign(
                    data, mechanism=Mechanism.SHA256_HMAC
                )
            ),
            "credential_mac",
        )

    def audit_sign(self, payload: bytes) -> tuple[bytes, str]:
        digest = hashlib.sha256(payload).digest()

        def sign(context: ThreadContext) -> bytes:
            key = self._object(context, ObjectClass.PRIVATE_KEY, AUDIT_KEY_LABEL)
            return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

        raw = self._keystore.run(sign, "audit_sign")
        signature = asym_utils.encode_dss_signature(
            int.from_bytes(raw[:_P256_HALF], "big"), int.from_bytes(raw[_P256_HALF:], "big")
        )
        return signature, AUDIT_KEY_LABEL

    def record_audit_anchor(self, head_seq: int, head_hash: bytes, *, reset: bool = False) -> None:
        """Remember (head_seq, head_hash) unless the token holds a later anchor already (with
        reset, in any case: the operator's `vaultctl audit reanchor`).

        SoftHSM keeps a data object's value read-only, so a new anchor is a new object and the
        older ones are destroyed after it exists: a crash in between leaves two anchors, of
        which readers take the later, never none (after a reset, possibly the old one: the
        reset is then repeated)."""

        def replace(context: ThreadContext) -> None:
            anchors = self._anchors(context)
            if not reset and anchors and max(seq for seq, _, _ in anchors) >= head_seq:
                return
            context.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.COPYABLE: False,
                    Attribute.DESTROYABLE: True,
                    Attribute.LABEL: AUDIT_ANCHOR_LABEL,
                    Attribute.APPLICATION: "vault",
                    Attribute.VALUE: _ANCHOR.pack(head_seq, head_hash),
                }
            )
            for _, _, obj in anchors:
                objects.destroy_quietly(obj)

        with self._create_lock:
            self._keystore.run(replace, "write_audit_anchor")

    def audit_anchor(self) -> tuple[int, bytes] | None:
        """The latest (head_seq, head_hash) record_audit_anchor kept, or None."""

        def read(context: ThreadContext) -> tuple[int, bytes] | None:
            anchors = self._anchors(context)
            if not anchors:
                return None
            seq, head_hash, _ = max(anchors, key=lambda anchor: anchor[0])
            return seq, head_hash

        return self._keystore.run(read, "read_audit_anchor")

    @staticmethod
    def _anchors(context: ThreadContext) -> list[tuple[int, bytes, Any]]:
        found = []
        for obj in context.session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: AUDIT_ANCHOR_LABEL}
        ):
            value = bytes(obj[Attribute.VALUE])
            if len(value) == _ANCHOR.size:
                seq, head_hash = _ANCHOR.unpack(value)
                found.append((int(seq), bytes(head_hash), obj))
        return found

    def audit_verify(self, payload: bytes, signature: bytes, key_label: str) -> bool:
        if key_label != AUDIT_KEY_LABEL:
            return False
        try:
            r, s = asym_utils.decode_dss_signature(signature)
            raw = r.to_bytes(_P256_HALF, "big") + s.to_bytes(_P256_HALF, "big")
        except (ValueError, OverflowError):
            return False
        digest = hashlib.sha256(payload).digest()

        def verify(context: ThreadContext) -> bool:
            key = self._object(context, ObjectClass.PUBLIC_KEY, AUDIT_KEY_LABEL)
            try:
                return bool(key.verify(digest, raw, mechanism=Mechanism.ECDSA))
            except (exceptions.SignatureInvalid, exceptions.SignatureLenRange):
                return False

        return self._keystore.run(verify, "audit_verify")


class _TokenSigningKey:
    """An ECDSA P-256 key pair of the vault's own, for one kind of signed document: private
    half SIGN only, public half VERIFY only, both private, non-modifiable token objects created
    once per token under label."""

    def __init__(self, keystore: Pkcs11KeyStore, label: str) -> None:
        self._keystore = keystore
        self._label = label
        self._lock = threading.Lock()
        self._public_der: bytes | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def ensure(self) -> list[str]:
        """Create the key pair unless the token holds it; returns the labels created."""
        label = self._label

        def create(context: ThreadContext) -> bool:
            try:
                objects.find_one(context.session, ObjectClass.PRIVATE_KEY, label)
                return False
            except exceptions.ObjectHandleInvalid:
                pass
            public_template = {
                **templates.public_generation(_FEED_ALGORITHM),
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.LABEL: label,
                Attribute.ID: label.encode(),
            }
            generate_pair(context.session, _FEED_ALGORITHM, label, public_template)
            return True

        with self._lock:
            created = self._keystore.run(create, "signing_key_ensure")
        if not created:
            return []
        log.info("created system key %s in the token", label)
        return [label]

    def _object(self, context: ThreadContext, object_class: ObjectClass) -> Any:
        cache_key = f"system:{object_class.name}:{self._label}"
        obj = context.objects.get(cache_key)
        if obj is None:
            obj = objects.find_one(context.session, object_class, self._label)
            context.objects[cache_key] = obj
        return obj

    def _sign(self, payload: bytes, name: str) -> bytes:
        return self._sign_digest(hashlib.sha256(payload).digest(), name)

    def _sign_digest(self, digest: bytes, name: str) -> bytes:
        # CKM_ECDSA signs the digest it is given (SoftHSM has no CKM_ECDSA_SHA256), so a
        # digest computed incrementally over a streamed payload signs the same as the
        # payload's own: the token never sees the payload either way.
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError("a feed or bundle signature covers a SHA-256 digest")
        raw = self._keystore.run(
            lambda context: bytes(
                self._object(context, ObjectClass.PRIVATE_KEY).sign(
                    digest, mechanism=Mechanism.ECDSA
                )
            ),
            name,
        )
        return asym_utils.encode_dss_signature(
            int.from_bytes(raw[:_P256_HALF], "big"), int.from_bytes(raw[_P256_HALF:], "big")
        )

    def _public_key_der(self) -> bytes:
        if self._public_der is None:
            self._public_der = self._keystore.run(
                lambda context: public_key_der(
                    _FEED_ALGORITHM, self._object(context, ObjectClass.PUBLIC_KEY)
                )
            )
        return self._public_der


class RevocationFeedKey(_TokenSigningKey):
    """Implements vault.domain.ports.FeedSigner: the token key that signs the revocation feed.

    Its own key, not the audit key: the two sign different things for different readers (the
    audit key's signatures are checked by the vault itself; the feed key's public half is
    handed to every relying party and pinned by them), and either can then be replaced
    without touching the other."""

    def __init__(self, keystore: Pkcs11KeyStore) -> None:
        super().__init__(keystore, FEED_KEY_LABEL)

    def sign_feed(self, payload: bytes) -> bytes:
        return self._sign(payload, "feed_sign")

    def sign_feed_digest(self, digest: bytes) -> bytes:
        return self._sign_digest(digest, "feed_sign")

    def feed_public_key_der(self) -> bytes:
        return self._public_key_der()


class BackupSigningKey(_TokenSigningKey):
    """Implements vault.domain.ports.BackupSigner: the token key that signs backup bundles.

    Its own key again: whoever restores pins it (or checks its fingerprint), and a bundle
    must never verify under a key that also signs feeds another party hands around."""

    def __init__(self, keystore: Pkcs11KeyStore) -> None:
        super().__init__(keystore, BACKUP_KEY_LABEL)

    def sign_backup(self, payload: bytes) -> bytes:
        return self._sign(payload, "backup_sign")

    def backup_public_key_der(self) -> bytes:
        return self._public_key_der()
