"""KeyService end to end: the real server on a real SoftHSM token, driven through the SDK.

Results are checked independently where the vault hands out something checkable: public keys
are parsed and used by `cryptography`, ciphertext headers are decoded by hand, token objects
are looked up in the token from this process. Every key id is unique and every module works in
its own account, so the tests do not depend on each other or on their order.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import google_crc32c
import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from google.protobuf.field_mask_pb2 import FieldMask

from tests.support.api_calls import ensure_account, every_page, expect_error, new_account, new_id
from vault.client import VaultClient, VaultClientError
from vault.config import ServerSettings
from vault.gen.vault.v1 import key_service_pb2, key_service_pb2_grpc, resources_pb2

Purpose = resources_pb2.Purpose
Algorithm = resources_pb2.Algorithm
KeyState = resources_pb2.KeyState
VersionState = resources_pb2.VersionState

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DESTROY_TIMEOUT_SECONDS = 20.0
HOUR = timedelta(hours=1)


# -- helpers -------------------------------------------------------------------------------


def version_of(ciphertext: bytes) -> int:
    """The key version an Encrypt ciphertext names: format byte 0x01, then a big-endian u32."""
    fmt, number = struct.unpack_from(">BI", ciphertext)
    assert fmt == 0x01
    return int(number)


def load_pem(public_key: resources_pb2.PublicKey) -> Any:
    pem = public_key.pem.encode("utf-8")
    # The SDK checks pem_crc32c; check it here too, independently of the SDK.
    assert public_key.HasField("pem_crc32c")
    assert public_key.pem_crc32c.value == google_crc32c.value(pem)
    assert public_key.pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    return serialization.load_pem_public_key(pem)


def wait_destroyed(client: VaultClient, *names: str) -> None:
    deadline = time.monotonic() + DESTROY_TIMEOUT_SECONDS
    pending = set(names)
    while pending:
        pending = {n for n in pending if client.get_key(n).state != KeyState.KEY_STATE_DESTROYED}
        if not pending:
            return
        assert time.monotonic() < deadline, f"not destroyed after {DESTROY_TIMEOUT_SECONDS}s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def account(client: VaultClient) -> str:
    return new_account(client)


@pytest.fixture(scope="module")
def stub(server: Any) -> Iterator[key_service_pb2_grpc.KeyServiceStub]:
    """The raw stub, for requests the SDK cannot express (explicit update masks)."""
    with server.channel() as channel:
        yield key_service_pb2_grpc.KeyServiceStub(channel)


def raw_call(method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=30)
    except grpc.RpcError as error:
        raise VaultClientError.from_rpc_error(error) from error


# -- CreateKey and GetKey --------------------------------------------------------------------

DEFAULTS = [
    ("ENCRYPT_DECRYPT", "AES_256_GCM"),
    ("BUCKET_MASTER", "BUCKET_AES_256"),
    ("WRAP_UNWRAP", "AES_256_KWP"),
    ("SIGN_VERIFY", "EC_SIGN_P256_SHA256"),
    ("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1"),
    ("MAC", "HMAC_SHA256"),
]


@pytest.mark.parametrize(("purpose", "algorithm"), DEFAULTS)
def test_create_key_with_the_default_algorithm_of_every_purpose(
    client: VaultClient, account: str, purpose: str, algorithm: str
) -> None:
    key_id = new_id()
    before = datetime.now(UTC) - timedelta(seconds=5)
    key = client.create_key(account, key_id, purpose)
    name = f"{account}/keys/{key_id}"

    assert key.name == name
    assert key.purpose == Purpose.Value(f"PURPOSE_{purpose}")
    assert key.algorithm == Algorithm.Value(f"ALGORITHM_{algorithm}")
    assert key.state == KeyState.KEY_STATE_ENABLED
    assert key.primary_version == f"{name}/versions/1"
    assert not key.token_resident
    assert not key.HasField("destroy_scheduled_time")
    assert key.revocation_reason == ""
    created = key.create_time.ToDatetime(tzinfo=UTC)
    assert before <= created <= datetime.now(UTC) + timedelta(seconds=5)
    assert client.get_key(name) == key

    versions = client.list_key_versions(name)
    assert [v.name for v in versions] == [f"{name}/versions/1"]
    assert versions[0].state == VersionState.VERSION_STATE_ENABLED
    assert not versions[0].HasField("destroy_time")


EXPLICIT = [
    ("SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256"),
    ("SIGN_VERIFY", "RSA_SIGN_PKCS1_2048_SHA256"),
    ("SIGN_VERIFY", "EC_SIGN_P256_SHA256"),
    ("SIGN_VERIFY", "EC_SIGN_P384_SHA384"),
    ("SIGN_VERIFY", "EC_SIGN_ED25519"),
    ("ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA1"),
    ("MAC", "HMAC_SHA256"),
    ("MAC", "HMAC_SHA384"),
    ("MAC", "HMAC_SHA512"),
    ("WRAP_UNWRAP", "AES_256_KWP"),
    ("ENCRYPT_DECRYPT", "AES_256_GCM"),
]


def check_public_key(algorithm: str, public: Any) -> None:
    """The public key matches the algorithm: type, size or curve."""
    if algorithm.startswith("RSA_"):
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == 2048
        assert public.public_numbers().e == 65537
    elif algorithm == "EC_SIGN_P256_SHA256":
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert isinstance(public.curve, ec.SECP256R1)
    elif algorithm == "EC_SIGN_P384_SHA384":
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert isinstance(public.curve, ec.SECP384R1)
    else:
        assert algorithm == "EC_SIGN_ED25519"
        assert isinstance(public, ed25519.Ed25519PublicKey)


@pytest.mark.parametrize(("purpose", "algorithm"), EXPLICIT)
def test_create_key_with_an_explicit_algorithm(
    client: VaultClient, account: str, purpose: str, algorithm: str
) -> None:
    key = client.create_key(account, new_id(), purpose, algorithm, description="explicit")
    assert key.purpose == Purpose.Value(f"PURPOSE_{purpose}")
    assert key.algorithm == Algorithm.Value(f"ALGORITHM_{algorithm}")
    assert key.state == KeyState.KEY_STATE_ENABLED
    assert key.description == "explicit"
    # Ed25519 keys cannot be wrapped by SoftHSM: the vault keeps them in the token by itself.
    resident = algorithm == "EC_SIGN_ED25519"
    assert key.token_resident is resident
    (version,) = client.list_key_versions(key.name)
    assert version.token_resident is resident

    if purpose in ("SIGN_VERIFY", "ASYMMETRIC_DECRYPT"):
        public_key = client.get_public_key(key.name)
        assert public_key.name == key.primary_version
        assert public_key.algorithm == key.algorithm
        check_public_key(algorithm, load_pem(public_key))
    else:
        expect_error(PRECONDITION, "WRONG_KEY_PURPOSE", lambda: client.get_public_key(key.name))


def test_token_resident_on_request_adds_exactly_one_token_object(
    client: VaultClient, account: str, keystore: Any
) -> None:
    before = keystore.token_labels()
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT", token_resident=True)
    added = keystore.token_labels() - before
    assert key.token_resident
    assert len(added) == 1
    sealed = client.encrypt(key.name, b"resident", aad=b"a")
    assert client.decrypt(key.name, sealed.ciphertext, aad=b"a").plaintext == b"resident"

    wrapped_before = keystore.token_labels()
    client.create_key(account, new_id(), "ENCRYPT_DECRYPT")
    # A wrapped (non-resident) key leaves no object in the token.
    assert keystore.token_labels() - wrapped_before == set()


@pytest.mark.parametrize(
    ("purpose", "algorithm"),
    [
        ("SIGN_VERIFY", "AES_256_GCM"),
        ("ENCRYPT_DECRYPT", "HMAC_SHA256"),
        ("MAC", "EC_SIGN_ED25519"),
        ("WRAP_UNWRAP", "AES_256_GCM"),
        ("ASYMMETRIC_DECRYPT", "RSA_SIGN_PSS_2048_SHA256"),
        ("BUCKET_MASTER", "AES_256_KWP"),
    ],
)
def test_create_key_with_an_algorithm_of_another_purpose_is_refused(
    client: VaultClient, account: str, purpose: str, algorithm: str
) -> None:
    key_id = new_id()
    expect_error(
        INVALID,
        "UNSUPPORTED_ALGORITHM",
        lambda: client.create_key(account, key_id, purpose, algorithm),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: client.get_key(f"{account}/keys/{key_id}")
    )


def test_oaep_sha256_is_not_offered_by_the_token(client: VaultClient, account: str) -> None:
    # SoftHSM 2.6.1 lists RSA-OAEP but accepts only SHA-1: the vault must not pretend.
    key_id = new_id()
    error = expect_error(
        INVALID,
        "UNSUPPORTED_ALGORITHM",
        lambda: client.create_key(
            account, key_id, "ASYMMETRIC_DECRYPT", "RSA_DECRYPT_OAEP_2048_SHA256"
        ),
    )
    assert error.metadata.get("algorithm") == "RSA_DECRYPT_OAEP_2048_SHA256"
    expect_error(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: client.get_key(f"{account}/keys/{key_id}")
    )


def test_create_key_without_purpose_is_refused(client: VaultClient, account: str) -> None:
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.create_key(account, new_id(), 0))


def test_create_key_with_a_taken_name_is_refused(client: VaultClient, account: str) -> None:
    key_id = new_id()
    first = client.create_key(account, key_id, "ENCRYPT_DECRYPT")
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_key(account, key_id, "ENCRYPT_DECRYPT"),
    )
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_key(account, key_id, "MAC"),
    )
    # The existing key is untouched.
    assert client.get_key(first.name) == first
    assert len(client.list_key_versions(first.name)) == 1
    # The same key id in another account is another key.
    other = client.create_key(new_account(client), key_id, "MAC")
    assert other.name != first.name


def test_create_key_refuses_an_account_that_does_not_exist(client: VaultClient) -> None:
    missing = new_account()  # a name only: never created
    error = expect_error(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: client.create_key(missing, "k", "MAC")
    )
    assert error.metadata == {"name": missing}
    assert missing in error.message
    assert list(client.list_keys(missing).keys) == []
    # Once the account exists, the same request succeeds.
    client.create_account(missing.removeprefix("accounts/"))
    assert client.create_key(missing, "k", "MAC").name == f"{missing}/keys/k"


def test_create_key_is_idempotent_with_a_request_id(client: VaultClient) -> None:
    fresh = new_account(client)
    key_id = new_id()
    request_id = str(uuid4())
    first = client.create_key(fresh, key_id, "SIGN_VERIFY", request_id=request_id)
    again = client.create_key(fresh, key_id, "SIGN_VERIFY", request_id=request_id)
    assert again == first
    # No second key and no second version: the retry returned what the first call made.
    assert [k.name for k in client.iter_keys(fresh)] == [first.name]
    assert len(client.list_key_versions(first.name)) == 1
    assert client.get_public_key(first.name).pem == client.get_public_key(again.name).pem

    # The same request id for another key id is a client bug, not a retry.
    other_id = new_id()
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_key(fresh, other_id, "SIGN_VERIFY", request_id=request_id),
    )
    assert error.metadata.get("name") == first.name
    assert [k.name for k in client.iter_keys(fresh)] == [first.name]

    # Without a request id a repeat is a duplicate.
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_key(fresh, key_id, "SIGN_VERIFY"),
    )


def test_create_key_retries_in_flight_at_once_return_the_same_key(client: VaultClient) -> None:
    # A client whose deadline expires retries while the first call may still be running on
    # the server: the overlapping calls must all get the one key, not ALREADY_EXISTS.
    fresh = new_account(client)
    key_id = new_id()
    request_id = str(uuid4())

    def create() -> str:
        try:
            return client.create_key(
                fresh, key_id, "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256", request_id=request_id
            ).name
        except VaultClientError as error:
            return str(error)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: create(), range(4)))
    assert results == [f"{fresh}/keys/{key_id}"] * 4
    assert [k.name for k in client.iter_keys(fresh)] == [f"{fresh}/keys/{key_id}"]


def test_create_key_refuses_a_request_id_over_128_characters(
    client: VaultClient, account: str
) -> None:
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.create_key(account, new_id(), "MAC", request_id="r" * 129),
    )


# -- ListKeys ----------------------------------------------------------------------------------


def test_list_keys_pages_through_every_key_once(client: VaultClient) -> None:
    fresh = new_account(client)
    created = {client.create_key(fresh, new_id(), "ENCRYPT_DECRYPT").name for _ in range(7)}

    pages: list[list[str]] = []
    token = ""
    while True:
        page = client.list_keys(fresh, page_size=3, page_token=token)
        pages.append([k.name for k in page.keys])
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 10, "pagination does not end"
    assert [len(p) for p in pages] == [3, 3, 1]
    listed = [name for page in pages for name in page]
    assert len(listed) == len(set(listed)) == 7
    assert set(listed) == created

    # The default page size holds them all; iter_keys agrees.
    assert {k.name for k in client.list_keys(fresh).keys} == created
    assert {k.name for k in client.iter_keys(fresh, page_size=2)} == created
    # Another account sees none of them.
    assert list(client.list_keys(new_account()).keys) == []


def test_a_listed_key_is_what_get_key_returns(client: VaultClient) -> None:
    """ListKeys builds its messages on its own path (no Key per listed key); every field of
    each listed key must still be GetKey's, whichever fields a key sets."""
    fresh = new_account(client)

    def make(purpose: str, algorithm: str | None = None, **options: Any) -> str:
        return client.create_key(fresh, new_id(), purpose, algorithm, **options).name

    plain = make("ENCRYPT_DECRYPT")
    labelled = make("MAC", labels={"team": "blue", "env": "prod-é"}, description="ünïcode ✓")
    resident = make("ENCRYPT_DECRYPT", token_resident=True, description="in the token")
    rotated = make("SIGN_VERIFY", "EC_SIGN_P256_SHA256", labels={"tier": "gold"})
    client.rotate_key(rotated)
    disabled = make("WRAP_UNWRAP")
    client.disable_key(disabled)
    revoked = make("ENCRYPT_DECRYPT", labels={"a": "1"})
    client.revoke_key(revoked, "incident 42", "COMPROMISED")
    revoked_without_code = make("MAC")
    client.revoke_key(revoked_without_code, "no longer needed")
    scheduled = make("ENCRYPT_DECRYPT", description="going")
    client.schedule_key_destruction(scheduled, HOUR)
    revoked_then_scheduled = make("MAC", labels={"b": "2"})
    client.revoke_key(revoked_then_scheduled, "superseded by k2", "SUPERSEDED")
    client.schedule_key_destruction(revoked_then_scheduled, HOUR)
    names = {
        plain,
        labelled,
        resident,
        rotated,
        disabled,
        revoked,
        revoked_without_code,
        scheduled,
        revoked_then_scheduled,
    }

    listed = list(client.iter_keys(fresh, page_size=4))
    assert [key.name for key in listed] == sorted(names)
    for key in listed:
        assert key == client.get_key(key.name), key.name
    by_name = {key.name: key for key in listed}
    # The cases above set what they should (so the comparison covers every optional field).
    assert by_name[resident].token_resident
    assert by_name[rotated].primary_version == f"{rotated}/versions/2"
    assert dict(by_name[labelled].labels) == {"team": "blue", "env": "prod-é"}
    assert by_name[revoked].revocation_reason_code == resources_pb2.REVOCATION_REASON_COMPROMISED
    assert by_name[revoked_without_code].HasField("revoke_time")
    assert by_name[scheduled].HasField("destroy_scheduled_time")
    both = by_name[revoked_then_scheduled]
    assert both.HasField("revoke_time") and both.HasField("destroy_scheduled_time")
    assert both.revocation_reason == "superseded by k2"


