"""What an authenticated caller may do: its own account's keys only, within its grants, and
the admin services only with the admin role. A denied caller learns nothing about what it
was denied: existing, missing and malformed resources of another account get one answer.

Signatures made by the vault are checked with `cryptography` against the public key it
hands out, so an allowed call is shown to have done its work, not merely to have passed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api_calls import every_page, expect_error
from tests.support.harness import VaultServer
from tests.support.security_helpers import (
    AccessKey,
    add_access_key,
    assert_identical,
    expect_denied,
    new_account,
)
from vault.client import AccessKeyCredentials, VaultClient, VaultClientError
from vault.config import ServerSettings
from vault.gen.vault.v1 import identity_service_pb2, identity_service_pb2_grpc, resources_pb2

MESSAGE: Final = b"authorised by a grant"
MALFORMED_KEY_ID: Final = "Not_A-Valid.Name"


@dataclass(frozen=True, slots=True)
class Accounts:
    """Two tenants, A and B, each with an unscoped access key, and A's keys."""

    server: VaultServer
    a: str
    b: str
    a_key: AccessKey
    b_key: AccessKey
    signing: str  # A's keys/a, SIGN_VERIFY
    signing_b: str  # A's keys/b, SIGN_VERIFY
    sealing: str  # A's keys/enc, ENCRYPT_DECRYPT
    sealing_b: str  # B's keys/benc, ENCRYPT_DECRYPT

    def client(self, credentials: AccessKeyCredentials) -> VaultClient:
        client: VaultClient = self.server.client(credentials)
        return client


@pytest.fixture(scope="module")
def accounts(server: VaultServer, client: VaultClient) -> Accounts:
    a, b = new_account(client, "alpha"), new_account(client, "beta")
    return Accounts(
        server=server,
        a=a,
        b=b,
        a_key=add_access_key(client, a),
        b_key=add_access_key(client, b),
        signing=client.create_key(a, "a", "SIGN_VERIFY").name,
        signing_b=client.create_key(a, "b", "SIGN_VERIFY").name,
        sealing=client.create_key(a, "enc", "ENCRYPT_DECRYPT").name,
        sealing_b=client.create_key(b, "benc", "ENCRYPT_DECRYPT").name,
    )


@pytest.fixture(scope="module")
def as_b(accounts: Accounts) -> Iterator[VaultClient]:
    with accounts.client(accounts.b_key.credentials) as client:
        yield client


def scoped(accounts: Accounts, admin: VaultClient, grants: list[tuple[str, str]]) -> VaultClient:
    """A client signing with a new access key of A holding exactly grants."""
    return accounts.client(add_access_key(admin, accounts.a, grants).credentials)


def verify_with_public_key(pem: str, signature: bytes, message: bytes) -> None:
    public_key = serialization.load_pem_public_key(pem.encode("ascii"))
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))  # raises if forged


# -- across accounts ------------------------------------------------------------------------


def test_another_account_cannot_tell_existing_missing_and_malformed_keys_apart(
    accounts: Accounts, as_b: VaultClient
) -> None:
    names = [
        accounts.signing,
        f"{accounts.a}/keys/never-created",
        f"{accounts.a}/keys/{MALFORMED_KEY_ID}",
        f"{accounts.a}/keys/a/versions/1",
        f"{accounts.a}/keys",
    ]
    assert_identical([expect_denied(lambda: as_b.get_key(name)) for name in names])
    assert_identical([expect_denied(lambda: as_b.get_public_key(name)) for name in names])


@pytest.mark.parametrize(
    "use",
    [
        lambda c, k: c.get_key(k.signing),
        lambda c, k: c.sign(k.signing, message=MESSAGE),
        lambda c, k: c.verify(k.signing, b"\x30\x00", message=MESSAGE),
        lambda c, k: c.encrypt(k.sealing, b"x"),
        lambda c, k: c.disable_key(k.signing),
        lambda c, k: c.list_keys(k.a),
        lambda c, k: c.list_key_versions(k.signing),
        lambda c, k: c.create_key(k.a, "planted", "MAC"),
    ],
    ids=["GetKey", "Sign", "Verify", "Encrypt", "DisableKey", "ListKeys", "ListVersions", "Create"],
)
def test_another_account_cannot_use_keys_of_this_one(
    accounts: Accounts, as_b: VaultClient, client: VaultClient, use: Callable[..., Any]
) -> None:
    expect_denied(lambda: use(as_b, accounts))
    # Nothing happened on the way: A's keys are as they were.
    assert client.get_key(accounts.signing).state == resources_pb2.KEY_STATE_ENABLED
    names = {key.name for key in client.iter_keys(accounts.a)}
    assert f"{accounts.a}/keys/planted" not in names


