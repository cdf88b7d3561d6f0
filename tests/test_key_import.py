"""Key import end to end: import jobs, ImportKeyVersion and the SDK's wrapping, against the
real server and token; the job's key read back from the token as a PIN holder would."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.support.api_calls import every_page, expect_error, new_id
from tests.support.harness import VaultServer
from tests.support.security_helpers import add_access_key, new_account
from vault.client import VaultClient
from vault.client.key_import import ImportMaterial, import_material, wrap_for_import
from vault.domain.algorithms import Algorithm
from vault.gen.vault.v1 import key_service_pb2, key_service_pb2_grpc, resources_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED
ACTIVE = resources_pb2.IMPORT_JOB_STATE_ACTIVE
IMPORT_PREFIX = "vault:import:"


@pytest.fixture(scope="module")
def account(client: VaultClient) -> str:
    return new_account(client, "import")


def _key(client: VaultClient, account: str, purpose: str, algorithm: str | None = None) -> str:
    return client.create_key(account, new_id(), purpose, algorithm=algorithm).name


def _wrapped(client: VaultClient, job: str, material: bytes) -> bytes:
    return wrap_for_import(client.get_import_job(job).public_key_der, material)


def _import_raw(
    client: VaultClient, key: str, job: str, material: ImportMaterial
) -> resources_pb2.KeyVersion:
    """ImportKeyVersion with material as given, bypassing the SDK's checks."""
    from vault.gen.vault.v1 import key_service_pb2

    request = key_service_pb2.ImportKeyVersionRequest(
        parent=key,
        import_job=job,
        wrapped_key=_wrapped(client, job, material.encoded),
        public_key_der=material.public_key_der or b"",
    )
    return client._call(client._keys.ImportKeyVersion, request)  # type: ignore[no-any-return]


# -- import jobs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "bits"),
    [
        (None, 3072),
        ("RSA_OAEP_3072_SHA1_AES_256", 3072),
        ("RSA_OAEP_4096_SHA1_AES_256", 4096),
    ],
)
def test_an_import_job_publishes_an_rsa_public_key_and_its_expiry(
    client: VaultClient, account: str, method: str | None, bits: int
) -> None:
    key = _key(client, account, "ENCRYPT_DECRYPT")
    job = client.create_import_job(key, method)
    assert job.name.startswith(f"{key}/importJobs/")
    assert job.state == ACTIVE
    public = serialization.load_der_public_key(job.public_key_der)
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == bits
    assert public.public_numbers().e == 65537
    assert serialization.load_pem_public_key(job.public_key_pem.encode()) == public
    lifetime = job.expire_time.ToDatetime() - job.create_time.ToDatetime()
    assert lifetime == timedelta(hours=24)
    assert client.get_import_job(job.name) == job
    assert [listed.name for listed in client.list_import_jobs(key)] == [job.name]


def test_import_jobs_are_listed_newest_first_and_belong_to_one_key(
    client: VaultClient, account: str
) -> None:
    key, other = _key(client, account, "MAC"), _key(client, account, "MAC")
    first = client.create_import_job(key).name
    second = client.create_import_job(key).name
    assert [job.name for job in client.list_import_jobs(key)] == [second, first]
    assert client.list_import_jobs(other) == []
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        lambda: client.get_import_job(f"{key}/importJobs/jmissing"),
    )
    expect_error(INVALID, "MALFORMED_NAME", lambda: client.get_import_job(f"{key}/importJobs/"))


