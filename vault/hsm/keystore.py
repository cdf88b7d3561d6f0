"""The KeyStore port on a PKCS#11 token (SoftHSM2 here, any module in production)."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cachetools import TTLCache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass, exceptions
from pkcs11.util.ec import encode_named_curve_parameters

from vault import metrics
from vault.config import Settings
from vault.domain.algorithms import (
    DIGEST_SIZES,
    Algorithm,
    HashName,
    KeyFamily,
    Padding,
    Purpose,
    digest,
)
from vault.domain.ceremony import TokenIdentity
from vault.domain.errors import (
    DecryptionFailed,
    ImportFailed,
    InvalidArgument,
    TokenOperationFailed,
    TokenUnavailable,
    VaultError,
)
from vault.domain.imports import IMPORT_KEY_LABEL_PREFIX, ImportMethod
from vault.domain.models import KeyVersion
from vault.domain.names import TOKEN_KEY_LABEL_PREFIX
from vault.domain.ports import GeneratedMaterial, TokenGcm, TokenSign
from vault.domain.public_keys import hash_algorithm, verify_signature
from vault.hsm import objects, templates
from vault.hsm.capabilities import supported_algorithms
from vault.hsm.library import ThreadContext, TokenLibrary
from vault.hsm.public import public_key_der, rsa_public_key_der

log = logging.getLogger(__name__)
T = TypeVar("T")
_Request = TypeVar("_Request", TokenSign, TokenGcm)

_ED25519_PARAMS = b"\x06\x03\x2b\x65\x70"  # OID 1.3.101.112
_EPOCH_SEEN = "material-epoch"
_VERSION_PREFIX = "accounts/"


class _HandleCache(TTLCache[str, Any]):
    """Unwrapped key objects by version name. What leaves the cache (evicted, expired,
    cleared) is queued in `evicted` for the owner to destroy outside its lock, so material
    does not linger in the token after its key was destroyed elsewhere."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl)
        self.evicted: list[Any] = []

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self.evicted.append(value)
        return key, value

    def expire(self, time: float | None = None) -> list[tuple[str, Any]]:
        expired = list(super().expire(time))
        self.evicted.extend(value for _, value in expired)
        return expired

    def clear(self) -> None:
        # cachetools' clear() drops entries without popitem(): queue them here.
        self.evicted.extend(super().values())
        super().clear()

    def take_evicted(self) -> list[Any]:
        evicted, self.evicted = self.evicted, []
        return evicted


class _Bound:
    """Stands in for python-pkcs11's handle wrapper: an object handle paired with another
    session. Operations read `session`, `handle` and the key type (to pick a default
    mechanism, even when one is given); other attribute reads go to the object's own
    wrapper."""

    __slots__ = ("handle", "key_type", "origin", "session")

    def __init__(self, session: Any, origin: Any, key_type: KeyType) -> None:
        self.session = session
        self.handle = origin.handle
        self.origin = origin
        self.key_type = key_type

    def __getitem__(self, attribute: Attribute) -> Any:
        if attribute == Attribute.KEY_TYPE:
            return self.key_type
        return self.origin.wrapper[attribute]


def bound_to(obj: Any, session: Any, key_type: KeyType) -> Any:
    """obj (of type key_type) as an object of session. A session object is visible to every
    session of the application that made it (PKCS#11 2.40, 6.7.4), so a handle unwrapped once
    serves every thread of the process; python-pkcs11 0.10.1 has no public way to pair a
    handle with a session it did not come from, so the view copies obj's class (its operation
    mixins) and replaces its wrapper."""
    view = object.__new__(type(obj))
    # Its __init__ accepts only its own wrapper type; the operations read the attribute.
    view.wrapper = _Bound(session, obj, key_type)
    return view