def test_a_listed_key_is_never_stale_after_it_changed(client: VaultClient) -> None:
    """Each worker keeps the serialised form of the keys it listed: a key changed since
    (labels, description, rotation, disable, revocation, scheduled destruction) is listed as
    GetKey now shows it, by whichever worker answers."""
    fresh = new_account(client)
    names = [client.create_key(fresh, new_id(), "ENCRYPT_DECRYPT").name for _ in range(6)]
    relabelled, described, rotated, disabled, revoked, scheduled = names

    def listing() -> list[resources_pb2.Key]:
        return list(client.iter_keys(fresh, page_size=4))

    def assert_listed_as_get_key_shows() -> None:
        # Several rounds, so that both workers answer (each keeps its own parts).
        for _ in range(4):
            listed = listing()
            assert [key.name for key in listed] == sorted(names)
            for key in listed:
                assert key == client.get_key(key.name), key.name

    assert_listed_as_get_key_shows()
    client.update_key(relabelled, labels={"team": "red"})
    client.update_key(described, description="changed")
    client.rotate_key(rotated)
    client.disable_key(disabled)
    client.revoke_key(revoked, "incident 7", "COMPROMISED")
    client.schedule_key_destruction(scheduled, HOUR)
    assert_listed_as_get_key_shows()
    by_name = {key.name: key for key in listing()}
    assert dict(by_name[relabelled].labels) == {"team": "red"}
    assert by_name[described].description == "changed"
    assert by_name[rotated].primary_version == f"{rotated}/versions/2"
    assert by_name[disabled].state == resources_pb2.KEY_STATE_DISABLED
    assert by_name[revoked].state == resources_pb2.KEY_STATE_REVOKED
    assert by_name[scheduled].state == resources_pb2.KEY_STATE_DESTROY_SCHEDULED
    # Changed back: labels as they were, enabled again.
    client.update_key(relabelled, labels={})
    client.enable_key(disabled)
    assert_listed_as_get_key_shows()
    assert not listing()[names.index(relabelled)].labels