def test_import_jobs_are_listed_in_pages_of_the_size_asked(
    client: VaultClient, account: str, server: VaultServer
) -> None:
    """ListImportJobs answered every job in one page and refused page tokens; it now pages
    by page_size, newest first, and refuses a token it did not make."""
    key = _key(client, account, "MAC")
    made = [client.create_import_job(key).name for _ in range(5)]
    with server.channel() as channel:
        stub = key_service_pb2_grpc.KeyServiceStub(channel)

        def listing(page_size: int, page_token: str) -> key_service_pb2.ListImportJobsResponse:
            request = key_service_pb2.ListImportJobsRequest(
                parent=key, page_size=page_size, page_token=page_token
            )
            return stub.ListImportJobs(request, timeout=30)

        pages = every_page(lambda token: listing(2, token))
        assert [len(page.import_jobs) for page in pages] == [2, 2, 1]
        listed = [job.name for page in pages for job in page.import_jobs]
        assert listed == list(reversed(made))
        whole = listing(0, "")
        assert [job.name for job in whole.import_jobs] == listed and not whole.next_page_token
        for token in ("bogus!", "bm90IGEgam9i"):
            with pytest.raises(grpc.RpcError) as caught:
                listing(2, token)
            assert caught.value.code() == INVALID
        with pytest.raises(grpc.RpcError) as negative:
            listing(-1, "")
        assert negative.value.code() == INVALID
    assert [job.name for job in client.list_import_jobs(key)] == listed


def _import_objects(keystore: Any) -> list[Any]:
    from pkcs11 import Attribute, ObjectClass

    session = keystore._library.context().session
    return [
        obj
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
        if str(obj[Attribute.LABEL]).startswith(IMPORT_PREFIX)
    ]


def test_a_jobs_private_key_only_unwraps_and_never_leaves_the_token(
    client: VaultClient, account: str, keystore: Any
) -> None:
    from pkcs11 import Attribute, Mechanism

    client.create_import_job(_key(client, account, "ENCRYPT_DECRYPT"))
    found = _import_objects(keystore)
    assert found
    for private in found:
        assert private[Attribute.TOKEN] and private[Attribute.PRIVATE]
        assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
        assert private[Attribute.NEVER_EXTRACTABLE]
        assert private[Attribute.UNWRAP]
        for capability in (
            Attribute.DECRYPT,
            Attribute.SIGN,
            Attribute.SIGN_RECOVER,
            Attribute.DERIVE,
        ):
            assert not private[capability]
        assert not private[Attribute.MODIFIABLE]
        assert not private[Attribute.COPYABLE]
        assert list(private[Attribute.ALLOWED_MECHANISMS]) == [Mechanism.RSA_PKCS_OAEP]


def test_a_pin_holder_cannot_unwrap_a_capable_key_with_a_jobs_private_key(
    client: VaultClient, account: str, keystore: Any
) -> None:
    """The job key's UNWRAP_TEMPLATE pins the ephemeral key: UNWRAP only. Asking for an AES
    key that encrypts, or that is extractable, is refused by the token."""
    from pkcs11 import Attribute, KeyType, ObjectClass, exceptions

    from vault.hsm import templates

    key = _key(client, account, "ENCRYPT_DECRYPT")
    job = client.create_import_job(key)
    public = serialization.load_der_public_key(job.public_key_der)
    assert isinstance(public, rsa.RSAPublicKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    wrapped = public.encrypt(os.urandom(32), oaep)
    modulus = public.public_numbers().n
    (private,) = [
        obj
        for obj in _import_objects(keystore)
        if int.from_bytes(obj[Attribute.MODULUS], "big") == modulus
    ]
    allowed = templates.ephemeral_unwrap()
    for change in (
        {Attribute.ENCRYPT: True},
        {Attribute.DECRYPT: True},
        {Attribute.WRAP: True},
        {Attribute.EXTRACTABLE: True},
        {Attribute.SENSITIVE: False},
        {Attribute.TOKEN: True},
    ):
        with pytest.raises(exceptions.PKCS11Error):
            unwrapped = private.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped,
                mechanism=templates.IMPORT_MECHANISM,
                mechanism_param=templates.IMPORT_OAEP_PARAMS,
                capabilities=0,
                template={**allowed, **change},
            )
            unwrapped.destroy()
    # The pinned template itself is accepted: the refusals above are the pins at work.
    unwrapped = private.unwrap_key(
        ObjectClass.SECRET_KEY,
        KeyType.AES,
        wrapped,
        mechanism=templates.IMPORT_MECHANISM,
        mechanism_param=templates.IMPORT_OAEP_PARAMS,
        capabilities=0,
        template=allowed,
    )
    try:
        assert unwrapped[Attribute.UNWRAP] and not unwrapped[Attribute.ENCRYPT]
        assert not unwrapped[Attribute.EXTRACTABLE]
    finally:
        unwrapped.destroy()