def test_a_key_in_a_missing_account_is_refused_before_the_account_is_looked_up(
    accounts: Accounts, as_b: VaultClient
) -> None:
    # B is not told that the account does not exist: it may not create keys there at all.
    missing = f"accounts/missing{secrets.token_hex(4)}"
    refused = expect_denied(lambda: as_b.create_key(missing, "k", "MAC"))
    assert refused.metadata["resource"] == f"{missing}/keys/k"


def test_authorisation_comes_before_validation(accounts: Accounts, as_b: VaultClient) -> None:
    # Under A the malformed name is denied: validating it first would tell B about A.
    expect_denied(lambda: as_b.get_key(f"{accounts.a}/keys/{MALFORMED_KEY_ID}"))
    expect_denied(lambda: as_b.get_key(f"not-a-name/{MALFORMED_KEY_ID}"))
    # Under its own account, B is told precisely what is wrong.
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_NAME",
        lambda: as_b.get_key(f"{accounts.b}/keys/{MALFORMED_KEY_ID}"),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND, "NOT_FOUND", lambda: as_b.get_key(f"{accounts.b}/keys/nope")
    )


def test_reencrypt_into_a_key_of_another_account_is_denied(
    accounts: Accounts, client: VaultClient
) -> None:
    plaintext = secrets.token_bytes(24)
    with accounts.client(accounts.a_key.credentials) as as_a:
        sealed = as_a.encrypt(accounts.sealing, plaintext).ciphertext
        expect_denied(
            lambda: as_a.re_encrypt(
                accounts.sealing, sealed, destination_key_name=accounts.sealing_b
            )
        )
        # Within its own account the same call works.
        resealed = as_a.re_encrypt(accounts.sealing, sealed).ciphertext
        assert as_a.decrypt(accounts.sealing, resealed).plaintext == plaintext
    # The admin may move it across: the refusal was about who asked, not about the request.
    moved = client.re_encrypt(
        accounts.sealing, sealed, destination_key_name=accounts.sealing_b
    ).ciphertext
    assert client.decrypt(accounts.sealing_b, moved).plaintext == plaintext


def test_reencrypt_needs_a_grant_on_the_destination_too(
    accounts: Accounts, client: VaultClient
) -> None:
    other = client.create_key(accounts.a, "enc-other", "ENCRYPT_DECRYPT").name
    with scoped(accounts, client, [("keys/enc", "READWRITE")]) as limited:
        sealed = limited.encrypt(accounts.sealing, b"payload").ciphertext
        expect_denied(
            lambda: limited.re_encrypt(accounts.sealing, sealed, destination_key_name=other)
        )
        assert limited.re_encrypt(accounts.sealing, sealed).ciphertext


# -- grants ---------------------------------------------------------------------------------


def test_a_read_grant_allows_reading_and_verifying_only(
    accounts: Accounts, client: VaultClient
) -> None:
    signature = client.sign(accounts.signing, message=MESSAGE).signature
    with scoped(accounts, client, [("keys/a", "READ")]) as reader:
        assert reader.get_key(accounts.signing).name == accounts.signing
        pem = reader.get_public_key(accounts.signing).pem
        verify_with_public_key(pem, signature, MESSAGE)
        assert reader.verify(accounts.signing, signature, message=MESSAGE).valid
        assert not reader.verify(accounts.signing, signature, message=MESSAGE + b"!").valid
        assert [v.name for v in reader.list_key_versions(accounts.signing)]

        expect_denied(lambda: reader.sign(accounts.signing, message=MESSAGE))
        expect_denied(lambda: reader.get_key(accounts.signing_b))
        expect_denied(lambda: reader.verify(accounts.signing_b, signature, message=MESSAGE))
        # Listing would reveal the names of keys the grant does not cover.
        expect_denied(lambda: reader.list_keys(accounts.a))
        expect_denied(lambda: reader.generate_random(16))


def test_a_readwrite_grant_allows_signing_and_encrypting_but_not_lifecycle(
    accounts: Accounts, client: VaultClient
) -> None:
    grants = [("keys/a", "READWRITE"), ("keys/enc", "READWRITE")]
    with scoped(accounts, client, grants) as writer:
        signature = writer.sign(accounts.signing, message=MESSAGE).signature
        verify_with_public_key(client.get_public_key(accounts.signing).pem, signature, MESSAGE)
        sealed = writer.encrypt(accounts.sealing, MESSAGE).ciphertext
        assert writer.decrypt(accounts.sealing, sealed).plaintext == MESSAGE

        expect_denied(lambda: writer.disable_key(accounts.signing))
        expect_denied(lambda: writer.rotate_key(accounts.sealing))
        expect_denied(lambda: writer.sign(accounts.signing_b, message=MESSAGE))
    assert client.get_key(accounts.signing).state == resources_pb2.KEY_STATE_ENABLED