class _SharedHandles:
    """The unwrapped key objects of this process, shared by all its threads.

    A per-thread cache holds each key once per thread, so with T threads and W workers a key
    is unwrapped up to T*W times and a cache of N entries covers only N keys of a thread's
    random traffic. Here the objects are unwrapped in the login session, which lives as long
    as the module's epoch and is never closed by a request thread's recovery; each use pairs
    the handle with the calling thread's own session (one operation per session at a time).
    Unwraps and destroys on the login session are serialised by a lock of their own, so a
    miss never holds up the hits of other threads.

    A call holds each object it uses (acquire, unwrap) until it ends (release). An object
    that leaves the cache (evicted, expired, cleared, forgotten) while calls hold it is
    retired: its last holder destroys it. Destroying it at once would fail those calls with
    a stale handle, and their retry could lose the same race again (seen with 6 threads on
    a cache of 1). So the token holds at most maxsize objects plus those retired while in
    use: one per key version a call in flight uses."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._cache = _HandleCache(maxsize, ttl)
        self._lock = threading.Lock()  # the cache's entries, holders and retired objects
        self._session_lock = threading.Lock()  # calls on the login session
        self._epoch = -1  # the module epoch the cached handles belong to
        # id(object) -> [object, calls holding it]; the object is kept so its id stays its.
        self._holders: dict[int, list[Any]] = {}
        self._retired: set[int] = set()

    def __len__(self) -> int:
        return len(self._cache)

    def live(self) -> int:
        """Objects of this cache in the token: cached, or retired and still held."""
        with self._lock:
            return len(self._cache) + len(self._retired)

    def _hold(self, obj: Any) -> None:
        held = self._holders.setdefault(id(obj), [obj, 0])
        held[1] += 1

    def _retire(self, values: Sequence[Any]) -> list[Any]:
        """Of values leaving the cache (under _lock), those no call holds: to destroy now."""
        free = []
        for value in values:
            if id(value) in self._holders:
                self._retired.add(id(value))
            else:
                free.append(value)
        return free

    def _destroy(self, values: Sequence[Any]) -> None:
        if values:
            with self._session_lock:
                for value in values:
                    objects.destroy_quietly(value)

    def _same_epoch(self, epoch: int) -> bool:
        """Whether cached handles belong to epoch; if not, they are dropped unused (under
        _lock): a restart of the module voided them, and the same numbers may name other
        objects now."""
        if epoch == self._epoch:
            return True
        self._cache = _HandleCache(int(self._cache.maxsize), self._cache.ttl)
        self._holders.clear()
        self._retired.clear()
        self._epoch = epoch
        return False

    def acquire(self, epoch: int, name: str, hold: bool = True) -> Any | None:
        """The cached object of name (held for the caller unless hold is False), or None."""
        with self._lock:
            if not self._same_epoch(epoch):
                return None
            obj = self._cache.get(name)
            if obj is not None and hold:
                self._hold(obj)
            return obj

    def unwrap(self, epoch: int, name: str, unwrap: Callable[[], Any], hold: bool = True) -> Any:
        """The cached object of name, or unwrap() run on the login session and cached; held
        for the caller unless hold is False."""
        with self._session_lock:
            with self._lock:
                if epoch == self._epoch:
                    cached = self._cache.get(name)
                    if cached is not None:  # another thread unwrapped it meanwhile
                        if hold:
                            self._hold(cached)
                        return cached
            obj = unwrap()
            with self._lock:
                if epoch == self._epoch:
                    self._cache[name] = obj
                    if hold:
                        self._hold(obj)
                    free = self._retire(self._cache.take_evicted())
                else:
                    free = [obj]
            for value in free:
                objects.destroy_quietly(value)
        return obj

    def release(self, held: Sequence[Any]) -> None:
        """A call is done with the objects it held; destroy those retired meanwhile."""
        free = []
        with self._lock:
            for obj in held:
                entry = self._holders.get(id(obj))
                if entry is None or entry[0] is not obj:
                    continue  # dropped with its epoch
                entry[1] -= 1
                if entry[1] == 0:
                    del self._holders[id(obj)]
                    if id(obj) in self._retired:
                        self._retired.discard(id(obj))
                        free.append(obj)
        self._destroy(free)

    def cached(self, name: str) -> Any | None:
        """The cached object of name, if any (for inspection)."""
        with self._lock:
            return self._cache.get(name)

    def forget(self, name: str) -> None:
        with self._lock:
            obj = self._cache.pop(name, None)
            free = [] if obj is None else self._retire([obj])
        self._destroy(free)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            free = self._retire(self._cache.take_evicted())
        self._destroy(free)


class Pkcs11KeyStore:
    def __init__(self, library: TokenLibrary, cache_size: int, cache_ttl_seconds: int) -> None:
        self._library = library
        self._handles = _SharedHandles(cache_size, cache_ttl_seconds)
        self._calls = threading.local()  # the objects each thread's call in flight holds
        # Batches of this process take turns in the token. Every python-pkcs11 call releases
        # the GIL and takes it back; with several request threads each looping over its own
        # batch, every item's few calls became hand-offs between threads, and a BatchEncrypt
        # item cost 125 us of server CPU against 74 us when batches take turns (the token's
        # own work is about 18 us). A worker still fills a core with one batch at a time; unary
        # calls do not take this lock.
        self._batch_turn = threading.Lock()
        self._supported = supported_algorithms(library)
        # The newest material epoch of the store any thread of this process has seen.
        self._material_epoch = -1
        self._handles_epoch = -1
        self._roots = self._find_roots()
        if not self._roots:
            raise TokenUnavailable("the token holds no root key: run `vaultctl token init`")
        self._current = self._newest_split_generation()

    # -- discovery ------------------------------------------------------------------------

    # Through run(), like every token call: it recovers from a token that went away, and
    # its gate keeps these searches out of a restart of the module.
    def _find_roots(self) -> dict[int, frozenset[str | None]]:
        return self.run(
            lambda context: objects.root_generations(context.session), "root_generations"
        )

    def _newest_split_generation(self) -> int:
        """New versions go only under per-family roots: a legacy single root pins too little
        of what it unwraps (README, Key hierarchy)."""
        split = [
            generation
            for generation in objects.complete_generations(self._roots)
            if None not in self._roots[generation]
        ]
        if not split:
            raise TokenUnavailable(
                "the token has no per-family root keys: run `vaultctl token init` to add them"
            )
        return max(split)

    def supported_algorithms(self) -> frozenset[Algorithm]:
        return self._supported

    def current_root_generation(self) -> int:
        return self._current

    def root_generations_present(self) -> set[int]:
        self._roots = self._find_roots()
        return objects.complete_generations(self._roots)

    def token_labels(self) -> set[str]:
        def labels(context: ThreadContext) -> set[str]:
            return {
                label
                for object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)
                for label in objects.token_labels(context.session, object_class)
                if label.startswith(TOKEN_KEY_LABEL_PREFIX)
            }

        return self.run(labels, "token_labels")

    def import_key_labels(self) -> set[str]:
        def labels(context: ThreadContext) -> set[str]:
            return {
                label
                for label in objects.token_labels(context.session, ObjectClass.PRIVATE_KEY)
                if label.startswith(IMPORT_KEY_LABEL_PREFIX)
            }

        return self.run(labels, "import_key_labels")

    def available(self) -> bool:
        """Whether the token answers now; a failure starts its recovery (health probe)."""
        return self._library.check()

    # -- per-thread objects ---------------------------------------------------------------

    def _root(self, context: ThreadContext, generation: int, algorithm: Algorithm) -> Any:
        """The root that wraps algorithm's keys in generation: its family's root, or the
        generation's single root on a token provisioned before roots were split."""
        families = self._roots.get(generation)
        if families is None:
            families = objects.root_generations(context.session).get(generation, frozenset())
        family = None if None in families else templates.root_family(algorithm)
        name = templates.root_label(generation, family)
        root = context.objects.get(name)
        if root is None:
            root = objects.find_one(context.session, ObjectClass.SECRET_KEY, name)
            context.objects[name] = root
        return root

    def drop_handles_before(self, epoch: int) -> None:
        # Only ever moves forward; an int store is atomic under the GIL, and a thread that
        # reads an older value drops its handles one request later.
        if epoch > self._material_epoch:
            self._material_epoch = epoch

    def _forget_stale_handles(self, context: ThreadContext) -> None:
        """Destroy this process's unwrapped key objects and drop this thread's token-object
        handles if the store's material epoch moved since they were cached: some version's
        material stopped being usable (destroyed, revoked, disabled), and a handle must not
        outlive that in any worker. Dropping them all is cheap (an unwrap is ~0.1 ms) and
        rare."""
        epoch = self._material_epoch
        if context.extra.get(_EPOCH_SEEN) == epoch:
            return
        if self._handles_epoch != epoch:
            self._handles_epoch = epoch
            self._handles.clear()  # destroys each object
        for name in [name for name in context.objects if name.startswith(_VERSION_PREFIX)]:
            del context.objects[name]
        context.extra[_EPOCH_SEEN] = epoch

    def _key(self, context: ThreadContext, version: KeyVersion, algorithm: Algorithm) -> Any:
        """The usable object of a key version in this thread's session."""
        self._forget_stale_handles(context)
        cache_key = str(version.name)
        if version.token_label is not None:
            obj = context.objects.get(cache_key)
            if obj is None:
                shape = templates.shape(algorithm)
                obj = objects.find_one(context.session, shape.object_class, version.token_label)
                context.objects[cache_key] = obj
            return obj
        # Inside run() the call holds the object until it ends (see _SharedHandles).
        held: list[Any] | None = getattr(self._calls, "held", None)
        hold = held is not None
        shared = self._handles.acquire(context.epoch, cache_key, hold)
        metrics.cache_lookup(shared is not None)
        if shared is None:
            if version.wrapped_blob is None or version.root_generation is None:
                raise TokenUnavailable("key version has no material")
            blob, generation = version.wrapped_blob, version.root_generation
            shape = templates.shape(algorithm)

            def unwrap() -> Any:
                login = self._library.login_session
                root = bound_to(self._root(context, generation, algorithm), login, KeyType.AES)
                return root.unwrap_key(
                    shape.object_class,
                    shape.key_type,
                    blob,
                    mechanism=templates.WRAP_MECHANISM,
                    capabilities=0,
                    template=templates.unwrapped_for_use(algorithm),
                )

            shared = self._handles.unwrap(context.epoch, cache_key, unwrap, hold)
        if held is not None:
            held.append(shared)
        return bound_to(shared, context.session, templates.shape(algorithm).key_type)

    def run(self, operation: Callable[[ThreadContext], T], name: str = "", count: int = 1) -> T:
        """Run operation with this thread's session, with the token layer's recovery; counted
        (vault.metrics) under name, by default the operation function's own name, as count
        operations (a batch's)."""
        label = name or getattr(operation, "__name__", "other")
        metrics.token_operation(label, count)
        held: list[Any] | None = getattr(self._calls, "held", None)
        outermost = held is None
        if held is None:
            held = self._calls.held = []
        mark = len(held)
        try:
            return self._library.run(operation)
        except VaultError as error:
            metrics.token_error(label, error.reason)
            raise
        finally:
            # The unwrapped objects this call used (a retry's too) may now be destroyed.
            done = held[mark:]
            del held[mark:]
            if outermost:
                self._calls.held = None
            self._handles.release(done)

    # -- lifecycle ------------------------------------------------------------------------

    def generate(self, algorithm: Algorithm, token_label: str | None) -> GeneratedMaterial:
        def attempt() -> GeneratedMaterial:
            return self.run(
                lambda context: self._generate(context, algorithm, token_label), "generate"
            )

        try:
            return attempt()
        except TokenOperationFailed:
            # SoftHSM 2.6.1 now and then refuses a template it otherwise accepts when another
            # process writes the token at that moment (seen: TemplateInconsistent, about 1 in
            # 500 token-object creations under churn). Remove whatever the failed call may
            # have left under the label, then try once more; a real refusal fails again.
            log.warning("key generation refused by the token; retrying once")
            if token_label is not None:
                self.destroy_label(token_label)
            return attempt()

    def _generate(
        self, context: ThreadContext, algorithm: Algorithm, token_label: str | None
    ) -> GeneratedMaterial:
        session = context.session
        spec = algorithm.spec
        if spec.family in (KeyFamily.AES, KeyFamily.HMAC):
            shape = templates.shape(algorithm)
            key = session.generate_key(
                shape.key_type,
                spec.bits,
                capabilities=0,
                template=templates.secret_generation(algorithm, token_label),
            )
            public_der = None
            private = key
        else:
            public, private = generate_pair(session, algorithm, token_label)
            try:
                public_der = public_key_der(algorithm, public)
            finally:
                objects.destroy_quietly(public)
        if token_label is not None:
            return GeneratedMaterial(None, None, token_label, public_der)
        generation = self.current_root_generation()
        try:
            blob = self._root(context, generation, algorithm).wrap_key(
                private, mechanism=templates.WRAP_MECHANISM
            )
        finally:
            objects.destroy_quietly(private)
        return GeneratedMaterial(generation, bytes(blob), None, public_der)

    def destroy(self, version: KeyVersion) -> None:
        if version.token_label is not None:
            self.destroy_label(version.token_label)

        def forget(context: ThreadContext) -> None:
            self._handles.forget(str(version.name))
            context.objects.pop(str(version.name), None)

        self.run(forget, "forget")

    def destroy_label(self, token_label: str) -> bool:
        def destroy(context: ThreadContext) -> bool:
            found = False
            for obj in context.session.get_objects(
                {Attribute.LABEL: token_label, Attribute.TOKEN: True}
            ):
                obj.destroy()
                found = True
            return found

        return self.run(destroy)

    def random(self, size: int) -> bytes:
        return self.run(lambda context: bytes(context.session.generate_random(size * 8)), "random")

    # -- symmetric ------------------------------------------------------------------------

    def encrypt_gcm(
        self,
        version: KeyVersion,
        algorithm: Algorithm,
        nonce: bytes,
        plaintext: bytes,
        aad: bytes,
    ) -> bytes:
        def encrypt(context: ThreadContext) -> bytes:
            return _gcm_encrypt(self._key(context, version, algorithm), nonce, plaintext, aad)

        return self.run(encrypt)

    def decrypt_gcm(
        self, version: KeyVersion, algorithm: Algorithm, nonce: bytes, sealed: bytes, aad: bytes
    ) -> bytes:
        def decrypt(context: ThreadContext) -> bytes:
            return _gcm_decrypt(self._key(context, version, algorithm), nonce, sealed, aad)

        return self.run(decrypt)

    def encrypt_gcm_many(self, requests: Sequence[TokenGcm]) -> list[bytes | VaultError]:
        return self._many(requests, _gcm_encrypt_request, "encrypt")

    def decrypt_gcm_many(self, requests: Sequence[TokenGcm]) -> list[bytes | VaultError]:
        return self._many(requests, _gcm_decrypt_request, "decrypt")

    def _many(
        self,
        requests: Sequence[_Request],
        operation: Callable[[Any, _Request], bytes],
        name: str,
    ) -> list[bytes | VaultError]:
        """operation(handle, request) for each request in one token call (one session, the
        token layer's gate taken once), each key version's handle looked up once; a
        VaultError of one request is its result, anything else fails the call (and a stale
        handle retries it whole, as run() does for one operation)."""

        def each(context: ThreadContext) -> list[bytes | VaultError]:
            handles: dict[str, Any] = {}
            results: list[bytes | VaultError] = []
            append = results.append
            # The items of a batch mostly share one version object: the last one's handle is
            # reused without building its name.
            last_version: KeyVersion | None = None
            key: Any = None
            with self._batch_turn:
                for request in requests:
                    version = request.version
                    try:
                        if version is not last_version:
                            name = str(version.name)
                            key = handles.get(name)
                            if key is None:
                                key = self._key(context, version, request.algorithm)
                                handles[name] = key
                            last_version = version
                        append(operation(key, request))
                    except VaultError as error:
                        append(error)
            return results

        return self.run(each, name, len(requests))

    def wrap_secret(self, version: KeyVersion, algorithm: Algorithm, material: bytes) -> bytes:
        def wrap(context: ThreadContext) -> bytes:
            key = self._key(context, version, algorithm)
            transient = context.session.create_object(templates.transient_secret(material))
            try:
                return bytes(key.wrap_key(transient, mechanism=templates.WRAP_MECHANISM))
            finally:
                objects.destroy_quietly(transient)

        return self.run(wrap)

    def unwrap_secret(self, version: KeyVersion, algorithm: Algorithm, wrapped: bytes) -> bytes:
        def unwrap(context: ThreadContext) -> bytes:
            key = self._key(context, version, algorithm)
            try:
                transient = key.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.GENERIC_SECRET,
                    wrapped,
                    mechanism=templates.WRAP_MECHANISM,
                    capabilities=0,
                    template=templates.transient_secret(None),
                )
            except _DATA_ERRORS:
                raise DecryptionFailed() from None
            try:
                return bytes(transient[Attribute.VALUE])
            finally:
                objects.destroy_quietly(transient)

        return self.run(unwrap)

    # -- asymmetric -----------------------------------------------------------------------

    def sign(
        self, version: KeyVersion, algorithm: Algorithm, data: bytes, prehashed: bool
    ) -> bytes:
        signer = _signer(algorithm, data, prehashed)

        def sign(context: ThreadContext) -> bytes:
            return signer(self._key(context, version, algorithm))

        return self.run(sign, "sign")

    def sign_many(self, requests: Sequence[TokenSign]) -> list[bytes | VaultError]:
        def sign(key: Any, request: TokenSign) -> bytes:
            return _signer(request.algorithm, request.data, request.prehashed)(key)

        return self._many(requests, sign, "sign")

    def asymmetric_decrypt(
        self, version: KeyVersion, algorithm: Algorithm, ciphertext: bytes
    ) -> bytes:
        if algorithm.spec.purpose is not Purpose.ASYMMETRIC_DECRYPT:
            raise InvalidArgument(f"{algorithm} does not decrypt")
        hash_mechanism, mgf = templates.HASH_MECHANISMS[algorithm.spec.hash]

        def decrypt(context: ThreadContext) -> bytes:
            key = self._key(context, version, algorithm)
            try:
                return bytes(
                    key.decrypt(
                        ciphertext,
                        mechanism=Mechanism.RSA_PKCS_OAEP,
                        mechanism_param=(hash_mechanism, mgf, None),
                    )
                )
            except _DATA_ERRORS:
                raise DecryptionFailed() from None

        return self.run(decrypt, "asymmetric_decrypt")

    # -- MAC ------------------------------------------------------------------------------

    def generate_mac(self, version: KeyVersion, algorithm: Algorithm, data: bytes) -> bytes:
        mechanism = templates.HMAC_MECHANISMS[algorithm.spec.hash]
        return self.run(
            lambda context: bytes(
                self._key(context, version, algorithm).sign(data, mechanism=mechanism)
            ),
            "generate_mac",
        )

    def verify_mac(
        self, version: KeyVersion, algorithm: Algorithm, data: bytes, mac: bytes
    ) -> bool:
        mechanism = templates.HMAC_MECHANISMS[algorithm.spec.hash]

        def verify(context: ThreadContext) -> bool:
            key = self._key(context, version, algorithm)
            try:
                return bool(key.verify(data, mac, mechanism=mechanism))
            except _DATA_ERRORS:
                return False

        return self.run(verify, "verify_mac")

    # -- backup ---------------------------------------------------------------------------

    def opens(self, version: KeyVersion, algorithm: Algorithm) -> bool:
        generation = version.root_generation
        if version.wrapped_blob is None or generation is None:
            return False

        # From the roots found when the token was last searched (root_generations_present,
        # which a restore calls first: roots arrive by a ceremony while the vault runs).
        families = self._roots.get(generation)
        if not families:
            return False
        family = None if None in families else templates.root_family(algorithm)
        if family not in families:
            return False

        def trial(context: ThreadContext) -> bool:
            root = self._root(context, generation, algorithm)
            shape = templates.shape(algorithm)
            try:
                obj = root.unwrap_key(
                    shape.object_class,
                    shape.key_type,
                    version.wrapped_blob,
                    mechanism=templates.WRAP_MECHANISM,
                    capabilities=0,
                    template=templates.unwrapped_for_use(algorithm),
                )
            except _TRIAL_FAILURES:
                return False
            objects.destroy_quietly(obj)
            return True

        return self.run(trial, "backup_trial_unwrap")

    def token_identity(self) -> TokenIdentity:
        token = self._library.token
        return TokenIdentity(
            label=str(token.label).strip(),
            serial=_text(token.serial),
            manufacturer=str(token.manufacturer_id).strip(),
            model=_text(token.model),
        )

    # -- import ---------------------------------------------------------------------------

    def create_import_key(self, method: ImportMethod, token_label: str) -> bytes:
        def create(context: ThreadContext) -> bytes:
            public_template, private_template, nested = templates.import_key_pair(token_label)
            public, _private = context.session.generate_keypair(
                KeyType.RSA,
                method.rsa_bits,
                capabilities=0,
                public_template=public_template,
                private_template=private_template,
            )
            del nested  # referenced by private_template until generate_keypair returned
            try:
                return rsa_public_key_der(public)
            finally:
                objects.destroy_quietly(public)

        return self.run(create, "create_import_key")

    def import_material(
        self,
        token_label: str,
        method: ImportMethod,
        algorithm: Algorithm,
        wrapped: bytes,
        public_key_der: bytes | None,
    ) -> GeneratedMaterial:
        split = method.wrapped_ephemeral_bytes
        if len(wrapped) <= split:
            raise ImportFailed(_IMPORT_FAILED)

        def unwrap(context: ThreadContext) -> GeneratedMaterial:
            job_key = objects.find_one(context.session, ObjectClass.PRIVATE_KEY, token_label)
            try:
                ephemeral = job_key.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    wrapped[:split],
                    mechanism=templates.IMPORT_MECHANISM,
                    mechanism_param=templates.IMPORT_OAEP_PARAMS,
                    capabilities=0,
                    template=templates.ephemeral_unwrap(),
                )
            except _IMPORT_ERRORS:
                raise ImportFailed(_IMPORT_FAILED) from None
            try:
                shape = templates.shape(algorithm)
                try:
                    material = ephemeral.unwrap_key(
                        shape.object_class,
                        shape.key_type,
                        wrapped[split:],
                        mechanism=templates.WRAP_MECHANISM,
                        capabilities=0,
                        template=templates.imported_material(algorithm),
                    )
                except _IMPORT_ERRORS:
                    raise ImportFailed(_IMPORT_FAILED) from None
            finally:
                objects.destroy_quietly(ephemeral)
            try:
                public_der = _check_imported(
                    context, material, algorithm, len(wrapped) - split, public_key_der
                )
                generation = self.current_root_generation()
                blob = self._root(context, generation, algorithm).wrap_key(
                    material, mechanism=templates.WRAP_MECHANISM
                )
            finally:
                objects.destroy_quietly(material)
            return GeneratedMaterial(generation, bytes(blob), None, public_der)

        return self.run(unwrap, "import_material")