# -- importing ------------------------------------------------------------------------------


def test_an_imported_hmac_key_becomes_primary_and_macs_as_the_known_key(
    client: VaultClient, account: str
) -> None:
    key = _key(client, account, "MAC", "HMAC_SHA256")
    secret = os.urandom(32)
    job = client.create_import_job(key).name
    version = client.import_key(key, job, secret)
    assert version.name == f"{key}/versions/2"
    assert client.get_key(key).primary_version == f"{key}/versions/2"
    reference = hmac.HMAC(secret, hashes.SHA256())
    reference.update(b"payload")
    assert client.generate_mac(key, b"payload").mac == reference.finalize()


def test_keep_primary_adds_the_version_without_making_it_primary(
    client: VaultClient, account: str
) -> None:
    key = _key(client, account, "ENCRYPT_DECRYPT")
    job = client.create_import_job(key).name
    version = client.import_key(key, job, os.urandom(32), keep_primary=True)
    assert client.get_key(key).primary_version == f"{key}/versions/1"
    sealed = client.encrypt(version.name, b"imported")
    assert client.decrypt(key, sealed.ciphertext).plaintext == b"imported"


@pytest.mark.parametrize(
    ("algorithm", "private"),
    [
        ("RSA_SIGN_PSS_2048_SHA256", lambda: rsa.generate_private_key(65537, 2048)),
        ("EC_SIGN_P256_SHA256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("EC_SIGN_P384_SHA384", lambda: ec.generate_private_key(ec.SECP384R1())),
    ],
)
def test_an_imported_signing_key_signs_for_its_known_public_key(
    client: VaultClient, account: str, algorithm: str, private: Any
) -> None:
    key = _key(client, account, "SIGN_VERIFY", algorithm)
    known = private()
    pem = known.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    version = client.import_key(key, client.create_import_job(key).name, pem)
    expected = known.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert client.get_public_key(version.name).pem.encode() == expected
    signature = client.sign(key, message=b"release").signature
    if isinstance(known, rsa.RSAPrivateKey):
        known.public_key().verify(
            signature,
            b"release",
            padding.PSS(padding.MGF1(hashes.SHA256()), 32),
            hashes.SHA256(),
        )
    else:
        digest = hashes.SHA256() if algorithm.endswith("SHA256") else hashes.SHA384()
        known.public_key().verify(signature, b"release", ec.ECDSA(digest))


def test_an_imported_rsa_decryption_key_opens_what_its_public_key_sealed(
    client: VaultClient, account: str
) -> None:
    key = _key(client, account, "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1")
    known = rsa.generate_private_key(65537, 2048)
    client.import_key(key, client.create_import_job(key, "RSA_OAEP_4096_SHA1_AES_256").name, known)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    sealed = known.public_key().encrypt(b"for the vault", oaep)
    assert client.asymmetric_decrypt(key, sealed).plaintext == b"for the vault"


_JOBS: dict[str, str] = {}


def _failed_import(client: VaultClient, key: str, material: ImportMaterial) -> None:
    # One job per key: making its RSA key pair is the slow part.
    job = _JOBS.get(key) or _JOBS.setdefault(key, client.create_import_job(key).name)
    error = expect_error(INVALID, "IMPORT_FAILED", lambda: _import_raw(client, key, job, material))
    assert len(client.list_key_versions(key)) == 1
    # One message for every cause; it names nothing of the material.
    assert "does not unwrap under this import job" in error.message


def test_material_of_the_wrong_size_or_type_is_refused_uniformly(
    client: VaultClient, account: str
) -> None:
    aes = _key(client, account, "ENCRYPT_DECRYPT")
    _failed_import(client, aes, ImportMaterial(os.urandom(16)))
    _failed_import(client, aes, ImportMaterial(os.urandom(33)))
    # 31 bytes wrap to the length 32 do: the token's refusal to use such a key tells.
    _failed_import(client, aes, ImportMaterial(os.urandom(31)))
    kwp = _key(client, account, "WRAP_UNWRAP")
    _failed_import(client, kwp, ImportMaterial(os.urandom(25)))
    _failed_import(client, kwp, ImportMaterial(os.urandom(24)))
    hmac_key = _key(client, account, "MAC", "HMAC_SHA512")
    _failed_import(client, hmac_key, ImportMaterial(os.urandom(32)))  # shorter than SHA-512
    # Longer than a SHA-256 block: the SDK would import its hash instead (same MACs).
    hmac_256 = _key(client, account, "MAC", "HMAC_SHA256")
    _failed_import(client, hmac_256, ImportMaterial(os.urandom(72)))
    rsa_sign = _key(client, account, "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256")
    ec_material = import_material(
        Algorithm.EC_SIGN_P256_SHA256, ec.generate_private_key(ec.SECP256R1())
    )
    _failed_import(client, rsa_sign, ec_material)
    small = import_material(
        Algorithm.RSA_SIGN_PSS_2048_SHA256, rsa.generate_private_key(65537, 3072)
    )
    _failed_import(client, rsa_sign, small)
    ec_sign = _key(client, account, "SIGN_VERIFY", "EC_SIGN_P256_SHA256")
    p384 = import_material(Algorithm.EC_SIGN_P384_SHA384, ec.generate_private_key(ec.SECP384R1()))
    _failed_import(client, ec_sign, p384)


def test_a_public_key_that_is_not_the_private_keys_is_refused(
    client: VaultClient, account: str
) -> None:
    ec_sign = _key(client, account, "SIGN_VERIFY", "EC_SIGN_P256_SHA256")
    material = import_material(
        Algorithm.EC_SIGN_P256_SHA256, ec.generate_private_key(ec.SECP256R1())
    )
    other = import_material(Algorithm.EC_SIGN_P256_SHA256, ec.generate_private_key(ec.SECP256R1()))
    _failed_import(client, ec_sign, ImportMaterial(material.encoded, other.public_key_der))
    _failed_import(client, ec_sign, ImportMaterial(material.encoded, None))
    rsa_sign = _key(client, account, "SIGN_VERIFY", "RSA_SIGN_PKCS1_2048_SHA256")
    known = import_material(
        Algorithm.RSA_SIGN_PKCS1_2048_SHA256, rsa.generate_private_key(65537, 2048)
    )
    stranger = import_material(
        Algorithm.RSA_SIGN_PKCS1_2048_SHA256, rsa.generate_private_key(65537, 2048)
    )
    _failed_import(client, rsa_sign, ImportMaterial(known.encoded, stranger.public_key_der))


def _inconsistent_rsa_pkcs8(bits: int) -> bytes:
    """A PKCS#8 RSA key whose modulus and public exponent are right but whose private
    exponents are not (d too: OpenSSL checks a CRT result and recomputes it with d): every
    private operation with it gives a wrong answer."""
    numbers = rsa.generate_private_key(65537, bits).private_numbers()
    broken = rsa.RSAPrivateNumbers(
        numbers.p,
        numbers.q,
        numbers.d ^ 2,
        numbers.dmp1 ^ 2,
        numbers.dmq1,
        numbers.iqmp,
        numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    return broken.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("purpose", "algorithm"),
    [
        ("SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256"),
        ("SIGN_VERIFY", "RSA_SIGN_PKCS1_2048_SHA256"),
        ("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1"),
    ],
)
def test_an_rsa_key_whose_private_part_does_not_work_is_refused(
    client: VaultClient, account: str, purpose: str, algorithm: str
) -> None:
    key = _key(client, account, purpose, algorithm)
    _failed_import(client, key, ImportMaterial(_inconsistent_rsa_pkcs8(2048)))


def test_tampered_or_misdirected_wrapping_is_refused_uniformly(
    client: VaultClient, account: str
) -> None:
    from vault.gen.vault.v1 import key_service_pb2

    key = _key(client, account, "ENCRYPT_DECRYPT")
    job = client.create_import_job(key).name
    good = _wrapped(client, job, os.urandom(32))
    other_job = client.create_import_job(key).name
    for wrapped in (
        good[:-1] + bytes([good[-1] ^ 1]),  # AES-KWP integrity check
        bytes([good[0] ^ 1]) + good[1:],  # RSA-OAEP block
        good[:384],  # no material
        _wrapped(client, other_job, os.urandom(32)),  # made for another job
    ):
        request = key_service_pb2.ImportKeyVersionRequest(
            parent=key, import_job=job, wrapped_key=wrapped
        )
        expect_error(
            INVALID,
            "IMPORT_FAILED",
            lambda request=request: client._call(client._keys.ImportKeyVersion, request),
        )
    assert len(client.list_key_versions(key)) == 1


def test_a_job_serves_only_its_own_key_and_algorithm(client: VaultClient, account: str) -> None:
    from vault.gen.vault.v1 import key_service_pb2

    key, other = _key(client, account, "ENCRYPT_DECRYPT"), _key(client, account, "ENCRYPT_DECRYPT")
    job = client.create_import_job(other).name
    wrapped = _wrapped(client, job, os.urandom(32))
    misdirected = key_service_pb2.ImportKeyVersionRequest(
        parent=key, import_job=job, wrapped_key=wrapped
    )
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client._call(client._keys.ImportKeyVersion, misdirected),
    )
    wrong_algorithm = key_service_pb2.ImportKeyVersionRequest(
        parent=other,
        import_job=job,
        wrapped_key=wrapped,
        algorithm=resources_pb2.ALGORITHM_AES_256_KWP,
    )
    expect_error(
        INVALID,
        "UNSUPPORTED_ALGORITHM",
        lambda: client._call(client._keys.ImportKeyVersion, wrong_algorithm),
    )