def test_list_keys_sends_the_canonical_bytes_of_its_response(
    client: VaultClient, server: Any
) -> None:
    """ListKeys' response leaves the server as bytes joined from parts: they must be what
    protobuf serialises the response they parse to (a page token included). Map entries
    (labels) have no fixed order on the wire, so the bytes are compared by size, which
    anything repeated or left over would change, and by what they parse to."""
    fresh = new_account(client)
    for labels in ({}, {"team": "blue"}, {"b": "2", "a": "1"}):
        client.create_key(fresh, new_id(), "MAC", labels=labels, description="d" * 200)
    request = key_service_pb2.ListKeysRequest(parent=fresh, page_size=2)
    with server.channel() as channel:
        raw = channel.unary_unary(
            "/vault.v1.KeyService/ListKeys",
            request_serializer=key_service_pb2.ListKeysRequest.SerializeToString,
        )
        for _ in range(2):  # parts made, then parts kept
            data = raw(request, timeout=30)
            parsed = key_service_pb2.ListKeysResponse.FromString(data)
            assert len(parsed.keys) == 2 and parsed.next_page_token
            assert parsed.ByteSize() == len(data)
            assert list(parsed.keys) == [client.get_key(key.name) for key in parsed.keys]


# Every label a key may have (64), each key and value 63 characters: about 8.5 KB a key.
MANY_LABELS = {f"l{i:02d}-{'x' * 59}": "v" * 63 for i in range(64)}


def test_list_keys_pages_of_large_keys_fit_the_largest_message(client: VaultClient) -> None:
    """1,000 keys with every label and the longest description would make a page of about
    10 MB, ten times server.max_message_bytes: a page ends after the last key that fits,
    and its token resumes right after it."""
    max_bytes = ServerSettings().max_message_bytes
    fresh = new_account(client)
    with ThreadPoolExecutor(4) as pool:
        created = set(
            pool.map(
                lambda _: (
                    client.create_key(
                        fresh, new_id(), "MAC", labels=MANY_LABELS, description="d" * 1024
                    ).name
                ),
                range(150),
            )
        )
    pages: list[key_service_pb2.ListKeysResponse] = every_page(
        lambda token: client.list_keys(fresh, page_size=1000, page_token=token)
    )
    listed = [key.name for page in pages for key in page.keys]
    assert len(listed) == len(set(listed)) == len(created)
    assert set(listed) == created
    assert listed == sorted(listed)
    assert len(pages) > 1 and all(page.keys for page in pages)
    assert all(page.ByteSize() <= max_bytes for page in pages)
    assert {k.name for k in client.iter_keys(fresh, page_size=1000)} == created