# How an unwrap under a root that did not wrap the blob (another token's generation of the
# same number) fails.
_TRIAL_FAILURES: tuple[type[Exception], ...] = (
    exceptions.EncryptedDataInvalid,
    exceptions.DataInvalid,
    exceptions.WrappedKeyInvalid,
    exceptions.WrappedKeyLenRange,
    exceptions.FunctionFailed,
    exceptions.GeneralError,
    exceptions.TemplateInconsistent,
    exceptions.KeyTypeInconsistent,
)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip()
    return str(value).strip()


def _check_imported(
    context: ThreadContext,
    material: Any,
    algorithm: Algorithm,
    wrapped_material_bytes: int,
    public_key_der: bytes | None,
) -> bytes | None:
    """The public key of unwrapped material, once it is known to be a key of algorithm;
    ImportFailed otherwise (one answer for every mismatch).

    SoftHSM keeps no CKA_VALUE_LEN for an unwrapped secret key and takes an AES key of any
    length, so the length is pinned from outside: AES-KWP output is 8 bytes more than the
    material padded to whole 8-byte blocks, and one operation in the token with the key
    then refuses every length the mechanism cannot use (an AES key of 25 to 31 bytes, an
    HMAC key shorter than its digest)."""
    spec = algorithm.spec
    padded = wrapped_material_bytes - 8
    session = context.session
    try:
        if spec.family is KeyFamily.AES:
            if padded != spec.bits // 8:
                raise ImportFailed(_IMPORT_FAILED)
            if spec.purpose is Purpose.WRAP_UNWRAP:
                probe = session.create_object(templates.transient_secret(bytes(16)))
                try:
                    material.wrap_key(probe, mechanism=templates.WRAP_MECHANISM)
                finally:
                    objects.destroy_quietly(probe)
            else:
                nonce = bytes(session.generate_random(96))
                material.encrypt(
                    bytes(16),
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, b"", 128),
                )
            return None
        if spec.family is KeyFamily.HMAC:
            if not DIGEST_SIZES[spec.hash] <= padded <= HMAC_BLOCK_SIZES[spec.hash]:
                raise ImportFailed(_IMPORT_FAILED)
            material.sign(b"", mechanism=templates.HMAC_MECHANISMS[spec.hash])
            return None
        if spec.family is KeyFamily.RSA:
            modulus = bytes(material[Attribute.MODULUS])
            if int.from_bytes(modulus, "big").bit_length() != spec.bits:
                raise ImportFailed(_IMPORT_FAILED)
            derived = rsa_public_key_der(material)
            if public_key_der is not None and public_key_der != derived:
                raise ImportFailed(_IMPORT_FAILED)
            # The modulus says nothing of the private exponent: one operation proves the
            # pair works (a PKCS#8 key with a wrong d or CRT value would fail every use).
            if spec.purpose is Purpose.ASYMMETRIC_DECRYPT:
                _prove_decryption(session, material, algorithm, derived)
            else:
                _prove_signature(session, material, algorithm, derived)
            return derived
        if spec.family is KeyFamily.EC:
            if bytes(material[Attribute.EC_PARAMS]) != encode_named_curve_parameters(spec.curve):
                raise ImportFailed(_IMPORT_FAILED)
            if public_key_der is None:
                raise ImportFailed(_IMPORT_FAILED)
            # PKCS#8 need not carry the public point and the token does not compute it: a
            # signature made here with the imported key proves the given public key is its.
            _prove_signature(session, material, algorithm, public_key_der)
            # Stored as the vault writes public keys itself, whatever DER the caller sent.
            canonical: bytes = serialization.load_der_public_key(public_key_der).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return canonical
    except _CHECK_ERRORS:
        raise ImportFailed(_IMPORT_FAILED) from None
    raise ImportFailed(_IMPORT_FAILED)