def test_disabled_and_token_resident_keys_take_no_import(client: VaultClient, account: str) -> None:
    key = _key(client, account, "ENCRYPT_DECRYPT")
    job = client.create_import_job(key).name
    client.disable_key(key)
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.import_key(key, job, bytes(32)))
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.create_import_job(key))
    resident = client.create_key(account, new_id(), "ENCRYPT_DECRYPT", token_resident=True).name
    expect_error(INVALID, "UNSUPPORTED_ALGORITHM", lambda: client.create_import_job(resident))


# -- authorisation --------------------------------------------------------------------------


def test_creating_a_job_and_importing_need_full_access_to_the_key(
    server: VaultServer, client: VaultClient, account: str
) -> None:
    key = _key(client, account, "ENCRYPT_DECRYPT")
    key_id = key.rsplit("/", 1)[1]
    job = client.create_import_job(key).name
    writer = add_access_key(client, account, [(f"keys/{key_id}", "READWRITE")])
    with server.client(writer.credentials) as as_writer:
        expect_error(DENIED, "PERMISSION_DENIED", lambda: as_writer.create_import_job(key))
        wrapped = _wrapped(client, job, os.urandom(32))
        from vault.gen.vault.v1 import key_service_pb2

        request = key_service_pb2.ImportKeyVersionRequest(
            parent=key, import_job=job, wrapped_key=wrapped
        )
        expect_error(
            DENIED,
            "PERMISSION_DENIED",
            lambda: as_writer._call(as_writer._keys.ImportKeyVersion, request),
        )
        assert as_writer.get_import_job(job).name == job
        assert [listed.name for listed in as_writer.list_import_jobs(key)] == [job]
    owner = add_access_key(client, account, [(f"keys/{key_id}", "FULL")])
    with server.client(owner.credentials) as as_owner:
        created = as_owner.create_import_job(key).name
        assert as_owner.import_key(key, created, os.urandom(32)).name == f"{key}/versions/2"
    stranger_account = new_account(client, "stranger")
    stranger = add_access_key(client, stranger_account)
    with server.client(stranger.credentials) as as_stranger:
        expect_error(DENIED, "PERMISSION_DENIED", lambda: as_stranger.get_import_job(job))