def test_a_refusal_names_the_method_the_resource_and_the_level_needed(
    accounts: Accounts, client: VaultClient
) -> None:
    with scoped(accounts, client, [("keys/enc", "READ")]) as reader:
        refused = expect_denied(lambda: reader.encrypt(accounts.sealing, MESSAGE))
        assert refused.metadata == {
            "method": "Encrypt",
            "resource": accounts.sealing,
            "required": "READWRITE on keys/enc",
        }
        assert refused.message == (
            f"permission denied: Encrypt on {accounts.sealing} needs READWRITE on keys/enc"
        )
        # A missing key gets the same kind of answer: it says what was asked, not what exists.
        missing = expect_denied(lambda: reader.encrypt(f"{accounts.a}/keys/absent", MESSAGE))
        assert missing.metadata["required"] == "READWRITE on keys/absent"
        listing = expect_denied(lambda: reader.list_keys(accounts.a))
        assert listing.metadata == {
            "method": "ListKeys",
            "resource": accounts.a,
            "required": "READ on keys/*",
        }
        admin_only = expect_denied(lambda: reader.list_accounts())
        assert admin_only.metadata == {"method": "ListAccounts", "required": "the admin role"}


def test_a_full_grant_allows_the_key_lifecycle(accounts: Accounts, client: VaultClient) -> None:
    name = client.create_key(accounts.a, "lifecycle", "SIGN_VERIFY").name
    with scoped(accounts, client, [("keys/lifecycle", "FULL")]) as owner:
        assert owner.disable_key(name).state == resources_pb2.KEY_STATE_DISABLED
        assert client.get_key(name).state == resources_pb2.KEY_STATE_DISABLED
        assert owner.enable_key(name).state == resources_pb2.KEY_STATE_ENABLED
        signature = owner.sign(name, message=MESSAGE).signature
        verify_with_public_key(owner.get_public_key(name).pem, signature, MESSAGE)
        expect_denied(lambda: owner.disable_key(accounts.signing))


def test_a_grant_on_a_key_name_allows_creating_that_key_only(
    accounts: Accounts, client: VaultClient
) -> None:
    with scoped(accounts, client, [("keys/granted-new", "FULL")]) as creator:
        created = creator.create_key(accounts.a, "granted-new", "ENCRYPT_DECRYPT")
        assert created.name == f"{accounts.a}/keys/granted-new"
        expect_denied(lambda: creator.create_key(accounts.a, "not-granted", "ENCRYPT_DECRYPT"))
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        lambda: client.get_key(f"{accounts.a}/keys/not-granted"),
    )


def test_a_wildcard_grant_covers_every_key_of_the_account(
    accounts: Accounts, client: VaultClient, as_b: VaultClient
) -> None:
    with scoped(accounts, client, [("keys/*", "READWRITE")]) as wildcard:
        for name in (accounts.signing, accounts.signing_b):
            signature = wildcard.sign(name, message=MESSAGE).signature
            verify_with_public_key(wildcard.get_public_key(name).pem, signature, MESSAGE)
        listed = {key.name for key in wildcard.iter_keys(accounts.a)}
        assert {accounts.signing, accounts.signing_b, accounts.sealing} <= listed
        assert len(wildcard.generate_random(16).data) == 16
        expect_denied(lambda: wildcard.disable_key(accounts.signing_b))
        # Every key of its own account, not of another.
        expect_denied(lambda: wildcard.get_key(accounts.sealing_b))


def test_an_unscoped_key_has_full_access_to_its_own_account_only(
    accounts: Accounts, client: VaultClient
) -> None:
    name = client.create_key(accounts.a, "unscoped", "SIGN_VERIFY").name
    with accounts.client(accounts.a_key.credentials) as as_a:
        assert as_a.disable_key(name).state == resources_pb2.KEY_STATE_DISABLED
        assert as_a.enable_key(name).state == resources_pb2.KEY_STATE_ENABLED
        assert {k.name for k in as_a.iter_keys(accounts.a)} >= {accounts.signing, name}
        expect_denied(lambda: as_a.get_key(accounts.sealing_b))
        expect_denied(lambda: as_a.list_keys(accounts.b))


# -- the admin role -------------------------------------------------------------------------