def _prove_signature(session: Any, key: Any, algorithm: Algorithm, public_der: bytes) -> None:
    """ImportFailed unless key signs a random digest in the token, with its algorithm's
    mechanism, so that public_der verifies it."""
    spec = algorithm.spec
    challenge = bytes(session.generate_random(DIGEST_SIZES[spec.hash] * 8))
    if spec.family is KeyFamily.EC:
        raw = bytes(key.sign(challenge, mechanism=Mechanism.ECDSA))
        half = len(raw) // 2
        signature = asym_utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
        prehashed = True
    elif spec.padding is Padding.PSS:
        hash_mechanism, mgf = templates.HASH_MECHANISMS[spec.hash]
        signature = bytes(
            key.sign(
                challenge,
                mechanism=Mechanism.RSA_PKCS_PSS,
                mechanism_param=(hash_mechanism, mgf, DIGEST_SIZES[spec.hash]),
            )
        )
        prehashed = True
    else:
        # PKCS#1 v1.5 keys may use only the hash-and-sign mechanism: sign a random message.
        signature = bytes(key.sign(challenge, mechanism=Mechanism.SHA256_RSA_PKCS))
        prehashed = False
    if not verify_signature(algorithm, public_der, challenge, prehashed, signature):
        raise ImportFailed(_IMPORT_FAILED)