# -- expiry, with the service's clock moved instead of waiting -----------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def local_imports(keystore: Any) -> Iterator[tuple[Any, Any, _Clock]]:
    """KeyImports on the real token and a store of its own, with a clock the test moves."""
    from vault.domain.policy import KeyPolicy
    from vault.service.imports import KeyImports
    from vault.service.keys import KeyManagement
    from vault.storage import open_stores

    stores = open_stores("sqlite://")
    clock = _Clock()
    policy = KeyPolicy(
        min_destroy_waiting_seconds=86_400,
        default_destroy_waiting_seconds=30 * 86_400,
        max_plaintext_bytes=65_536,
    )
    keys = KeyManagement(stores.metadata, keystore, policy, clock=clock)
    imports = KeyImports(keys, stores.imports, keystore, timedelta(hours=24), clock=clock)
    yield keys, imports, clock
    stores.close()


def test_an_expired_job_refuses_imports_and_its_private_key_is_destroyed(
    local_imports: tuple[Any, Any, _Clock], keystore: Any
) -> None:
    from vault.domain.algorithms import Purpose
    from vault.domain.errors import WrongState
    from vault.domain.imports import ImportJobState

    keys, imports, clock = local_imports
    key = keys.create_key("expiry", "k1", Purpose.ENCRYPT_DECRYPT)
    job = imports.create_import_job(str(key.name), None)
    wrapped = wrap_for_import(job.public_key_der, os.urandom(32))
    labels = {obj[_label()] for obj in _import_objects(keystore)}
    assert job.token_label in labels
    clock.now += timedelta(hours=24)
    assert imports.get_import_job(str(job.name)).state(clock()) is ImportJobState.EXPIRED
    with pytest.raises(WrongState, match="expired"):
        imports.import_key_version(str(key.name), str(job.name), None, wrapped, None)
    assert job.token_label not in {obj[_label()] for obj in _import_objects(keystore)}
    assert imports.get_import_job(str(job.name)).destroy_time == clock()


