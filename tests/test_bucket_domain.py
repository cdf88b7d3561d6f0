"""Pure logic of buckets: names, the wrapped bucket key's format and additional data, the
policy's bounds, and who may call what on buckets. No token or server needed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from vault.domain.batches import BATCH_METHODS
from vault.domain.buckets import (
    WRAPPED_BUCKET_KEY_SIZE,
    BucketPolicy,
    WrappedBucketKey,
    bucket_key_aad,
)
from vault.domain.errors import DecryptionFailed, InvalidArgument, MalformedName
from vault.domain.identity import (
    BUCKET_METHODS,
    MUTATING_METHODS,
    REQUIRED_LEVEL,
    AccessLevel,
    ApiScope,
    CredentialKind,
    Grant,
    Principal,
    authorize,
    resource_ref,
)
from vault.domain.names import BucketName, KeyName, MasterKeyVersionName
from vault.gen.vault.v1 import bucket_service_pb2

BUCKETS = "vault.v1.BucketService"


def test_bucket_names_parse_and_print() -> None:
    name = BucketName.parse("accounts/acme/buckets/photos")
    assert (name.account, name.bucket) == ("acme", "photos")
    assert str(name) == "accounts/acme/buckets/photos"
    assert name.master_key == KeyName("acme", "~photos")
    version = MasterKeyVersionName.parse("accounts/acme/buckets/photos/masterKeyVersions/3")
    assert (version.bucket_name, version.version) == (name, 3)
    assert str(name.master_version(3)) == str(version)


@pytest.mark.parametrize(
    "text",
    [
        "accounts/acme/buckets/Photos",
        "accounts/acme/buckets/~photos",
        "accounts/acme/buckets/photos\n",
        "accounts/acme/keys/photos",
        "accounts/acme/buckets/",
        "accounts/acme/buckets/" + "p" * 64,
    ],
)
def test_malformed_bucket_names_are_refused(text: str) -> None:
    with pytest.raises(MalformedName):
        BucketName.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "accounts/acme/buckets/photos/masterKeyVersions/0",
        "accounts/acme/buckets/photos/versions/1",
        "accounts/acme/buckets/photos/masterKeyVersions/01",
    ],
)
def test_malformed_master_key_version_names_are_refused(text: str) -> None:
    with pytest.raises(MalformedName):
        MasterKeyVersionName.parse(text)


def test_wrapped_bucket_key_round_trips_and_refuses_other_shapes() -> None:
    wrapped = WrappedBucketKey(7, b"n" * 12, b"s" * 48)
    data = wrapped.to_bytes()
    assert len(data) == WRAPPED_BUCKET_KEY_SIZE == 65
    assert data[:5] == b"\x03\x00\x00\x00\x07"
    assert WrappedBucketKey.parse(data) == wrapped
    for bad in (data[:-1], data + b"x", b"\x02" + data[1:], b"\x03\x00\x00\x00\x00" + data[5:]):
        with pytest.raises(DecryptionFailed):
            WrappedBucketKey.parse(bad)


def test_the_additional_data_keeps_account_and_bucket_apart() -> None:
    header = WrappedBucketKey(1, b"n" * 12, b"").header()
    one = bucket_key_aad(header, BucketName("ab", "c"))
    other = bucket_key_aad(header, BucketName("a", "bc"))
    assert one != other
    assert one == header + b"\x00\x02ab" + b"\x00\x01c"
    assert bucket_key_aad(WrappedBucketKey(2, b"", b"").header(), BucketName("ab", "c")) != one


def test_policy_bounds() -> None:
    assert BucketPolicy().key_lifetime == timedelta(minutes=15)
    BucketPolicy(timedelta(seconds=1), 1, 1)
    BucketPolicy(timedelta(days=1), None, None)
    for bad in (
        {"key_lifetime": timedelta(0)},
        {"key_lifetime": timedelta(days=1, seconds=1)},
        {"max_objects": 0},
        {"max_bytes": -1},
    ):
        with pytest.raises(InvalidArgument):
            BucketPolicy(**bad)  # type: ignore[arg-type]


def test_every_bucket_service_method_has_a_level_and_changes_are_audited_first() -> None:
    methods = {
        method.name
        for method in bucket_service_pb2.DESCRIPTOR.services_by_name["BucketService"].methods
    }
    # A batch method has no level of its own: each item is its unary method's call.
    batches = {m for m in methods if m in BATCH_METHODS}
    assert {BATCH_METHODS[m] for m in batches} <= set(BUCKET_METHODS)
    methods -= batches
    assert methods == set(BUCKET_METHODS)
    assert methods <= set(REQUIRED_LEVEL)
    reads = {
        "GetBucket",
        "ListBuckets",
        "ListBucketMasterKeyVersions",
        "GenerateBucketKey",
        "DecryptBucketKey",
    }
    assert {m for m in methods if m in MUTATING_METHODS} == methods - reads


def _principal(*grants: tuple[str, AccessLevel]) -> Principal:
    return Principal(
        CredentialKind.ACCESS_KEY,
        "VK" + "A" * 18,
        "acme",
        grants=tuple(Grant(resource, level) for resource, level in grants),
    )


def _allowed(principal: Principal, method: str, *names: str) -> bool:
    refs = [resource_ref(name) for name in names]
    assert all(ref is not None for ref in refs)
    return authorize(principal, BUCKETS, method, [ref for ref in refs if ref is not None])


def test_grants_on_buckets() -> None:
    photos = "accounts/acme/buckets/photos"
    reader = _principal(("buckets/photos", AccessLevel.READ))
    assert _allowed(reader, "DecryptBucketKey", photos)
    assert _allowed(reader, "GetBucket", f"{photos}/masterKeyVersions/2")
    assert not _allowed(reader, "GenerateBucketKey", photos)
    assert not _allowed(reader, "GetBucket", "accounts/acme/buckets/logs")
    assert not _allowed(reader, "ListBuckets", "accounts/acme")
    every = _principal(("buckets/*", AccessLevel.READWRITE))
    assert _allowed(every, "ListBuckets", "accounts/acme")
    assert _allowed(every, "GenerateBucketKey", "accounts/acme/buckets/logs")
    assert not _allowed(every, "RotateBucketMasterKey", photos)
    assert not _allowed(every, "GetBucket", "accounts/other/buckets/photos")
    keys_only = _principal(("keys/*", AccessLevel.FULL))
    assert not _allowed(keys_only, "GetBucket", photos)
    assert not _allowed(keys_only, "ListBuckets", "accounts/acme")


def test_api_key_scopes_on_buckets() -> None:
    scope = ApiScope(frozenset({"GenerateBucketKey"}), ("buckets/*",))
    principal = Principal(CredentialKind.API_KEY, "k" * 16, "acme", scopes=(scope,))
    assert _allowed(principal, "GenerateBucketKey", "accounts/acme/buckets/photos")
    assert not _allowed(principal, "DecryptBucketKey", "accounts/acme/buckets/photos")
    assert not _allowed(principal, "GenerateBucketKey", "accounts/acme/keys/photos")
    with pytest.raises(InvalidArgument):
        ApiScope(frozenset({"GenerateBucketKey"}), ("buckets/Photos",))


def test_bucket_state_follows_the_master_key() -> None:
    from vault.domain.buckets import BucketState, bucket_state
    from vault.domain.models import KeyState

    assert [bucket_state(state) for state in KeyState] == [
        BucketState.ACTIVE,
        BucketState.ACTIVE,
        BucketState.ACTIVE,
        BucketState.DELETE_SCHEDULED,
        BucketState.DELETED,
    ]