def _prove_decryption(session: Any, key: Any, algorithm: Algorithm, public_der: bytes) -> None:
    """ImportFailed unless key decrypts, in the token, what public_der encrypted."""
    public = serialization.load_der_public_key(public_der)
    if not isinstance(public, rsa.RSAPublicKey):
        raise ImportFailed(_IMPORT_FAILED)
    hash_mechanism, mgf = templates.HASH_MECHANISMS[algorithm.spec.hash]
    chosen = hash_algorithm(algorithm.spec.hash)
    secret = bytes(session.generate_random(256))
    sealed = public.encrypt(
        secret, padding.OAEP(mgf=padding.MGF1(chosen), algorithm=chosen, label=None)
    )
    opened = bytes(
        key.decrypt(
            sealed, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=(hash_mechanism, mgf, None)
        )
    )
    if not hmac.compare_digest(opened, secret):
        raise ImportFailed(_IMPORT_FAILED)


def _gcm_encrypt(key: Any, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return bytes(
        key.encrypt(
            plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad, 128)
        )
    )


def _gcm_encrypt_request(key: Any, request: TokenGcm) -> bytes:
    return _gcm_encrypt(key, request.nonce, request.data, request.aad)


def _gcm_decrypt_request(key: Any, request: TokenGcm) -> bytes:
    return _gcm_decrypt(key, request.nonce, request.data, request.aad)