def test_the_periodic_job_destroys_expired_jobs_private_keys(
    local_imports: tuple[Any, Any, _Clock], keystore: Any
) -> None:
    from vault.domain.algorithms import Purpose

    keys, imports, clock = local_imports
    key = keys.create_key("expiry", "k2", Purpose.MAC)
    early = imports.create_import_job(str(key.name), None)
    clock.now += timedelta(hours=12)
    late = imports.create_import_job(str(key.name), None)
    clock.now += timedelta(hours=12)
    assert [job.name for job in imports.destroy_expired_jobs()] == [early.name]
    labels = {obj[_label()] for obj in _import_objects(keystore)}
    assert early.token_label not in labels and late.token_label in labels
    assert imports.destroy_expired_jobs() == []
    wrapped = wrap_for_import(late.public_key_der, os.urandom(32))
    version = imports.import_key_version(str(key.name), str(late.name), None, wrapped, None)
    assert version.name.version == 2
    clock.now += timedelta(hours=12)
    assert [job.name for job in imports.destroy_expired_jobs()] == [late.name]


def _label() -> Any:
    from pkcs11 import Attribute

    return Attribute.LABEL


# -- nothing of the material in a repr ----------------------------------------------------


def test_material_and_jobs_keep_key_bytes_out_of_their_repr() -> None:
    from vault.domain.imports import ImportJob, ImportJobName, ImportMethod
    from vault.domain.ports import GeneratedMaterial

    secret = os.urandom(32)
    assert secret.hex() not in repr(ImportMaterial(secret)) and repr(secret) not in repr(
        ImportMaterial(secret)
    )
    blob = os.urandom(40)
    assert repr(blob) not in repr(GeneratedMaterial(1, blob, None, None))
    now = datetime.now(UTC)
    job = ImportJob(
        ImportJobName("a", "k", "j1"),
        ImportMethod.RSA_OAEP_3072_SHA1_AES_256,
        now,
        now,
        "vault:import:x",
        blob,
    )
    assert repr(blob) not in repr(job)