def test_list_keys_with_exact_page_multiple_ends_cleanly(client: VaultClient) -> None:
    fresh = new_account(client)
    for _ in range(4):
        client.create_key(fresh, new_id(), "MAC")
    first = client.list_keys(fresh, page_size=2)
    second = client.list_keys(fresh, page_size=2, page_token=first.next_page_token)
    assert len(first.keys) == len(second.keys) == 2
    assert second.next_page_token == ""


def test_list_keys_refuses_a_bad_page_token_and_negative_page_size(
    client: VaultClient, account: str
) -> None:
    expect_error(
        INVALID, "INVALID_ARGUMENT", lambda: client.list_keys(account, page_token="%%not-a-token")
    )
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.list_keys(account, page_size=-1))


def test_list_keys_filters_by_purpose_state_and_label(client: VaultClient) -> None:
    fresh = new_account(client)

    def make(purpose: str, labels: dict[str, str]) -> str:
        return client.create_key(fresh, new_id(), purpose, labels=labels).name

    enc_blue = make("ENCRYPT_DECRYPT", {"team": "blue"})
    enc_red = make("ENCRYPT_DECRYPT", {"team": "red", "env": "prod"})
    mac_blue = make("MAC", {"team": "blue"})
    mac_plain = make("MAC", {})
    wrap_env = make("WRAP_UNWRAP", {"env": "dev"})
    client.disable_key(enc_red)
    client.disable_key(mac_plain)
    everything = {enc_blue, enc_red, mac_blue, mac_plain, wrap_env}

    def names(**filters: Any) -> set[str]:
        return {k.name for k in client.iter_keys(fresh, page_size=2, **filters)}

    assert names() == everything
    assert names(purpose="ENCRYPT_DECRYPT") == {enc_blue, enc_red}
    assert names(purpose="MAC") == {mac_blue, mac_plain}
    assert names(purpose="SIGN_VERIFY") == set()
    assert names(state="DISABLED") == {enc_red, mac_plain}
    assert names(state="ENABLED") == {enc_blue, mac_blue, wrap_env}
    assert names(state="REVOKED") == set()
    assert names(label_key="team") == {enc_blue, enc_red, mac_blue}
    assert names(label_key="team", label_value="blue") == {enc_blue, mac_blue}
    assert names(label_key="env") == {enc_red, wrap_env}
    assert names(label_key="env", label_value="staging") == set()
    assert names(label_key="nobody") == set()
    # Filters combine.
    assert names(purpose="ENCRYPT_DECRYPT", state="ENABLED") == {enc_blue}
    assert names(purpose="MAC", label_key="team", label_value="blue") == {mac_blue}
    assert names(state="DISABLED", label_key="env", label_value="prod") == {enc_red}


# -- UpdateKey ---------------------------------------------------------------------------------


def test_update_key_labels_and_description(client: VaultClient, account: str) -> None:
    key = client.create_key(account, new_id(), "MAC", labels={"team": "blue"}, description="first")

    relabelled = client.update_key(key.name, labels={"team": "red", "env": "prod"})
    assert dict(relabelled.labels) == {"team": "red", "env": "prod"}
    assert relabelled.description == "first"
    assert relabelled.update_time.ToDatetime() >= key.update_time.ToDatetime()
    assert relabelled.create_time == key.create_time
    assert relabelled.purpose == key.purpose and relabelled.algorithm == key.algorithm

    described = client.update_key(key.name, description="second")
    assert described.description == "second"
    assert dict(described.labels) == {"team": "red", "env": "prod"}

    both = client.update_key(key.name, labels={"a": "1"}, description="third")
    assert (dict(both.labels), both.description) == ({"a": "1"}, "third")

    # Named in the mask but empty: cleared.
    cleared = client.update_key(key.name, labels={}, description="")
    assert (dict(cleared.labels), cleared.description) == ({}, "")
    assert client.get_key(key.name) == cleared


def test_update_key_mask_semantics(
    client: VaultClient, account: str, stub: key_service_pb2_grpc.KeyServiceStub
) -> None:
    key = client.create_key(account, new_id(), "MAC", labels={"x": "1"}, description="keep")

    # No mask: only the fields that are set in the request change.
    request = key_service_pb2.UpdateKeyRequest(
        key=resources_pb2.Key(name=key.name, labels={"y": "2"})
    )
    updated = raw_call(stub.UpdateKey, request)
    assert (dict(updated.labels), updated.description) == ({"y": "2"}, "keep")

    # "*" names both: an empty description in the request clears it.
    request = key_service_pb2.UpdateKeyRequest(
        key=resources_pb2.Key(name=key.name, labels={"z": "3"}),
        update_mask=FieldMask(paths=["*"]),
    )
    updated = raw_call(stub.UpdateKey, request)
    assert (dict(updated.labels), updated.description) == ({"z": "3"}, "")

    # Output-only and fixed fields are not updatable.
    for path in ("purpose", "state", "algorithm"):
        request = key_service_pb2.UpdateKeyRequest(
            key=resources_pb2.Key(name=key.name, purpose=Purpose.PURPOSE_SIGN_VERIFY),
            update_mask=FieldMask(paths=[path]),
        )
        expect_error(INVALID, "INVALID_ARGUMENT", lambda r=request: raw_call(stub.UpdateKey, r))
    # Nothing to update at all.
    request = key_service_pb2.UpdateKeyRequest(key=resources_pb2.Key(name=key.name))
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: raw_call(stub.UpdateKey, request))
    assert client.get_key(key.name).purpose == Purpose.PURPOSE_MAC


def test_update_key_validates_labels_and_description(client: VaultClient, account: str) -> None:
    key = client.create_key(account, new_id(), "MAC", labels={"ok": "1"})
    bad_updates: list[dict[str, Any]] = [
        {"labels": {"Upper": "x"}},
        {"labels": {"1digit": "x"}},
        {"labels": {"ok": "v" * 64}},
        {"labels": {f"l{i}": "x" for i in range(65)}},
        {"description": "d" * 1025},
    ]
    for update in bad_updates:
        with pytest.raises(VaultClientError) as caught:
            client.update_key(key.name, **update)
        assert caught.value.code == INVALID, update
    assert dict(client.get_key(key.name).labels) == {"ok": "1"}
    # The limits themselves are accepted.
    at_limit = client.update_key(
        key.name, labels={f"l{i}": "v" * 63 for i in range(64)}, description="d" * 1024
    )
    assert len(at_limit.labels) == 64 and len(at_limit.description) == 1024


# -- RotateKey, ListKeyVersions, GetPublicKey ----------------------------------------------