def _gcm_decrypt(key: Any, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return bytes(
            key.decrypt(
                sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad, 128)
            )
        )
    except _DATA_ERRORS:
        raise DecryptionFailed() from None


def _signer(algorithm: Algorithm, data: bytes, prehashed: bool) -> Callable[[Any], bytes]:
    """What signs data (a digest when prehashed) with a handle of algorithm's private key;
    InvalidArgument for an input algorithm cannot sign."""
    spec = algorithm.spec
    if spec.family is KeyFamily.EC:
        hashed = data if prehashed else digest(spec.hash, data)

        def sign_ec(key: Any) -> bytes:
            raw = bytes(key.sign(hashed, mechanism=Mechanism.ECDSA))
            half = len(raw) // 2
            return asym_utils.encode_dss_signature(
                int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
            )

        return sign_ec
    if spec.family is KeyFamily.ED25519:
        mechanism, param = Mechanism.EDDSA, None
    elif spec.padding is Padding.PSS:
        hash_mechanism, mgf = templates.HASH_MECHANISMS[spec.hash]
        mechanism = Mechanism.RSA_PKCS_PSS if prehashed else Mechanism.SHA256_RSA_PKCS_PSS
        param = (hash_mechanism, mgf, DIGEST_SIZES[spec.hash])
    elif spec.padding is Padding.PKCS1 and not prehashed:
        mechanism, param = Mechanism.SHA256_RSA_PKCS, None
    else:
        raise InvalidArgument(f"{algorithm} cannot sign this input")

    def sign(key: Any) -> bytes:
        return bytes(key.sign(data, mechanism=mechanism, mechanism_param=param))

    return sign