def admin_calls(account: str) -> dict[str, Callable[[VaultClient], object]]:
    return {
        "CreateAccount": lambda c: c.create_account(f"planted{secrets.token_hex(4)}"),
        "GetAccount": lambda c: c.get_account(account),
        "ListAccounts": lambda c: c.list_accounts(),
        "CreateAccessKey": lambda c: c.create_access_key(account),
        "ListAccessKeys": lambda c: c.list_access_keys(account),
        "CreateApiKey": lambda c: c.create_api_key(account, [(["GetKey"], ["*"])]),
        "ListApiKeys": lambda c: c.list_api_keys(account),
        "ListAuditEvents": lambda c: c.list_audit_events(page_size=1),
        "VerifyAuditLog": lambda c: c.verify_audit_log(),
    }


def test_other_accounts_cannot_call_the_admin_services(
    accounts: Accounts, client: VaultClient
) -> None:
    own_key = accounts.a_key.name
    calls = admin_calls(accounts.a)
    calls["GetAccessKey (its own)"] = lambda c: c.get_access_key(own_key)
    calls["ResetSecretKey (its own)"] = lambda c: c.reset_secret_key(own_key)
    calls["GetUsage (its own)"] = lambda c: c.get_usage(own_key)
    keys_before = {k.access_key_id for k in client.list_access_keys(accounts.a)}
    with accounts.client(accounts.a_key.credentials) as as_a:
        for method, call in calls.items():
            with pytest.raises(VaultClientError) as caught:
                call(as_a)
            assert (caught.value.code, caught.value.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "PERMISSION_DENIED",
            ), method
        # Its secret was not reset by the denied call.
        assert as_a.get_key(accounts.signing).name == accounts.signing
    assert {k.access_key_id for k in client.list_access_keys(accounts.a)} == keys_before


def test_an_admin_account_key_with_grants_has_no_admin_role(
    accounts: Accounts, client: VaultClient
) -> None:
    scoped_admin = add_access_key(client, "accounts/admin", [("keys/*", "FULL")])
    with accounts.client(scoped_admin.credentials) as limited:
        for method, call in admin_calls(accounts.a).items():
            with pytest.raises(VaultClientError) as caught:
                call(limited)
            assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED, method
        # Nor the use of other accounts' keys that the admin role brings.
        expect_denied(lambda: limited.get_key(accounts.signing))


def test_an_unscoped_admin_account_key_has_the_admin_role(
    accounts: Accounts, client: VaultClient
) -> None:
    second_admin = add_access_key(client, "accounts/admin")
    with accounts.client(second_admin.credentials) as admin:
        listed = {account.name for account in admin.list_accounts()}
        assert {accounts.a, accounts.b, "accounts/admin"} <= listed
        assert admin.get_account(accounts.a).name == accounts.a
        keys = {key.access_key_id for key in admin.list_access_keys(accounts.a)}
        assert accounts.a_key.key_id in keys
        assert admin.list_audit_events(page_size=1).events
        assert admin.verify_audit_log().records_checked > 0
        # And the keys of every account.
        assert admin.get_key(accounts.sealing_b).name == accounts.sealing_b
        signature = admin.sign(accounts.signing, message=MESSAGE).signature
        verify_with_public_key(admin.get_public_key(accounts.signing).pem, signature, MESSAGE)


def test_list_access_keys_pages_of_large_keys_fit_the_largest_message(
    client: VaultClient, server: VaultServer
) -> None:
    """An access key with every grant (64) and the longest description is about 6 KB: 200
    of them in one page of 1,000 would be larger than server.max_message_bytes, so a page
    ends after the last access key that fits, and its token resumes right after it."""
    max_bytes = ServerSettings().max_message_bytes
    account = new_account(client)
    grants = [(f"keys/k{i:02d}{'x' * 60}", "READ") for i in range(64)]
    created = {
        client.create_access_key(account, grants=grants, description="d" * 1024).access_key.name
        for _ in range(200)
    }
    with server.channel() as channel:
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        pages: list[identity_service_pb2.ListAccessKeysResponse] = every_page(
            lambda token: stub.ListAccessKeys(
                identity_service_pb2.ListAccessKeysRequest(
                    parent=account, page_size=1000, page_token=token
                ),
                timeout=30,
            )
        )
    listed = [key.name for page in pages for key in page.access_keys]
    assert len(listed) == len(set(listed)) == len(created)
    assert set(listed) == created
    assert len(pages) > 1 and all(page.access_keys for page in pages)
    assert all(page.ByteSize() <= max_bytes for page in pages)