def test_rotate_encryption_key(client: VaultClient, account: str) -> None:
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT")
    v1, v2 = f"{key.name}/versions/1", f"{key.name}/versions/2"
    old = client.encrypt(key.name, b"before rotation", aad=b"ctx")
    assert old.key_version == v1
    assert version_of(old.ciphertext) == 1

    rotated = client.rotate_key(key.name)
    assert rotated.primary_version == v2
    assert rotated.state == KeyState.KEY_STATE_ENABLED
    assert client.get_key(key.name).primary_version == v2

    versions = client.list_key_versions(key.name)
    assert [v.name for v in versions] == [v1, v2]
    assert all(v.state == VersionState.VERSION_STATE_ENABLED for v in versions)
    assert versions[0].create_time.ToDatetime() <= versions[1].create_time.ToDatetime()

    # Old ciphertexts still decrypt with the version they name.
    opened = client.decrypt(key.name, old.ciphertext, aad=b"ctx")
    assert (opened.plaintext, opened.key_version) == (b"before rotation", v1)
    # New ciphertexts use and name the new primary version.
    new = client.encrypt(key.name, b"after rotation", aad=b"ctx")
    assert new.key_version == v2
    assert version_of(new.ciphertext) == 2
    opened = client.decrypt(key.name, new.ciphertext, aad=b"ctx")
    assert (opened.plaintext, opened.key_version) == (b"after rotation", v2)
    # A version can still be named explicitly.
    explicit = client.encrypt(v1, b"explicitly v1")
    assert explicit.key_version == v1 and version_of(explicit.ciphertext) == 1
    assert client.decrypt(key.name, explicit.ciphertext).plaintext == b"explicitly v1"

    third = client.rotate_key(key.name)
    assert third.primary_version == f"{key.name}/versions/3"
    assert len(client.list_key_versions(key.name)) == 3


def test_rotate_signing_key_and_get_public_key_per_version(
    client: VaultClient, account: str
) -> None:
    key = client.create_key(account, new_id(), "SIGN_VERIFY", "EC_SIGN_P384_SHA384")
    v1, v2 = f"{key.name}/versions/1", f"{key.name}/versions/2"
    signed_v1 = client.sign(key.name, message=b"signed by v1")
    assert signed_v1.key_version == v1
    pem_v1 = client.get_public_key(key.name)
    assert pem_v1.name == v1

    client.rotate_key(key.name)
    pem_primary = client.get_public_key(key.name)
    pem_v2 = client.get_public_key(v2)
    assert pem_primary.name == pem_v2.name == v2
    assert pem_primary.pem == pem_v2.pem
    assert client.get_public_key(v1) == pem_v1
    assert pem_v1.pem != pem_v2.pem

    public_v1, public_v2 = load_pem(pem_v1), load_pem(pem_v2)
    check_public_key("EC_SIGN_P384_SHA384", public_v2)
    # The old signature verifies with the v1 public key only.
    public_v1.verify(signed_v1.signature, b"signed by v1", ec.ECDSA(hashes.SHA384()))
    with pytest.raises(InvalidSignature):
        public_v2.verify(signed_v1.signature, b"signed by v1", ec.ECDSA(hashes.SHA384()))
    assert client.verify(v1, signed_v1.signature, message=b"signed by v1").valid
    assert not client.verify(v2, signed_v1.signature, message=b"signed by v1").valid

    signed_v2 = client.sign(key.name, message=b"signed by v2")
    assert signed_v2.key_version == v2
    public_v2.verify(signed_v2.signature, b"signed by v2", ec.ECDSA(hashes.SHA384()))
    # An older version still signs when named explicitly.
    signed_again = client.sign(v1, message=b"v1 by name")
    assert signed_again.key_version == v1
    public_v1.verify(signed_again.signature, b"v1 by name", ec.ECDSA(hashes.SHA384()))

    expect_error(
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        lambda: client.get_public_key(f"{key.name}/versions/3"),
    )


def test_get_public_key_of_rsa_and_oaep_keys(client: VaultClient, account: str) -> None:
    signer = client.create_key(account, new_id(), "SIGN_VERIFY", "RSA_SIGN_PSS_2048_SHA256")
    public_key = client.get_public_key(f"{signer.name}/versions/1")
    assert public_key.algorithm == Algorithm.ALGORITHM_RSA_SIGN_PSS_2048_SHA256
    public = load_pem(public_key)
    signed = client.sign(signer.name, message=b"pss")
    public.verify(
        signed.signature,
        b"pss",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )

    decrypter = client.create_key(account, new_id(), "ASYMMETRIC_DECRYPT")
    public = load_pem(client.get_public_key(decrypter.name))
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    ciphertext = public.encrypt(b"to the vault", oaep)
    assert client.asymmetric_decrypt(decrypter.name, ciphertext).plaintext == b"to the vault"


def test_rotate_token_resident_key_adds_a_token_object(
    client: VaultClient, account: str, keystore: Any
) -> None:
    before = keystore.token_labels()
    key = client.create_key(account, new_id(), "SIGN_VERIFY", "EC_SIGN_ED25519")
    after_create = keystore.token_labels()
    client.rotate_key(key.name)
    after_rotate = keystore.token_labels()
    assert len(after_create - before) == 1
    assert len(after_rotate - after_create) == 1
    versions = client.list_key_versions(key.name)
    assert [v.token_resident for v in versions] == [True, True]
    signed = client.sign(key.name, message=b"v2")
    assert signed.key_version == f"{key.name}/versions/2"
    load_pem(client.get_public_key(key.name)).verify(signed.signature, b"v2")


# -- state machine -----------------------------------------------------------------------------


def test_disable_and_enable(client: VaultClient, account: str) -> None:
    enc = client.create_key(account, new_id(), "ENCRYPT_DECRYPT")
    sig = client.create_key(account, new_id(), "SIGN_VERIFY")
    sealed = client.encrypt(enc.name, b"data")
    signed = client.sign(sig.name, message=b"msg")

    for name in (enc.name, sig.name):
        disabled = client.disable_key(name)
        assert disabled.state == KeyState.KEY_STATE_DISABLED
        assert client.get_key(name).state == KeyState.KEY_STATE_DISABLED
        # Disabling twice is a no-op, not an error.
        assert client.disable_key(name).state == KeyState.KEY_STATE_DISABLED

    refused: list[Callable[[], object]] = [
        lambda: client.encrypt(enc.name, b"data"),
        lambda: client.decrypt(enc.name, sealed.ciphertext),
        lambda: client.generate_data_key(enc.name),
        lambda: client.rotate_key(enc.name),
        lambda: client.sign(sig.name, message=b"msg"),
        lambda: client.verify(sig.name, signed.signature, message=b"msg"),
        lambda: client.rotate_key(sig.name),
    ]
    for call in refused:
        error = expect_error(PRECONDITION, "WRONG_KEY_STATE", call)
        assert error.metadata.get("state") == "DISABLED"
    # The public half of a disabled key is still public.
    load_pem(client.get_public_key(sig.name))

    for name in (enc.name, sig.name):
        assert client.enable_key(name).state == KeyState.KEY_STATE_ENABLED
        assert client.enable_key(name).state == KeyState.KEY_STATE_ENABLED
    assert client.decrypt(enc.name, sealed.ciphertext).plaintext == b"data"
    assert client.encrypt(enc.name, b"again").key_version == f"{enc.name}/versions/1"
    assert client.verify(sig.name, signed.signature, message=b"msg").valid
    client.sign(sig.name, message=b"again")