def generate_pair(
    session: Any,
    algorithm: Algorithm,
    token_label: str | None,
    public_template: templates.Template | None = None,
) -> tuple[Any, Any]:
    """A key pair of algorithm; the public half is a session object unless public_template
    says otherwise."""
    spec = algorithm.spec
    if public_template is None:
        public_template = templates.public_generation(algorithm)
    private_template = templates.private_generation(algorithm, token_label)
    if spec.family is KeyFamily.RSA:
        public_template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
        pair: tuple[Any, Any] = session.generate_keypair(
            KeyType.RSA,
            spec.bits,
            capabilities=0,
            public_template=public_template,
            private_template=private_template,
        )
        return pair
    if spec.family is KeyFamily.EC:
        params = encode_named_curve_parameters(spec.curve)
        key_type, mechanism = KeyType.EC, Mechanism.EC_KEY_PAIR_GEN
    else:
        params, key_type, mechanism = (
            _ED25519_PARAMS,
            KeyType.EC_EDWARDS,
            Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
        )
    domain = session.create_domain_parameters(key_type, {Attribute.EC_PARAMS: params}, local=True)
    pair = domain.generate_keypair(
        mechanism=mechanism,
        capabilities=0,
        public_template=public_template,
        private_template=private_template,
    )
    return pair


