"""KeyImports against in-memory ports: import jobs (creation, listing, expiry and the
destruction of their private keys) and ImportKeyVersion with material wrapped as the SDK
wraps it (vault.client.key_import)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
from collections.abc import Iterator
from datetime import timedelta
from functools import cache

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.support.fakes import FakeImportJobStore
from tests.unit.world import ACCOUNT, DAY, T0, World
from vault.client.key_import import import_material, wrap_for_import
from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.errors import (
    ImportFailed,
    InvalidArgument,
    NotFound,
    TokenOperationFailed,
    UnsupportedAlgorithm,
    WrongState,
)
from vault.domain.imports import IMPORT_KEY_LABEL_PREFIX, ImportJob, ImportJobState, ImportMethod
from vault.domain.models import Key, KeyState, KeyVersion, VersionState
from vault.domain.names import KeyName
from vault.service.imports import KeyImports

LIFETIME = timedelta(days=3)


@cache
def _job_keys() -> tuple[rsa.RSAPrivateKey, ...]:
    # Two RSA-3072 pairs, made once per run: jobs take turns, so two jobs in a row never
    # share a private key (a misdirected import must meet another key).
    return tuple(rsa.generate_private_key(65537, 3072) for _ in range(2))


@cache
def _rsa_2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


class Vault(World):
    imports: KeyImports
    jobs: FakeImportJobStore


@pytest.fixture
def world() -> Iterator[Vault]:
    vault = Vault()
    turns = itertools.cycle(_job_keys())
    vault.keystore.import_key_source = lambda bits: next(turns)
    vault.jobs = FakeImportJobStore(vault.store)
    vault.imports = KeyImports(vault.keys, vault.jobs, vault.keystore, LIFETIME, vault.clock)
    yield vault


def _key(world: Vault, key_id: str, algorithm: Algorithm) -> Key:
    return world.keys.create_key(ACCOUNT, key_id, algorithm.purpose, algorithm)


def _wrapped(
    job: ImportJob,
    algorithm: Algorithm,
    key: bytes | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> tuple[bytes, bytes | None]:
    material = import_material(algorithm, key)
    return wrap_for_import(job.public_key_der, material.encoded), material.public_key_der


def _import(
    world: Vault,
    key: Key,
    job: ImportJob,
    wrapped: bytes,
    public: bytes | None = None,
    *,
    keep_primary: bool = False,
) -> KeyVersion:
    return world.imports.import_key_version(
        str(key.name), str(job.name), key.algorithm, wrapped, public, keep_primary=keep_primary
    )


# -- import jobs -------------------------------------------------------------------------------


def test_a_job_holds_an_rsa_3072_public_key_whose_private_half_is_in_the_token(
    world: Vault,
) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(key.name), None)
    assert job.name.key_name == key.name and str(job.name).startswith(f"{key.name}/importJobs/j")
    assert job.method is ImportMethod.RSA_OAEP_3072_SHA1_AES_256
    assert (job.create_time, job.expire_time) == (T0, T0 + LIFETIME)
    assert job.state(world.clock()) is ImportJobState.ACTIVE and job.destroy_time is None
    assert job.token_label.startswith(IMPORT_KEY_LABEL_PREFIX)
    public = serialization.load_der_public_key(job.public_key_der)
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 3072
    private = world.keystore.import_keys[job.token_label]
    assert private.public_key().public_numbers() == public.public_numbers()
    assert world.jobs.import_job_labels() == {job.token_label}
    assert world.imports.get_import_job(str(job.name)) == job


def test_jobs_are_listed_newest_first_and_only_for_their_key(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    other = _key(world, "k2", Algorithm.AES_256_GCM)
    first = world.imports.create_import_job(str(key.name), None)
    world.clock.advance(minutes=1)
    second = world.imports.create_import_job(str(key.name), ImportMethod.RSA_OAEP_3072_SHA1_AES_256)
    world.imports.create_import_job(str(other.name), None)
    assert [job.name for job in world.imports.list_import_jobs(str(key.name), 0, "").items] == [
        second.name,
        first.name,
    ]
    with pytest.raises(NotFound):
        world.imports.get_import_job(f"{key.name}/importJobs/jmissing")
    with pytest.raises(NotFound):
        world.imports.list_import_jobs(f"accounts/{ACCOUNT}/keys/nokey", 0, "")


def test_jobs_are_listed_in_pages_of_the_size_asked(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    made = []
    for n in range(5):
        made.append(world.imports.create_import_job(str(key.name), None).name)
        if n % 2:  # some jobs share a create time: their ids order them
            world.clock.advance(minutes=1)
    pages, token = [], ""
    while True:
        page = world.imports.list_import_jobs(str(key.name), 2, token)
        pages.append([job.name for job in page.items])
        token = page.next_page_token
        if not token:
            break
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [name for page in pages for name in page]
    assert sorted(listed, key=str) == sorted(made, key=str)
    everything = world.imports.list_import_jobs(str(key.name), 0, "")
    assert [job.name for job in everything.items] == listed and not everything.next_page_token
    times = [job.create_time for job in everything.items]
    assert times == sorted(times, reverse=True)
    with pytest.raises(InvalidArgument):
        world.imports.list_import_jobs(str(key.name), -1, "")


def test_no_job_for_a_disabled_token_resident_or_unimportable_key(world: Vault) -> None:
    disabled = _key(world, "k1", Algorithm.AES_256_GCM)
    world.keys.disable_key(str(disabled.name))
    with pytest.raises(WrongState) as caught:
        world.imports.create_import_job(str(disabled.name), None)
    assert caught.value.metadata["state"] == "DISABLED"
    resident = world.keys.create_key(
        ACCOUNT, "k2", Purpose.ENCRYPT_DECRYPT, Algorithm.AES_256_GCM, token_resident=True
    )
    ed25519 = _key(world, "k3", Algorithm.EC_SIGN_ED25519)
    for refused in (resident, ed25519):
        with pytest.raises(UnsupportedAlgorithm):
            world.imports.create_import_job(str(refused.name), None)
    assert world.keystore.import_keys == {} and world.jobs.jobs == {}


def test_a_job_the_store_cannot_record_leaves_no_private_key_in_the_token(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    world.jobs.failing = TokenOperationFailed("the store is unavailable")
    with pytest.raises(TokenOperationFailed):
        world.imports.create_import_job(str(key.name), None)
    assert world.keystore.import_keys == {}
    assert len(world.keystore.destroyed_labels) == 1


def test_expired_jobs_lose_their_private_key_once_and_active_ones_keep_it(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    old = world.imports.create_import_job(str(key.name), None)
    world.clock.advance(seconds=LIFETIME.total_seconds() / 2)
    young = world.imports.create_import_job(str(key.name), None)
    world.clock.advance(seconds=LIFETIME.total_seconds() / 2)
    assert [job.name for job in world.imports.destroy_expired_jobs()] == [old.name]
    assert set(world.keystore.import_keys) == {young.token_label}
    expired = world.imports.get_import_job(str(old.name))
    assert expired.destroy_time == world.clock() and expired.state(world.clock()).value == "EXPIRED"
    assert world.jobs.import_job_labels() == {young.token_label}
    assert world.imports.destroy_expired_jobs() == []


def test_a_destroyed_keys_jobs_lose_their_private_key_before_they_expire(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(key.name), None)
    world.keys.schedule_destruction(key.name, timedelta(seconds=DAY))
    world.clock.advance(seconds=DAY)
    world.keys.destroy_due_keys()
    assert world.clock() < job.expire_time
    assert [j.name for j in world.imports.destroy_expired_jobs()] == [job.name]
    assert world.keystore.import_keys == {}


def test_orphaned_import_keys_are_destroyed_and_live_ones_kept(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(key.name), None)
    orphan = f"{IMPORT_KEY_LABEL_PREFIX}orphan"
    world.keystore.create_import_key(ImportMethod.RSA_OAEP_3072_SHA1_AES_256, orphan)
    assert world.imports.remove_orphaned_import_keys() == [orphan]
    assert set(world.keystore.import_keys) == {job.token_label}


# -- ImportKeyVersion -------------------------------------------------------------------------


def test_aes_material_becomes_the_primary_version_and_encrypts_as_the_original(
    world: Vault,
) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(key.name), None)
    raw = secrets.token_bytes(32)
    version = _import(world, key, job, _wrapped(job, key.algorithm, raw)[0])
    assert version.number == 2 and version.state is VersionState.ENABLED
    assert version.root_generation == 1 and version.wrapped_blob and version.public_key_der is None
    assert world.keys.get_key(str(key.name)).primary_version == 2
    assert world.crypto.encrypt(str(key.name), b"x", b"").key_version_name == str(version.name)
    nonce = secrets.token_bytes(12)
    sealed = world.keystore.encrypt_gcm(version, key.algorithm, nonce, b"payload", b"aad")
    assert AESGCM(raw).decrypt(nonce, sealed, b"aad") == b"payload"


def test_hmac_material_makes_the_same_macs_as_the_original(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.HMAC_SHA256)
    job = world.imports.create_import_job(str(key.name), None)
    raw = secrets.token_bytes(48)
    version = _import(world, key, job, _wrapped(job, key.algorithm, raw)[0])
    mac = world.keystore.generate_mac(version, key.algorithm, b"data")
    assert mac == hmac.new(raw, b"data", hashlib.sha256).digest()


def test_ec_and_rsa_private_keys_import_with_their_public_keys(world: Vault) -> None:
    cases: list[tuple[Algorithm, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]] = [
        (Algorithm.EC_SIGN_P256_SHA256, ec.generate_private_key(ec.SECP256R1())),
        (Algorithm.RSA_SIGN_PSS_2048_SHA256, _rsa_2048()),
    ]
    for index, (algorithm, private) in enumerate(cases):
        key = _key(world, f"k{index}", algorithm)
        job = world.imports.create_import_job(str(key.name), None)
        wrapped, public = _wrapped(job, algorithm, private)
        version = _import(world, key, job, wrapped, public)
        assert version.public_key_der == public
        signature = world.keystore.sign(version, algorithm, b"message", False)
        if isinstance(private, ec.EllipticCurvePrivateKey):
            private.public_key().verify(signature, b"message", ec.ECDSA(hashes.SHA256()))
        else:
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            private.public_key().verify(signature, b"message", pss, hashes.SHA256())


def test_keep_primary_adds_an_enabled_version_that_is_not_primary(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(key.name), None)
    wrapped = _wrapped(job, key.algorithm, secrets.token_bytes(32))[0]
    version = _import(world, key, job, wrapped, keep_primary=True)
    assert version.number == 2 and version.state is VersionState.ENABLED
    assert world.keys.get_key(str(key.name)).primary_version == 1


def _one_import_failure(
    world: Vault, key: Key, job: ImportJob, wrapped: bytes, public: bytes | None = None
) -> str:
    with pytest.raises(ImportFailed) as caught:
        _import(world, key, job, wrapped, public)
    return str(caught.value)


def test_tampered_misdirected_and_wrong_type_material_all_get_one_import_failed(
    world: Vault,
) -> None:
    aes = _key(world, "k1", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(aes.name), None)
    other_job = world.imports.create_import_job(str(aes.name), None)
    good = _wrapped(job, aes.algorithm, secrets.token_bytes(32))[0]
    split = job.method.wrapped_ephemeral_bytes
    flipped_oaep = bytes([good[0] ^ 1]) + good[1:]
    flipped_kwp = good[:-1] + bytes([good[-1] ^ 1])
    ec_key = _key(world, "k2", Algorithm.EC_SIGN_P256_SHA256)
    ec_job = world.imports.create_import_job(str(ec_key.name), None)
    p256 = ec.generate_private_key(ec.SECP256R1())
    ec_wrapped, ec_public = _wrapped(ec_job, ec_key.algorithm, p256)
    stranger = import_material(ec_key.algorithm, ec.generate_private_key(ec.SECP256R1()))
    p384 = import_material(Algorithm.EC_SIGN_P384_SHA384, ec.generate_private_key(ec.SECP384R1()))
    rsa_material = import_material(Algorithm.RSA_SIGN_PSS_2048_SHA256, _rsa_2048())
    messages = {
        _one_import_failure(world, aes, job, flipped_oaep),
        _one_import_failure(world, aes, job, flipped_kwp),
        _one_import_failure(world, aes, job, good[:split]),
        _one_import_failure(world, aes, other_job, good),
        _one_import_failure(world, aes, job, wrap_for_import(job.public_key_der, bytes(16))),
        _one_import_failure(world, aes, job, wrap_for_import(job.public_key_der, bytes(40))),
        _one_import_failure(world, ec_key, ec_job, ec_wrapped, stranger.public_key_der),
        _one_import_failure(world, ec_key, ec_job, ec_wrapped, None),
        _one_import_failure(
            world,
            ec_key,
            ec_job,
            wrap_for_import(ec_job.public_key_der, p384.encoded),
            p384.public_key_der,
        ),
        _one_import_failure(
            world,
            ec_key,
            ec_job,
            wrap_for_import(ec_job.public_key_der, rsa_material.encoded),
            rsa_material.public_key_der,
        ),
    }
    assert len(messages) == 1
    assert [len(world.store.list_versions(k.name)) for k in (aes, ec_key)] == [1, 1]
    # The job still works for the right material.
    assert _import(world, ec_key, ec_job, ec_wrapped, ec_public).number == 2


def test_hmac_keys_shorter_than_the_digest_are_refused(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.HMAC_SHA256)
    job = world.imports.create_import_job(str(key.name), None)
    _one_import_failure(world, key, job, wrap_for_import(job.public_key_der, bytes(31)))
    assert len(world.store.list_versions(key.name)) == 1


def test_requests_that_cannot_be_imports_are_refused_before_unwrapping(world: Vault) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    other = _key(world, "k2", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(key.name), None)
    other_job = world.imports.create_import_job(str(other.name), None)
    wrapped = _wrapped(job, key.algorithm, secrets.token_bytes(32))[0]
    with pytest.raises(InvalidArgument) as caught:
        _import(world, key, other_job, wrapped)
    assert caught.value.metadata["field"] == "import_job"
    with pytest.raises(UnsupportedAlgorithm):
        world.imports.import_key_version(
            str(key.name), str(job.name), Algorithm.AES_256_KWP, wrapped, None
        )
    for bad, field in ((b"", "wrapped_key"), (bytes(16_385), "wrapped_key")):
        with pytest.raises(InvalidArgument) as caught:
            _import(world, key, job, bad)
        assert caught.value.metadata["field"] == field
    with pytest.raises(InvalidArgument) as caught:
        _import(world, key, job, wrapped, bytes(4097))
    assert caught.value.metadata["field"] == "public_key_der"
    assert len(world.store.list_versions(key.name)) == 1


def test_disabled_and_destroyed_keys_take_no_imported_material(world: Vault) -> None:
    disabled = _key(world, "k1", Algorithm.AES_256_GCM)
    destroyed = _key(world, "k2", Algorithm.AES_256_GCM)
    jobs = {
        k.name: world.imports.create_import_job(str(k.name), None) for k in (disabled, destroyed)
    }
    world.keys.disable_key(str(disabled.name))
    world.keys.schedule_destruction(destroyed.name, timedelta(seconds=DAY))
    world.clock.advance(seconds=DAY)
    world.keys.destroy_due_keys()
    for key, state in ((disabled, "DISABLED"), (destroyed, "DESTROYED")):
        job = jobs[key.name]
        wrapped = _wrapped(job, key.algorithm, secrets.token_bytes(32))[0]
        with pytest.raises(WrongState) as caught:
            _import(world, key, job, wrapped)
        assert caught.value.metadata["state"] == state
        assert [v.number for v in world.store.list_versions(key.name)] == [1]


def test_an_expired_job_refuses_the_import_and_loses_its_private_key_at_once(
    world: Vault,
) -> None:
    key = _key(world, "k1", Algorithm.AES_256_GCM)
    job = world.imports.create_import_job(str(key.name), None)
    wrapped = _wrapped(job, key.algorithm, secrets.token_bytes(32))[0]
    world.clock.advance(seconds=LIFETIME.total_seconds())
    with pytest.raises(WrongState) as caught:
        _import(world, key, job, wrapped)
    assert caught.value.metadata == {"state": "EXPIRED", "name": str(job.name)}
    assert world.keystore.import_keys == {}
    assert world.imports.get_import_job(str(job.name)).destroy_time == world.clock()
    assert world.imports.destroy_expired_jobs() == []
    assert world.store.keys[KeyName(ACCOUNT, "k1")].state is KeyState.ENABLED