def test_state_changes_are_seen_by_every_worker(
    client: VaultClient, account: str, server: Any
) -> None:
    # The server runs several worker processes behind one port; channels with their own
    # connections are spread over them. Each must honour a state change made through another.
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    options = [("grpc.use_local_subchannel_pool", 1)]
    others = [server.client(options=options) for _ in range(8)]
    try:
        sealed = [other.encrypt(key, b"from a fresh connection").ciphertext for other in others]
        client.disable_key(key)
        for other in others:
            expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda o=other: o.encrypt(key, b"x"))
        client.enable_key(key)
        for other, ciphertext in zip(others, reversed(sealed), strict=True):
            assert other.decrypt(key, ciphertext).plaintext == b"from a fresh connection"
    finally:
        for other in others:
            other.close()


def test_revoke(client: VaultClient, account: str) -> None:
    enc = client.create_key(account, new_id(), "ENCRYPT_DECRYPT")
    sig = client.create_key(account, new_id(), "SIGN_VERIFY", "RSA_SIGN_PKCS1_2048_SHA256")
    wrap = client.create_key(account, new_id(), "WRAP_UNWRAP")
    mac = client.create_key(account, new_id(), "MAC")
    sealed = client.encrypt(enc.name, b"protected before", aad=b"x")
    signed = client.sign(sig.name, message=b"signed before")
    wrapped = client.wrap_key(wrap.name, b"k" * 32)
    tag = client.generate_mac(mac.name, b"authenticated before")

    # A reason is required.
    for reason in ("", "   "):
        expect_error(INVALID, "INVALID_ARGUMENT", lambda r=reason: client.revoke_key(enc.name, r))
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.revoke_key(enc.name, "r" * 1025))
    assert client.get_key(enc.name).state == KeyState.KEY_STATE_ENABLED

    for key in (enc, sig, wrap, mac):
        revoked = client.revoke_key(key.name, "incident 1234")
        assert revoked.state == KeyState.KEY_STATE_REVOKED
        assert revoked.revocation_reason == "incident 1234"
        assert client.get_key(key.name).revocation_reason == "incident 1234"

    # Nothing new is made...
    for call in [
        lambda: client.encrypt(enc.name, b"new"),
        lambda: client.generate_data_key(enc.name),
        lambda: client.re_encrypt(enc.name, sealed.ciphertext, source_aad=b"x"),
        lambda: client.sign(sig.name, message=b"new"),
        lambda: client.wrap_key(wrap.name, b"k" * 32),
        lambda: client.generate_mac(mac.name, b"new"),
        lambda: client.rotate_key(enc.name),
    ]:
        expect_error(PRECONDITION, "WRONG_KEY_STATE", call)
    # ...but what was protected before stays readable and checkable.
    assert client.decrypt(enc.name, sealed.ciphertext, aad=b"x").plaintext == b"protected before"
    assert client.verify(sig.name, signed.signature, message=b"signed before").valid
    assert not client.verify(sig.name, signed.signature, message=b"forged").valid
    assert client.unwrap_key(wrap.name, wrapped.wrapped_key).key_material == b"k" * 32
    assert client.verify_mac(mac.name, b"authenticated before", tag.mac).valid
    load_pem(client.get_public_key(sig.name))

    # Revocation is irreversible.
    for call in [
        lambda: client.enable_key(enc.name),
        lambda: client.disable_key(enc.name),
        lambda: client.revoke_key(enc.name, "again"),
        lambda: client.cancel_key_destruction(enc.name),
    ]:
        expect_error(PRECONDITION, "WRONG_KEY_STATE", call)
    assert client.get_key(enc.name).state == KeyState.KEY_STATE_REVOKED


def test_revoke_a_disabled_key(client: VaultClient, account: str) -> None:
    key = client.create_key(account, new_id(), "MAC")
    client.disable_key(key.name)
    assert client.revoke_key(key.name, "superseded").state == KeyState.KEY_STATE_REVOKED


def test_schedule_and_cancel_destruction(client: VaultClient, account: str) -> None:
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT")
    sealed = client.encrypt(key.name, b"survives a cancelled destruction")

    before = datetime.now(UTC)
    scheduled = client.schedule_key_destruction(key.name, HOUR)
    assert scheduled.state == KeyState.KEY_STATE_DESTROY_SCHEDULED
    when = scheduled.destroy_scheduled_time.ToDatetime(tzinfo=UTC)
    assert before + HOUR - timedelta(seconds=5) <= when <= datetime.now(UTC) + HOUR
    assert client.get_key(key.name) == scheduled

    for call in [
        lambda: client.encrypt(key.name, b"x"),
        lambda: client.decrypt(key.name, sealed.ciphertext),
        lambda: client.generate_data_key(key.name),
        lambda: client.rotate_key(key.name),
        lambda: client.enable_key(key.name),
        # Neither a disable nor a revocation may silently call the destruction off.
        lambda: client.disable_key(key.name),
        lambda: client.revoke_key(key.name, "compromised while scheduled"),
        lambda: client.schedule_key_destruction(key.name, HOUR),
    ]:
        expect_error(PRECONDITION, "WRONG_KEY_STATE", call)
    assert client.get_key(key.name).state == KeyState.KEY_STATE_DESTROY_SCHEDULED
    listed = {k.name for k in client.iter_keys(account, state="DESTROY_SCHEDULED")}
    assert key.name in listed

    cancelled = client.cancel_key_destruction(key.name)
    assert cancelled.state == KeyState.KEY_STATE_DISABLED
    assert not cancelled.HasField("destroy_scheduled_time")
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.cancel_key_destruction(key.name))
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.encrypt(key.name, b"x"))
    assert client.enable_key(key.name).state == KeyState.KEY_STATE_ENABLED
    assert client.decrypt(key.name, sealed.ciphertext).plaintext == (
        b"survives a cancelled destruction"
    )


