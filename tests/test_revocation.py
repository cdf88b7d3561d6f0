"""Revocation end to end: reason codes, one version revoked on its own, ListRevocations and
the signed revocation feed, against the real server and token.

The feed is checked the way a relying party would: parsed here by hand from the layout in
README.md ("Revocation feed"), not with the vault's own parser, and its signature verified
with `cryptography` against the feed key's public half read from the token by this process.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.api_calls import every_page, expect_error, new_id
from tests.support.api_calls import new_account as new_account_name
from tests.support.harness import VaultServer
from tests.support.security_helpers import add_access_key, new_account
from vault.client import VaultClient
from vault.config import ServerSettings
from vault.gen.vault.v1 import key_service_pb2, key_service_pb2_grpc, resources_pb2

KeyState = resources_pb2.KeyState
Reason = resources_pb2.RevocationReason
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED


# -- an independent reader of the feed (README.md, "Revocation feed") ------------------------


@dataclass(frozen=True)
class Entry:
    key_version: str
    reason_code: int
    revoke_time: datetime
    public_key_der: bytes


@dataclass(frozen=True)
class ParsedFeed:
    parent: str
    generated_at: datetime
    entries: list[Entry]


def read_feed(payload: bytes) -> ParsedFeed:
    position = 0

    def take(size: int) -> bytes:
        nonlocal position
        assert position + size <= len(payload), "truncated feed"
        chunk = payload[position : position + size]
        position += size
        return chunk

    def unsigned(fmt: str) -> int:
        return int(struct.unpack(fmt, take(struct.calcsize(fmt)))[0])

    def when() -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=unsigned(">Q"))

    assert take(24) == b"vault-revocation-feed/1\n"
    parent = take(unsigned(">H")).decode("utf-8")
    generated = when()
    entries = []
    for _ in range(unsigned(">I")):
        name = take(unsigned(">H")).decode("utf-8")
        code = unsigned(">B")
        revoked = when()
        public = take(unsigned(">H"))
        entries.append(Entry(name, code, revoked, public))
    assert position == len(payload), "trailing bytes"
    return ParsedFeed(parent, generated, entries)


def verifies(public_der: bytes, payload: bytes, signature: bytes) -> bool:
    public = serialization.load_der_public_key(public_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    try:
        public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@pytest.fixture(scope="module")
def pinned_feed_key(keystore: Any) -> bytes:
    """The feed key's public half as this process reads it from the token: what an operator
    pins, instead of trusting the key that comes with a feed."""
    from pkcs11 import Attribute, ObjectClass

    from vault.domain.algorithms import Algorithm
    from vault.hsm.public import public_key_der

    session = keystore._library.context().session
    (public,) = list(
        session.get_objects(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.LABEL: "vault:system:revocation-feed:1",
            }
        )
    )
    return public_key_der(Algorithm.EC_SIGN_P256_SHA256, public)


# -- reason codes -------------------------------------------------------------------------


def test_revoke_records_reason_code_and_time_on_the_key_and_every_version(
    client: VaultClient,
) -> None:
    account = new_account_name(client)
    key = client.create_key(account, new_id(), "SIGN_VERIFY")
    client.rotate_key(key.name)
    before = datetime.now(UTC)
    revoked = client.revoke_key(key.name, "incident 77", reason_code="COMPROMISED")
    assert revoked.state == KeyState.KEY_STATE_REVOKED
    assert revoked.revocation_reason == "incident 77"
    assert revoked.revocation_reason_code == Reason.REVOCATION_REASON_COMPROMISED
    when = revoked.revoke_time.ToDatetime(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= when <= datetime.now(UTC)
    assert client.get_key(key.name) == revoked
    versions = client.list_key_versions(key.name)
    assert len(versions) == 2
    for version in versions:
        assert version.revocation_reason_code == Reason.REVOCATION_REASON_COMPROMISED
        assert version.revocation_reason == "incident 77"
        assert version.revoke_time == revoked.revoke_time


def test_a_reason_code_alone_is_enough_and_one_of_the_two_is_required(
    client: VaultClient,
) -> None:
    account = new_account_name(client)
    key = client.create_key(account, new_id(), "MAC")
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.revoke_key(key.name, "  "))
    expect_error(INVALID, "INVALID_ARGUMENT", lambda: client.revoke_key(key.name, "x", 99))
    assert client.get_key(key.name).state == KeyState.KEY_STATE_ENABLED
    revoked = client.revoke_key(key.name, reason_code="CESSATION_OF_OPERATION")
    assert revoked.revocation_reason == ""
    assert revoked.revocation_reason_code == Reason.REVOCATION_REASON_CESSATION_OF_OPERATION


def test_a_revoked_version_makes_nothing_new_until_the_key_rotates(client: VaultClient) -> None:
    account = new_account_name(client)
    sig = client.create_key(account, new_id(), "SIGN_VERIFY").name
    enc = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    signed = client.sign(sig, message=b"before")
    sealed = client.encrypt(enc, b"before")

    for name in (sig, enc):
        key = client.revoke_key(f"{name}/versions/1", "leaked", reason_code="COMPROMISED")
        # The key stays enabled: only the version is revoked.
        assert key.state == KeyState.KEY_STATE_ENABLED
    (v1,) = client.list_key_versions(sig)
    assert v1.revocation_reason_code == Reason.REVOCATION_REASON_COMPROMISED
    assert v1.HasField("revoke_time")

    # Every worker refuses to make anything new with the revoked primary...
    for _ in range(6):
        expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.sign(sig, message=b"x"))
        expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.encrypt(enc, b"x"))
        expect_error(PRECONDITION, "WRONG_KEY_STATE", lambda: client.generate_data_key(enc))
    # ...but what it protected before stays readable and checkable.
    assert client.verify(sig, signed.signature, message=b"before").valid
    assert client.decrypt(enc, sealed.ciphertext).plaintext == b"before"
    expect_error(
        PRECONDITION,
        "WRONG_KEY_STATE",
        lambda: client.revoke_key(f"{sig}/versions/1", reason_code="SUPERSEDED"),
    )

    # A rotation gives a usable primary; the revoked version stays refused by name.
    client.rotate_key(sig)
    client.rotate_key(enc)
    assert client.sign(sig, message=b"after").key_version == f"{sig}/versions/2"
    assert client.encrypt(enc, b"after").key_version == f"{enc}/versions/2"
    expect_error(
        PRECONDITION,
        "WRONG_KEY_STATE",
        lambda: client.sign(f"{sig}/versions/1", message=b"x"),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        lambda: client.revoke_key(f"{sig}/versions/9", reason_code="SUPERSEDED"),
    )


# -- ListRevocations and the signed feed ----------------------------------------------------


@dataclass(frozen=True)
class Revoked:
    account: str
    signing: list[str]  # revoked version names of asymmetric keys
    symmetric: str  # a revoked AES version
    live: str  # a key that is not revoked


@pytest.fixture(scope="module")
def revoked(client: VaultClient) -> Revoked:
    account = new_account_name(client)
    ec_key = client.create_key(account, new_id(), "SIGN_VERIFY").name
    client.rotate_key(ec_key)
    rsa_key = client.create_key(account, new_id(), "ASYMMETRIC_DECRYPT").name
    aes_key = client.create_key(account, new_id(), "ENCRYPT_DECRYPT").name
    live = client.create_key(account, new_id(), "SIGN_VERIFY").name
    client.revoke_key(ec_key, "rotated out", reason_code="SUPERSEDED")
    client.revoke_key(f"{rsa_key}/versions/1", reason_code="COMPROMISED")
    client.revoke_key(aes_key, reason_code="CESSATION_OF_OPERATION")
    return Revoked(
        account,
        [f"{ec_key}/versions/1", f"{ec_key}/versions/2", f"{rsa_key}/versions/1"],
        f"{aes_key}/versions/1",
        live,
    )


def test_list_revocations_pages_through_every_revoked_version_once(
    client: VaultClient, revoked: Revoked
) -> None:
    seen = list(client.iter_revocations(revoked.account, page_size=2))
    names = [entry.key_version for entry in seen]
    assert sorted(names) == sorted([*revoked.signing, revoked.symmetric])
    assert len(names) == len(set(names))
    for entry in seen:
        if entry.key_version == revoked.symmetric:
            assert entry.public_key_der == b"" and entry.public_key_sha256 == b""
            assert entry.reason_code == Reason.REVOCATION_REASON_CESSATION_OF_OPERATION
            continue
        # The public key is the one GetPublicKey gave for that version.
        pem = client.get_public_key(entry.key_version).pem.encode()
        expected = serialization.load_pem_public_key(pem).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert entry.public_key_der == expected
        assert entry.public_key_sha256 == hashlib.sha256(expected).digest()
    codes = {entry.key_version: entry.reason_code for entry in seen}
    assert codes[revoked.signing[0]] == Reason.REVOCATION_REASON_SUPERSEDED
    assert codes[revoked.signing[2]] == Reason.REVOCATION_REASON_COMPROMISED
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.list_revocations(revoked.account, page_token="bm90IGEgbmFtZQ"),
    )


# Versions whose revocation entries (each with the longest reason, about 1.1 KB) exceed
# server.max_message_bytes together.
MANY_VERSIONS = 1000


@pytest.fixture(scope="module")
def long_revoked(client: VaultClient) -> str:
    """A key of MANY_VERSIONS versions, revoked with the longest reason; its name."""
    name = client.create_key(new_account_name(client), new_id(), "MAC").name
    for _ in range(MANY_VERSIONS - 1):
        client.rotate_key(name)
    client.revoke_key(name, "r" * 1024, "SUPERSEDED")
    return name


def test_list_revocations_pages_fit_the_largest_message(
    client: VaultClient, long_revoked: str
) -> None:
    """1,000 revocations with the longest reason would be larger than
    server.max_message_bytes: a page ends after the last entry that fits, and its token
    resumes right after it."""
    max_bytes = ServerSettings().max_message_bytes
    parent = long_revoked.split("/keys/")[0]
    pages = every_page(
        lambda token: client.list_revocations(parent, page_size=1000, page_token=token)
    )
    listed = [entry.key_version for page in pages for entry in page.revocations]
    expected = {f"{long_revoked}/versions/{n}" for n in range(1, MANY_VERSIONS + 1)}
    assert len(listed) == len(set(listed)) == MANY_VERSIONS
    assert set(listed) == expected
    assert len(pages) > 1 and all(page.revocations for page in pages)
    assert all(page.ByteSize() <= max_bytes for page in pages)


def test_list_key_versions_pages_by_size_and_page_size(
    client: VaultClient, long_revoked: str, server: VaultServer
) -> None:
    """ListKeyVersions used to answer every version at once: 1,000 revoked with the longest
    reason did not fit in one message. It now pages by page_size (0: up to 1,000) and ends a
    page early to fit, resuming after the last version sent."""
    max_bytes = ServerSettings().max_message_bytes
    expected = [f"{long_revoked}/versions/{n}" for n in range(1, MANY_VERSIONS + 1)]
    assert [v.name for v in client.list_key_versions(long_revoked)] == expected
    with server.channel() as channel:
        stub = key_service_pb2_grpc.KeyServiceStub(channel)

        def pages(page_size: int) -> list[key_service_pb2.ListKeyVersionsResponse]:
            found = []
            token = ""
            while True:
                request = key_service_pb2.ListKeyVersionsRequest(
                    parent=long_revoked, page_size=page_size, page_token=token
                )
                page = stub.ListKeyVersions(request, timeout=30)
                found.append(page)
                token = page.next_page_token
                if not token:
                    return found
                assert len(found) < 20, "pagination does not end"

        cut = pages(0)
        assert len(cut) > 1 and all(page.ByteSize() <= max_bytes for page in cut)
        assert [v.name for page in cut for v in page.key_versions] == expected
        asked = pages(300)
        assert [len(page.key_versions) for page in asked] == [300, 300, 300, 100]
        assert [v.name for page in asked for v in page.key_versions] == expected


def test_revocation_feed_verifies_offline_against_the_pinned_key(
    client: VaultClient, revoked: Revoked, pinned_feed_key: bytes
) -> None:
    before = datetime.now(UTC)
    feed = client.get_revocation_feed(revoked.account)
    # The key that came with the feed is the pinned one; only the pinned one is used.
    assert feed.public_key_der == pinned_feed_key
    assert feed.public_key_sha256 == hashlib.sha256(pinned_feed_key).digest()
    assert verifies(pinned_feed_key, feed.payload, feed.signature)

    parsed = read_feed(feed.payload)
    assert parsed.parent == revoked.account
    assert before - timedelta(seconds=1) <= parsed.generated_at <= datetime.now(UTC)
    listed = {entry.key_version: entry for entry in client.iter_revocations(revoked.account)}
    assert [entry.key_version for entry in parsed.entries] == list(listed)
    for entry in parsed.entries:
        expected = listed[entry.key_version]
        assert entry.reason_code == expected.reason_code
        assert entry.public_key_der == expected.public_key_der
        assert entry.revoke_time == expected.revoke_time.ToDatetime(tzinfo=UTC)
    assert revoked.live not in {
        entry.key_version.split("/versions/")[0] for entry in parsed.entries
    }


def test_a_tampered_feed_does_not_verify(
    client: VaultClient, revoked: Revoked, pinned_feed_key: bytes
) -> None:
    feed = client.get_revocation_feed(revoked.account)
    payload, signature = feed.payload, feed.signature
    assert verifies(pinned_feed_key, payload, signature)
    parsed = read_feed(payload)
    # Drop the last entry (a relying party would then accept a revoked key) and fix up the
    # count: a well-formed feed, with the original signature.
    dropped = payload[: len(payload) - _entry_length(parsed.entries[-1])]
    count_at = 24 + 2 + len(parsed.parent.encode()) + 8
    dropped = (
        dropped[:count_at] + struct.pack(">I", len(parsed.entries) - 1) + dropped[count_at + 4 :]
    )
    assert len(read_feed(dropped).entries) == len(parsed.entries) - 1
    assert not verifies(pinned_feed_key, dropped, signature)
    # Every single flipped bit of the payload, and of the signature's last byte, fails too.
    for position in range(len(payload)):
        flipped = bytearray(payload)
        flipped[position] ^= 0x01
        assert not verifies(pinned_feed_key, bytes(flipped), signature), position
    forged = bytearray(signature)
    forged[-1] ^= 0x01
    assert not verifies(pinned_feed_key, payload, bytes(forged))
    # A feed signed by any other key fails against the pinned key.
    other = ec.generate_private_key(ec.SECP256R1())
    assert not verifies(pinned_feed_key, payload, other.sign(payload, ec.ECDSA(hashes.SHA256())))


def _entry_length(entry: Entry) -> int:
    return 2 + len(entry.key_version.encode()) + 1 + 8 + 2 + len(entry.public_key_der)


def test_feed_key_is_a_token_resident_sign_only_key(keystore: Any) -> None:
    from pkcs11 import Attribute, ObjectClass

    session = keystore._library.context().session
    (private,) = list(
        session.get_objects(
            {
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.LABEL: "vault:system:revocation-feed:1",
            }
        )
    )
    assert private[Attribute.TOKEN] and private[Attribute.PRIVATE]
    assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
    assert private[Attribute.SIGN]
    for capability in (Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE):
        assert not private[capability]


def test_revocations_of_another_account_are_denied_and_admins_see_all(
    server: VaultServer, client: VaultClient, revoked: Revoked
) -> None:
    other = new_account(client, "relying")
    with server.client(add_access_key(client, other).credentials) as as_other:
        # Its own account: allowed, and empty.
        assert list(as_other.iter_revocations(other)) == []
        assert read_feed(as_other.get_revocation_feed(other).payload).entries == []
        for call in (
            lambda: as_other.list_revocations(revoked.account),
            lambda: as_other.get_revocation_feed(revoked.account),
            lambda: as_other.list_revocations("accounts/-"),
            lambda: as_other.get_revocation_feed("accounts/-"),
        ):
            expect_error(DENIED, "PERMISSION_DENIED", call)
    everything = {entry.key_version for entry in client.iter_revocations("accounts/-")}
    assert {*revoked.signing, revoked.symmetric} <= everything
    feed = client.get_revocation_feed("accounts/-")
    assert {e.key_version for e in read_feed(feed.payload).entries} == everything


@pytest.mark.parametrize(
    "parent", ["", "accounts/", "acme", "accounts/Bad_Name", "accounts/a/keys"]
)
def test_revocation_calls_refuse_a_malformed_parent(client: VaultClient, parent: str) -> None:
    for call in (
        lambda: client.list_revocations(parent),
        lambda: client.get_revocation_feed(parent),
    ):
        expect_error(INVALID, "MALFORMED_NAME", call)


def test_list_revocations_refuses_a_negative_page_size(client: VaultClient) -> None:
    expect_error(
        INVALID,
        "INVALID_ARGUMENT",
        lambda: client.list_revocations(new_account_name(client), page_size=-1),
    )