# Every way a token says "this input does not decrypt/verify under this key". They all
# become one uniform answer; which one it was is not told to the caller.
_DATA_ERRORS: tuple[type[Exception], ...] = (
    exceptions.EncryptedDataInvalid,
    exceptions.EncryptedDataLenRange,
    exceptions.DataInvalid,
    exceptions.DataLenRange,
    exceptions.WrappedKeyInvalid,
    exceptions.WrappedKeyLenRange,
    exceptions.SignatureInvalid,
    exceptions.SignatureLenRange,
    exceptions.FunctionFailed,
    # SoftHSM 2.6.1 reports a failed GCM tag check as CKR_GENERAL_ERROR.
    exceptions.GeneralError,
    exceptions.ArgumentsBad,
    exceptions.TemplateInconsistent,
)


_IMPORT_ERRORS: tuple[type[Exception], ...] = (
    *_DATA_ERRORS,
    exceptions.AttributeValueInvalid,
    exceptions.AttributeTypeInvalid,
    exceptions.DomainParamsInvalid,
    exceptions.KeySizeRange,
    exceptions.KeyTypeInconsistent,
    exceptions.TemplateIncomplete,
)
# SoftHSM picks the AES cipher by key length and answers MechanismInvalid for a key of any
# other length.
_CHECK_ERRORS: tuple[type[Exception], ...] = (*_IMPORT_ERRORS, exceptions.MechanismInvalid)
_IMPORT_FAILED = (
    "the wrapped key material does not unwrap under this import job as a key of its algorithm"
)
# The longest HMAC key that can be imported: a hash block. HMAC hashes a longer key first,
# so HMAC(K) = HMAC(H(K)) and the SDK imports H(K) instead; the vault cannot take the longer
# key itself, since SoftHSM zero-pads what its root wraps to whole 8-byte blocks, which
# changes a key that is hashed but not one that is padded to a block anyway.
HMAC_BLOCK_SIZES = {HashName.SHA256: 64, HashName.SHA384: 128, HashName.SHA512: 128}


def open_keystore(settings: Settings) -> Pkcs11KeyStore:
    """Start the module in this process, log in, and find the root keys."""
    from vault.hsm.environment import use_softhsm_config

    use_softhsm_config(settings)
    library = TokenLibrary(settings.hsm.module, settings.hsm.token_label, settings.user_pin)
    try:
        return Pkcs11KeyStore(library, settings.hsm.cache_size, settings.hsm.cache_ttl_seconds)
    except exceptions.PKCS11Error as error:
        raise TokenUnavailable(f"cannot read the token's keys: {type(error).__name__}") from None