def test_cancelled_destruction_of_a_revoked_key_returns_it_revoked(
    client: VaultClient, account: str
) -> None:
    key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT")
    sealed = client.encrypt(key.name, b"old")
    client.revoke_key(key.name, "compromised")
    scheduled = client.schedule_key_destruction(key.name, HOUR)
    assert scheduled.state == KeyState.KEY_STATE_DESTROY_SCHEDULED
    # A key waiting for destruction decrypts nothing, revoked before or not.
    expect_error(
        PRECONDITION, "WRONG_KEY_STATE", lambda: client.decrypt(key.name, sealed.ciphertext)
    )
    restored = client.cancel_key_destruction(key.name)
    assert restored.state == KeyState.KEY_STATE_REVOKED
    assert restored.revocation_reason == "compromised"
    assert client.decrypt(key.name, sealed.ciphertext).plaintext == b"old"
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.enable_key(key.name))


def test_schedule_destruction_refuses_a_negative_waiting_period(
    client: VaultClient, account: str
) -> None:
    key = client.create_key(account, new_id(), "MAC")
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.schedule_key_destruction(key.name, timedelta(seconds=-1)),
    )
    assert client.get_key(key.name).state == KeyState.KEY_STATE_ENABLED


@dataclass(frozen=True)
class Destroyed:
    """Keys taken through the destruction job, and what they protected before."""

    enc: str
    sig: str
    ciphertext: bytes
    signature: bytes
    resident_labels: set[str]


@pytest.fixture(scope="module")
def destroyed(client: VaultClient, account: str, keystore: Any) -> Destroyed:
    enc = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    before = keystore.token_labels()
    sig = client.create_key(account, new_id(), "SIGN_VERIFY", "EC_SIGN_ED25519").name
    client.rotate_key(sig)
    resident = keystore.token_labels() - before
    assert len(resident) == 2, "an Ed25519 key with two versions has two token objects"
    ciphertext = client.encrypt(enc, b"gone with the key").ciphertext
    signature = client.sign(sig, message=b"signed").signature

    # Scheduled, cancelled (back to DISABLED), scheduled again with a short wait: destroyed.
    client.schedule_key_destruction(sig, HOUR)
    assert client.cancel_key_destruction(sig).state == KeyState.KEY_STATE_DISABLED
    client.schedule_key_destruction(sig, timedelta(0))
    client.schedule_key_destruction(enc, timedelta(seconds=1))
    wait_destroyed(client, enc, sig)
    return Destroyed(enc, sig, ciphertext, signature, resident)


def test_destroyed_key_is_a_tombstone(client: VaultClient, destroyed: Destroyed) -> None:
    for name in (destroyed.enc, destroyed.sig):
        key = client.get_key(name)
        assert key.state == KeyState.KEY_STATE_DESTROYED
        versions = client.list_key_versions(name)
        assert versions, "the versions stay listed"
        for version in versions:
            assert version.state == VersionState.VERSION_STATE_DESTROYED
            assert version.HasField("destroy_time")
    account = destroyed.enc.rsplit("/keys/", 1)[0]
    listed = {k.name for k in client.iter_keys(account, state="DESTROYED")}
    assert {destroyed.enc, destroyed.sig} <= listed


def test_destroyed_key_refuses_every_operation(client: VaultClient, destroyed: Destroyed) -> None:
    enc, sig = destroyed.enc, destroyed.sig
    for call in [
        lambda: client.encrypt(enc, b"x"),
        lambda: client.decrypt(enc, destroyed.ciphertext),
        lambda: client.generate_data_key(enc, include_plaintext=True),
        lambda: client.re_encrypt(enc, destroyed.ciphertext),
        lambda: client.encrypt(f"{enc}/versions/1", b"x"),
        lambda: client.sign(sig, message=b"x"),
        lambda: client.verify(sig, destroyed.signature, message=b"signed"),
        lambda: client.get_public_key(sig),
        lambda: client.get_public_key(f"{sig}/versions/1"),
    ]:
        error = expect_error(PRECONDITION, "WRONG_KEY_STATE", call)
        assert error.metadata.get("state") == "DESTROYED"


def test_destroyed_key_refuses_every_state_change(
    client: VaultClient, destroyed: Destroyed
) -> None:
    for name in (destroyed.enc, destroyed.sig):
        for call in [
            lambda n=name: client.enable_key(n),
            lambda n=name: client.disable_key(n),
            lambda n=name: client.revoke_key(n, "too late"),
            lambda n=name: client.rotate_key(n),
            lambda n=name: client.schedule_key_destruction(n, timedelta(0)),
            lambda n=name: client.cancel_key_destruction(n),
        ]:
            expect_error(PRECONDITION, "WRONG_KEY_STATE", call)
        assert client.get_key(name).state == KeyState.KEY_STATE_DESTROYED


@pytest.mark.parametrize("which", ["enc", "sig"])
def test_destroyed_key_cannot_be_updated(
    client: VaultClient, destroyed: Destroyed, which: str
) -> None:
    name = getattr(destroyed, which)
    expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.update_key(name, description="x"))


def test_destroyed_key_name_is_not_reused(client: VaultClient, destroyed: Destroyed) -> None:
    account, key_id = destroyed.enc.split("/keys/")
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
        lambda: client.create_key(account, key_id, "ENCRYPT_DECRYPT"),
    )


def test_destroyed_token_resident_material_is_gone(keystore: Any, destroyed: Destroyed) -> None:
    assert destroyed.resident_labels.isdisjoint(keystore.token_labels())
    # Looked up directly too, by label, in a session of this process.
    from pkcs11 import Attribute

    session = keystore._library.context().session
    for label in destroyed.resident_labels:
        assert list(session.get_objects({Attribute.LABEL: label})) == []


# -- purpose, unknown keys and malformed names ------------------------------------------------


@pytest.fixture(scope="module")
def by_purpose(client: VaultClient, account: str) -> dict[str, str]:
    return {
        purpose: client.create_key(account, new_id(), purpose).name
        for purpose in (
            "ENCRYPT_DECRYPT",
            "WRAP_UNWRAP",
            "SIGN_VERIFY",
            "ASYMMETRIC_DECRYPT",
            "MAC",
        )
    }


WRONG_PURPOSE_CALLS: list[tuple[str, str, Callable[[VaultClient, str], object]]] = [
    ("Sign with AES-GCM", "ENCRYPT_DECRYPT", lambda c, n: c.sign(n, message=b"m")),
    ("GetPublicKey of AES-GCM", "ENCRYPT_DECRYPT", lambda c, n: c.get_public_key(n)),
    ("WrapKey with AES-GCM", "ENCRYPT_DECRYPT", lambda c, n: c.wrap_key(n, b"k" * 16)),
    ("GenerateMac with AES-GCM", "ENCRYPT_DECRYPT", lambda c, n: c.generate_mac(n, b"d")),
    ("Encrypt with KWP", "WRAP_UNWRAP", lambda c, n: c.encrypt(n, b"p")),
    ("GenerateDataKey with KWP", "WRAP_UNWRAP", lambda c, n: c.generate_data_key(n)),
    ("Encrypt with a signing key", "SIGN_VERIFY", lambda c, n: c.encrypt(n, b"p")),
    (
        "AsymmetricDecrypt with a signing key",
        "SIGN_VERIFY",
        lambda c, n: c.asymmetric_decrypt(n, b"\0" * 256),
    ),
    ("Sign with an OAEP key", "ASYMMETRIC_DECRYPT", lambda c, n: c.sign(n, message=b"m")),
    ("Verify with an OAEP key", "ASYMMETRIC_DECRYPT", lambda c, n: c.verify(n, b"s", message=b"m")),
    ("Encrypt with an OAEP key", "ASYMMETRIC_DECRYPT", lambda c, n: c.encrypt(n, b"p")),
    ("Sign with a MAC key", "MAC", lambda c, n: c.sign(n, message=b"m")),
    ("Decrypt with a MAC key", "MAC", lambda c, n: c.decrypt(n, b"\x01" + b"\0" * 40)),
    ("UnwrapKey with a MAC key", "MAC", lambda c, n: c.unwrap_key(n, b"\x02" + b"\0" * 40)),
    ("GetPublicKey of a MAC key", "MAC", lambda c, n: c.get_public_key(n)),
]