def test_import_calls_are_classified_and_audited_before_they_run(
    server: VaultServer, client: VaultClient, account: str
) -> None:
    """CreateImportJob and ImportKeyVersion are changes that need FULL on the key (their
    audit record is committed first); reading jobs needs READ. The audit record names the
    key, and neither it nor the server's log carries anything of the wrapped material."""
    from vault.domain.identity import MUTATING_METHODS, REQUIRED_LEVEL, AccessLevel
    from vault.gen.vault.v1 import key_service_pb2

    methods = {
        method.name for method in key_service_pb2.DESCRIPTOR.services_by_name["KeyService"].methods
    }
    assert methods <= set(REQUIRED_LEVEL)
    assert REQUIRED_LEVEL["CreateImportJob"] is AccessLevel.FULL
    assert REQUIRED_LEVEL["ImportKeyVersion"] is AccessLevel.FULL
    assert REQUIRED_LEVEL["GetImportJob"] is AccessLevel.READ
    assert REQUIRED_LEVEL["ListImportJobs"] is AccessLevel.READ
    assert {"CreateImportJob", "ImportKeyVersion"} <= MUTATING_METHODS
    assert not {"GetImportJob", "ListImportJobs"} & MUTATING_METHODS

    key = _key(client, account, "ENCRYPT_DECRYPT")
    job = client.create_import_job(key).name
    wrapped = _wrapped(client, job, os.urandom(32))
    request = key_service_pb2.ImportKeyVersionRequest(
        parent=key, import_job=job, wrapped_key=wrapped
    )
    client._call(client._keys.ImportKeyVersion, request)
    events = [
        event
        for event in client.iter_audit_events(resource=key)
        if event.method.endswith(("/CreateImportJob", "/ImportKeyVersion"))
    ]
    assert [(e.method.rsplit("/", 1)[1], e.outcome) for e in events] == [
        ("CreateImportJob", "STARTED"),
        ("CreateImportJob", "OK"),
        ("ImportKeyVersion", "STARTED"),
        ("ImportKeyVersion", "OK"),
    ]
    assert {event.resource for event in events} == {key}
    log = server.log()
    for piece in (wrapped[-24:], wrapped[:24]):
        assert piece.hex() not in log
        assert base64.b64encode(piece).decode() not in log


def test_start_up_destroys_import_keys_no_job_names(
    server: VaultServer, client: VaultClient, account: str, keystore: Any
) -> None:
    """A key pair made for a job whose row never got committed (a crash in between) is
    destroyed at start-up; the keys of recorded jobs stay. Run in a process of its own
    against the session server's store and token, as `vaultctl serve` does before its
    workers start."""
    import json
    import subprocess
    import sys

    from tests.support.harness import vault_environment
    from vault.domain.imports import ImportMethod

    orphan = f"{IMPORT_PREFIX}orphan{os.urandom(8).hex()}"
    keystore.create_import_key(ImportMethod.RSA_OAEP_3072_SHA1_AES_256, orphan)
    key = _key(client, account, "MAC")
    job = client.create_import_job(key).name
    script = (
        "import json\n"
        "from vault.app import build_services\n"
        "from vault.config import Settings\n"
        "services = build_services(Settings())\n"
        "print(json.dumps(services.imports.remove_orphaned_import_keys()))\n"
        "services.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=vault_environment(server.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == [orphan]
    assert orphan not in {obj[_label()] for obj in _import_objects(keystore)}
    # The recorded job's key is still in the token: the job still imports.
    assert client.import_key(key, job, os.urandom(32)).name == f"{key}/versions/2"


def test_a_destroyed_keys_jobs_lose_their_private_keys_at_once(
    keystore: Any,
) -> None:
    from vault.domain.algorithms import Purpose
    from vault.domain.policy import KeyPolicy
    from vault.service.imports import KeyImports
    from vault.service.keys import KeyManagement
    from vault.storage import open_stores

    stores = open_stores("sqlite://")
    clock = _Clock()
    try:
        policy = KeyPolicy(
            min_destroy_waiting_seconds=0,
            default_destroy_waiting_seconds=0,
            max_plaintext_bytes=65_536,
        )
        keys = KeyManagement(stores.metadata, keystore, policy, clock=clock)
        imports = KeyImports(keys, stores.imports, keystore, timedelta(hours=24), clock=clock)
        key = keys.create_key("destroyed", "k1", Purpose.ENCRYPT_DECRYPT)
        job = imports.create_import_job(str(key.name), None)
        assert imports.destroy_expired_jobs() == []
        keys.schedule_destruction(key.name, timedelta(0))
        assert [destroyed.name for destroyed in keys.destroy_due_keys()] == [key.name]
        assert [expired.name for expired in imports.destroy_expired_jobs()] == [job.name]
        assert job.token_label not in {obj[_label()] for obj in _import_objects(keystore)}
    finally:
        stores.close()
