"""Who may call BucketService: grants on buckets/{bucket} and buckets/*, API-key scopes on
bucket resources, and the usual rule that a denied caller learns nothing about what it was
denied. Every bucket call leaves an audit record, refused ones included.

An allowed call is shown to have done its work: a generated bucket key must open again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import grpc
import pytest

from tests.support.api_calls import expect_error
from tests.support.harness import VaultServer
from tests.support.security_helpers import (
    AccessKey,
    add_access_key,
    add_api_key,
    assert_identical,
    expect_denied,
    new_account,
)
from vault.client import AccessKeyCredentials, ApiKeyCredentials, VaultClient

MALFORMED_BUCKET_ID: Final = "Not_A-Valid.Name"


@dataclass(frozen=True, slots=True)
class Tenants:
    """Accounts A and B with an unscoped access key each, A's buckets and a wrapped key of
    each bucket."""

    server: VaultServer
    a: str
    b: str
    a_key: AccessKey
    b_key: AccessKey
    photos: str  # A's buckets/photos
    logs: str  # A's buckets/logs
    wrapped_photos: bytes
    wrapped_logs: bytes

    def client(self, credentials: AccessKeyCredentials | ApiKeyCredentials) -> VaultClient:
        client: VaultClient = self.server.client(credentials)
        return client


@pytest.fixture(scope="module")
def tenants(server: VaultServer, client: VaultClient) -> Tenants:
    a, b = new_account(client, "bucketa"), new_account(client, "bucketb")
    photos = client.create_bucket(a, "photos").name
    logs = client.create_bucket(a, "logs").name
    return Tenants(
        server=server,
        a=a,
        b=b,
        a_key=add_access_key(client, a),
        b_key=add_access_key(client, b),
        photos=photos,
        logs=logs,
        wrapped_photos=client.generate_bucket_key(photos).wrapped,
        wrapped_logs=client.generate_bucket_key(logs).wrapped,
    )


@pytest.fixture(scope="module")
def as_b(tenants: Tenants) -> Iterator[VaultClient]:
    with tenants.client(tenants.b_key.credentials) as client:
        yield client


def granted(tenants: Tenants, admin: VaultClient, grants: list[tuple[str, str]]) -> VaultClient:
    return tenants.client(add_access_key(admin, tenants.a, grants).credentials)


# Each call on A's bucket `photos`, with the level it needs.
CALLS: Final[dict[str, tuple[str, Callable[[VaultClient, Tenants], Any]]]] = {
    "GetBucket": ("READ", lambda c, t: c.get_bucket(t.photos)),
    "ListBucketMasterKeyVersions": (
        "READ",
        lambda c, t: list(c.iter_bucket_master_key_versions(t.photos)),
    ),
    "DecryptBucketKey": ("READ", lambda c, t: c.decrypt_bucket_key(t.photos, t.wrapped_photos)),
    "GenerateBucketKey": (
        "READWRITE",
        lambda c, t: c.decrypt_bucket_key(t.photos, c.generate_bucket_key(t.photos).wrapped),
    ),
    "UpdateBucket": ("FULL", lambda c, t: c.update_bucket(t.photos, labels={"by": "grant"})),
    "RotateBucketMasterKey": ("FULL", lambda c, t: c.rotate_bucket_master_key(t.photos)),
}
LEVELS: Final = ("READ", "READWRITE", "FULL")


@pytest.mark.parametrize("resource", ["buckets/photos", "buckets/*"])
@pytest.mark.parametrize("level", LEVELS)
def test_grant_levels_on_a_bucket_and_on_every_bucket(
    tenants: Tenants, client: VaultClient, resource: str, level: str
) -> None:
    with granted(tenants, client, [(resource, level)]) as holder:
        for method, (needed, call) in CALLS.items():
            if LEVELS.index(level) >= LEVELS.index(needed):
                assert call(holder, tenants), method
            else:
                expect_denied(lambda: call(holder, tenants))
        # Listing needs the wildcard: it would name buckets the grant does not cover.
        if resource == "buckets/*":
            names = {bucket.name for bucket in holder.iter_buckets(tenants.a)}
            assert {tenants.photos, tenants.logs} <= names
            assert holder.decrypt_bucket_key(tenants.logs, tenants.wrapped_logs)
        else:
            expect_denied(lambda: holder.list_buckets(tenants.a))
            expect_denied(lambda: holder.get_bucket(tenants.logs))
            expect_denied(lambda: holder.decrypt_bucket_key(tenants.logs, tenants.wrapped_logs))


def test_bucket_lifecycle_needs_full(tenants: Tenants, client: VaultClient) -> None:
    with granted(tenants, client, [("buckets/scratch", "READWRITE")]) as writer:
        expect_denied(lambda: writer.create_bucket(tenants.a, "scratch"))
    with granted(tenants, client, [("buckets/scratch", "FULL")]) as owner:
        bucket = owner.create_bucket(tenants.a, "scratch")
        # A grant names the bucket it creates, not others.
        expect_denied(lambda: owner.create_bucket(tenants.a, "other"))
        assert owner.delete_bucket(bucket.name).name == bucket.name
        assert owner.cancel_bucket_deletion(bucket.name).name == bucket.name
        version = f"{bucket.name}/masterKeyVersions/1"
        assert owner.disable_bucket_master_key_version(version)
        assert owner.enable_bucket_master_key_version(version)
    with granted(tenants, client, [("buckets/scratch", "READWRITE")]) as writer:
        expect_denied(lambda: writer.delete_bucket(bucket.name))
        expect_denied(lambda: writer.disable_bucket_master_key_version(version))


def test_key_grants_and_bucket_grants_do_not_cover_each_other(
    tenants: Tenants, client: VaultClient
) -> None:
    key = client.create_key(tenants.a, "sealer", "ENCRYPT_DECRYPT").name
    with granted(tenants, client, [("keys/*", "FULL")]) as key_holder:
        assert key_holder.encrypt(key, b"x")
        expect_denied(lambda: key_holder.get_bucket(tenants.photos))
        expect_denied(lambda: key_holder.list_buckets(tenants.a))
        expect_denied(lambda: key_holder.generate_bucket_key(tenants.photos))
    with granted(tenants, client, [("buckets/*", "FULL")]) as bucket_holder:
        assert bucket_holder.get_bucket(tenants.photos)
        expect_denied(lambda: bucket_holder.encrypt(key, b"x"))
        expect_denied(lambda: bucket_holder.list_keys(tenants.a))


def test_grant_resources_are_checked(tenants: Tenants, client: VaultClient) -> None:
    for resource in ("buckets/Bad_Id", "buckets/", "bucket/photos", "buckets/a/b"):
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            lambda: client.create_access_key(tenants.a, grants=[(resource, "READ")]),
        )


def test_api_key_scopes_on_bucket_resources(tenants: Tenants, client: VaultClient) -> None:
    api_key = add_api_key(
        client, tenants.a, [(["GenerateBucketKey", "DecryptBucketKey"], ["buckets/photos"])]
    )
    with tenants.client(api_key.credentials) as storage:
        generated = storage.generate_bucket_key(tenants.photos)
        assert storage.decrypt_bucket_key(tenants.photos, generated.wrapped) == (
            generated.plaintext
        )
        expect_denied(lambda: storage.get_bucket(tenants.photos))
        expect_denied(lambda: storage.generate_bucket_key(tenants.logs))
        expect_denied(lambda: storage.list_buckets(tenants.a))
    wildcard = add_api_key(client, tenants.a, [(["GetBucket"], ["buckets/*"])])
    with tenants.client(wildcard.credentials) as reader:
        assert reader.get_bucket(tenants.logs).name == tenants.logs
        expect_denied(lambda: reader.generate_bucket_key(tenants.logs))


def test_another_account_cannot_tell_existing_missing_and_malformed_buckets_apart(
    tenants: Tenants, as_b: VaultClient
) -> None:
    names = [
        tenants.photos,
        f"{tenants.a}/buckets/never-created",
        f"{tenants.a}/buckets/{MALFORMED_BUCKET_ID}",
        f"{tenants.a}/buckets/photos/masterKeyVersions/1",
        f"{tenants.a}/buckets",
    ]
    assert_identical([expect_denied(lambda: as_b.get_bucket(name)) for name in names])
    assert_identical([expect_denied(lambda: as_b.generate_bucket_key(name)) for name in names])
    assert_identical(
        [
            expect_denied(lambda: as_b.decrypt_bucket_key(name, tenants.wrapped_photos))
            for name in names
        ]
    )
    expect_denied(lambda: as_b.list_buckets(tenants.a))
    expect_denied(lambda: as_b.create_bucket(tenants.a, "planted"))
    expect_denied(lambda: as_b.delete_bucket(tenants.photos))
    # Under its own account, B is told precisely what is wrong.
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_NAME",
        lambda: as_b.get_bucket(f"{tenants.b}/buckets/{MALFORMED_BUCKET_ID}"),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: as_b.get_bucket(f"{tenants.b}/buckets/x")
    )


def test_listing_master_key_versions_is_authorised_before_the_request_is_validated(
    tenants: Tenants, client: VaultClient, as_b: VaultClient
) -> None:
    """ListBucketMasterKeyVersions needs READ on the bucket, as GetBucket does, and a caller
    without it is refused before its page size, token or bucket name are looked at."""

    def bad_requests(caller: VaultClient, name: str) -> list[Callable[[], object]]:
        return [
            lambda: caller.list_bucket_master_key_versions(name, page_token="bogus!"),
            lambda: caller.list_bucket_master_key_versions(name, page_size=-1),
        ]

    with granted(tenants, client, [("buckets/logs", "FULL")]) as other_bucket:
        assert_identical(
            [expect_denied(call) for call in bad_requests(other_bucket, tenants.photos)]
        )
    names = [
        tenants.photos,
        f"{tenants.a}/buckets/never-created",
        f"{tenants.a}/buckets/{MALFORMED_BUCKET_ID}",
    ]
    assert_identical([expect_denied(call) for name in names for call in bad_requests(as_b, name)])
    with granted(tenants, client, [("buckets/photos", "READ")]) as reader:
        for call in bad_requests(reader, tenants.photos):
            expect_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", call)
        listed = reader.list_bucket_master_key_versions(tenants.photos)
        assert listed.master_key_versions[-1].name == f"{tenants.photos}/masterKeyVersions/1"


def test_every_bucket_call_is_audited(tenants: Tenants, client: VaultClient) -> None:
    with tenants.client(tenants.a_key.credentials) as owner:
        bucket = owner.create_bucket(tenants.a, "audited")
        wrapped = owner.generate_bucket_key(bucket.name).wrapped
        owner.decrypt_bucket_key(bucket.name, wrapped)
        owner.update_bucket(bucket.name, labels={"x": "y"})
        owner.rotate_bucket_master_key(bucket.name)
        owner.get_bucket(bucket.name)
    with granted(tenants, client, [("buckets/photos", "READ")]) as reader:
        expect_denied(lambda: reader.generate_bucket_key(bucket.name))
    records = [
        (event.method.rsplit("/", 1)[1], event.outcome, event.reason)
        for event in client.iter_audit_events(resource=bucket.name)
    ]
    assert records == [
        ("CreateBucket", "STARTED", ""),
        ("CreateBucket", "OK", ""),
        ("GenerateBucketKey", "OK", ""),
        ("DecryptBucketKey", "OK", ""),
        ("UpdateBucket", "STARTED", ""),
        ("UpdateBucket", "OK", ""),
        ("RotateBucketMasterKey", "STARTED", ""),
        ("RotateBucketMasterKey", "OK", ""),
        ("GetBucket", "OK", ""),
        ("GenerateBucketKey", "PERMISSION_DENIED", "PERMISSION_DENIED"),
    ]
    events = list(client.iter_audit_events(resource=bucket.name))
    assert all(event.credential_id for event in events)
    assert all(event.resource == bucket.name for event in events)