@pytest.mark.parametrize(
    ("purpose", "call"),
    [(purpose, call) for _, purpose, call in WRONG_PURPOSE_CALLS],
    ids=[label for label, _, _ in WRONG_PURPOSE_CALLS],
)
def test_operation_of_another_purpose_is_refused(
    client: VaultClient,
    by_purpose: dict[str, str],
    purpose: str,
    call: Callable[[VaultClient, str], object],
) -> None:
    error = expect_error(
        PRECONDITION, "WRONG_KEY_PURPOSE", lambda: call(client, by_purpose[purpose])
    )
    assert error.metadata.get("purpose") == purpose


def test_unknown_key_is_not_found(client: VaultClient, account: str) -> None:
    name = f"{account}/keys/{new_id()}"
    for call in [
        lambda: client.get_key(name),
        lambda: client.list_key_versions(name),
        lambda: client.update_key(name, description="x"),
        lambda: client.rotate_key(name),
        lambda: client.get_public_key(name),
        lambda: client.get_public_key(f"{name}/versions/1"),
        lambda: client.enable_key(name),
        lambda: client.disable_key(name),
        lambda: client.revoke_key(name, "why"),
        lambda: client.schedule_key_destruction(name, HOUR),
        lambda: client.cancel_key_destruction(name),
        lambda: client.encrypt(name, b"x"),
        lambda: client.sign(name, message=b"x"),
        lambda: client.generate_mac(name, b"x"),
    ]:
        expect_error(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", call)


def test_unknown_version_is_not_found(client: VaultClient, by_purpose: dict[str, str]) -> None:
    enc, sig = by_purpose["ENCRYPT_DECRYPT"], by_purpose["SIGN_VERIFY"]
    for call in [
        lambda: client.encrypt(f"{enc}/versions/2", b"x"),
        lambda: client.sign(f"{sig}/versions/7", message=b"x"),
        lambda: client.get_public_key(f"{sig}/versions/2"),
    ]:
        expect_error(grpc.StatusCode.NOT_FOUND, "NOT_FOUND", call)


MALFORMED_KEY_NAMES = [
    "",
    "keys/k1",
    "accounts/a1",
    "accounts/a1/keys/",
    "accounts//keys/k1",
    "accounts/A1/keys/k1",
    "accounts/a1/keys/K1",
    "accounts/a1/keys/1k",
    "accounts/a1/keys/k_1",
    "accounts/a1/keys/k1/",
    "/accounts/a1/keys/k1",
    "accounts/a1/keys/k1/versions/1",  # a version where only a key is accepted
    "accounts/a1/keys/" + "k" * 64,
    "accounts/a1/keys/k1\n",
    "accounts/a1/buckets/k1",
]


@pytest.mark.parametrize("name", MALFORMED_KEY_NAMES)
def test_malformed_key_name_is_refused(client: VaultClient, name: str) -> None:
    for call in [
        lambda: client.get_key(name),
        lambda: client.rotate_key(name),
        lambda: client.disable_key(name),
        lambda: client.list_key_versions(name),
    ]:
        expect_error(INVALID, "MALFORMED_NAME", call)


@pytest.mark.parametrize(
    "name",
    [
        "accounts/a1/keys/k1/versions/0",
        "accounts/a1/keys/k1/versions/-1",
        "accounts/a1/keys/k1/versions/x",
        "accounts/a1/keys/k1/versions/01",
        "accounts/a1/keys/k1/versions/",
        "accounts/a1/keys/k1/versions/1/x",
        "accounts/a1/keys/k1/versions/1234567890",
    ],
)
def test_malformed_version_name_is_refused(client: VaultClient, name: str) -> None:
    expect_error(INVALID, "MALFORMED_NAME", lambda: client.get_public_key(name))
    expect_error(INVALID, "MALFORMED_NAME", lambda: client.encrypt(name, b"x"))


# "ACCOUNT" stands for this module's account id: a create the vault wrongly accepts must not
# land in an account other tests use.
@pytest.mark.parametrize(
    ("parent", "key_id"),
    [
        ("account/ACCOUNT", "k1"),
        ("accounts/", "k1"),
        ("accounts/Upper", "k1"),
        ("accounts/ACCOUNT/keys/k0", "k1"),
        ("accounts/ACCOUNT", ""),
        ("accounts/ACCOUNT", "1k"),
        ("accounts/ACCOUNT", "Key"),
        ("accounts/ACCOUNT", "k/1"),
        ("accounts/ACCOUNT", "k" * 64),
        ("accounts/ACCOUNT", "k1\n"),
        ("accounts/ACCOUNT\n", "k1"),
    ],
)
def test_create_key_with_a_malformed_parent_or_id_is_refused(
    client: VaultClient, account: str, parent: str, key_id: str
) -> None:
    parent = parent.replace("ACCOUNT", account.removeprefix("accounts/"))
    expect_error(
        INVALID, "MALFORMED_NAME", lambda: client.create_key(parent, key_id, "ENCRYPT_DECRYPT")
    )
    assert [k.name for k in client.iter_keys(account) if k.name.endswith("/k1")] == []


def test_list_keys_with_a_malformed_parent_is_refused(client: VaultClient) -> None:
    for parent in ("", "accounts", "accounts/", "accounts/Upper", "accounts/a1/keys"):
        expect_error(INVALID, "MALFORMED_NAME", lambda p=parent: client.list_keys(p))


def test_longest_valid_ids_are_accepted(client: VaultClient) -> None:
    account = "accounts/a" + uuid4().hex[:10] + "-" * 52
    key_id = "k" + "0" * 61 + "z"
    assert len(account.removeprefix("accounts/")) == len(key_id) == 63
    ensure_account(client, account)
    key = client.create_key(account, key_id, "MAC")
    assert client.get_key(f"{account}/keys/{key_id}") == key
