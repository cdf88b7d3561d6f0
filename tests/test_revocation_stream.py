"""StreamRevocationFeed against the smallest server.max_message_bytes (65,536), on a real
server with its own SoftHSM token and store: a feed larger than one message streams in
chunks and verifies against the pinned feed key, where GetRevocationFeed on the same data is
RESOURCE_EXHAUSTED; a feed that fits both ways is the same payload byte for byte; the stream
is authorised as GetRevocationFeed is; and `vaultctl keys revocation-feed` writes files
`openssl dgst -sha256 -verify` accepts.

The feed is read with tests.test_revocation's independent parser (the layout in README.md,
"Revocation feed"), and the pinned key is read from this server's token by a process of its
own (the pytest process has the session token open)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Final

import grpc
import pytest
from click.testing import CliRunner

from tests.support.api_calls import expect_error
from tests.support.harness import ROOT, VaultServer, vault_environment
from tests.support.security_helpers import add_access_key, add_api_key, new_account
from tests.support.small_messages import SMALLEST
from tests.test_revocation import read_feed, verifies
from vault.cli.main import cli
from vault.client import VaultClient
from vault.gen.vault.v1 import key_service_pb2

# Payload bytes per streamed message (vault.service.revocations.CHUNK_BYTES).
CHUNK: Final = 60 * 1024
# The feed of FITS is larger than one chunk and smaller than one message with its signature
# and key (about 200 bytes); every account's together is larger than a message.
FITS_TARGET: Final = 63_500
# Key ids of the longest kind: fewer versions (each a token operation) per byte of feed.
LONG_ID: Final = 63
# The bytes of an entry besides its name and public key (README's layout).
ENTRY_FIXED: Final = 2 + 1 + 8 + 2
P256_SPKI: Final = 91
DENIED: Final = grpc.StatusCode.PERMISSION_DENIED

_FEED_KEY = """
import sys
from pkcs11 import Attribute, ObjectClass
from vault.config import Settings
from vault.domain.algorithms import Algorithm
from vault.hsm.keystore import open_keystore
from vault.hsm.public import public_key_der
session = open_keystore(Settings())._library.context().session
(public,) = session.get_objects(
    {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: "vault:system:revocation-feed:1"}
)
sys.stdout.write(public_key_der(Algorithm.EC_SIGN_P256_SHA256, public).hex())
"""


@pytest.fixture(scope="module")
def admin(small: VaultServer) -> Iterator[VaultClient]:
    with small.client() as client:
        yield client


@pytest.fixture(scope="module")
def pinned_feed_key(small: VaultServer) -> bytes:
    """The feed key's public half read from the server's token: what an operator pins."""
    done = subprocess.run(
        [sys.executable, "-c", _FEED_KEY],
        env=vault_environment(small.data_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return bytes.fromhex(done.stdout)


def _header_size(parent: str) -> int:
    return 24 + 2 + len(parent.encode()) + 8 + 4


def _entry_size(version_name: str, public_bytes: int = 0) -> int:
    return ENTRY_FIXED + len(version_name.encode()) + public_bytes


def _long_id(tag: str) -> str:
    return f"{tag}-{os.urandom(4).hex()}".ljust(LONG_ID, "x")


@dataclass(frozen=True)
class Feeds:
    fits: str  # an account whose feed fits one message, but not one chunk
    everything: set[str]  # every version revoked on the server


def _revoke_versions_until(admin: VaultClient, account: str, size: int, target: int) -> int:
    """Make a MAC key of as many versions as bring a feed of size bytes to target, revoke
    it; the feed's new size."""
    key = admin.create_key(account, _long_id("m"), "MAC").name
    versions = 1
    size += _entry_size(f"{key}/versions/1")
    while size + _entry_size(f"{key}/versions/{versions + 1}") <= target:
        admin.rotate_key(key)
        versions += 1
        size += _entry_size(f"{key}/versions/{versions}")
    admin.revoke_key(key, reason_code="SUPERSEDED")
    return size


@pytest.fixture(scope="module")
def feeds(admin: VaultClient) -> Feeds:
    fits = new_account(admin, "fits")
    size = _header_size(fits)
    signing = admin.create_key(fits, _long_id("s"), "SIGN_VERIFY").name
    admin.revoke_key(signing, "leaked", reason_code="COMPROMISED")
    size += _entry_size(f"{signing}/versions/1", P256_SPKI)
    sealing = admin.create_key(fits, _long_id("e"), "ENCRYPT_DECRYPT").name
    admin.revoke_key(sealing, reason_code="CESSATION_OF_OPERATION")
    size += _entry_size(f"{sealing}/versions/1")
    _revoke_versions_until(admin, fits, size, FITS_TARGET)
    # Another account: every account's feed together is then larger than one message.
    other = new_account(admin, "more")
    _revoke_versions_until(admin, other, _header_size("accounts/-") - _header_size(fits), 6_000)
    everything = {entry.key_version for entry in admin.iter_revocations("accounts/-")}
    return Feeds(fits, everything)


def _stream(client: VaultClient, parent: str) -> list[key_service_pb2.RevocationFeedChunk]:
    return list(client.stream_revocation_feed(parent))


def test_a_feed_larger_than_a_message_streams_and_verifies_against_the_pinned_key(
    admin: VaultClient, feeds: Feeds, pinned_feed_key: bytes
) -> None:
    messages = _stream(admin, "accounts/-")
    payload = b"".join(message.chunk for message in messages)
    assert len(payload) > SMALLEST
    assert len(messages) > 1 and all(message.ByteSize() <= SMALLEST for message in messages)
    assert not any(message.signature or message.public_key_der for message in messages[:-1])
    last = messages[-1]
    assert last.public_key_der == pinned_feed_key
    assert last.public_key_sha256 == hashlib.sha256(pinned_feed_key).digest()
    assert verifies(pinned_feed_key, payload, last.signature)

    parsed = read_feed(payload)
    assert parsed.parent == "accounts/-"
    listed = {entry.key_version: entry for entry in admin.iter_revocations("accounts/-")}
    assert [entry.key_version for entry in parsed.entries] == list(listed)
    assert set(listed) == feeds.everything
    for entry in parsed.entries:
        expected = listed[entry.key_version]
        assert entry.reason_code == expected.reason_code
        assert entry.public_key_der == expected.public_key_der
        assert entry.revoke_time == expected.revoke_time.ToDatetime(tzinfo=UTC)


def test_get_revocation_feed_of_the_same_data_is_too_large_for_a_message(
    admin: VaultClient, feeds: Feeds
) -> None:
    expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "", lambda: admin.get_revocation_feed("accounts/-")
    )


def test_a_feed_that_fits_both_ways_is_the_same_payload(
    admin: VaultClient, feeds: Feeds, pinned_feed_key: bytes
) -> None:
    whole = admin.get_revocation_feed(feeds.fits)
    messages = _stream(admin, feeds.fits)
    streamed = b"".join(message.chunk for message in messages)
    # Larger than one chunk: the comparison spans a chunk boundary.
    assert len(messages) == 2 and CHUNK < len(streamed) <= SMALLEST
    # The same bytes but for "generated at" (u64 after the magic and the parent).
    at = _header_size(feeds.fits) - 12
    assert streamed[:at] == whole.payload[:at]
    assert streamed[at + 8 :] == whole.payload[at + 8 :]
    assert read_feed(streamed).entries == read_feed(whole.payload).entries
    assert verifies(pinned_feed_key, streamed, messages[-1].signature)
    assert verifies(pinned_feed_key, whole.payload, whole.signature)


def test_a_caller_without_read_on_the_account_is_refused_before_anything_is_read(
    small: VaultServer, admin: VaultClient, feeds: Feeds
) -> None:
    outsider = new_account(admin, "relying")
    one_key = admin.create_key(feeds.fits, _long_id("g"), "MAC").name
    narrow = add_access_key(
        admin, feeds.fits, grants=[(one_key.split(f"{feeds.fits}/")[1], "FULL")]
    )
    with small.client(add_access_key(admin, outsider).credentials) as as_outsider:
        # Its own account: allowed, and empty.
        (only,) = _stream(as_outsider, outsider)
        assert read_feed(only.chunk).entries == [] and only.signature
        for parent in (feeds.fits, "accounts/-", "accounts/Not_A_Name"):
            expect_error(DENIED, "PERMISSION_DENIED", lambda: _stream(as_outsider, parent))
    # FULL on one key of the account is not READ on keys/*.
    with small.client(narrow.credentials) as as_narrow:
        expect_error(DENIED, "PERMISSION_DENIED", lambda: _stream(as_narrow, feeds.fits))
    # An API key scoped to GetRevocationFeed may stream the same feed; one scoped to
    # anything else may not.
    scoped = add_api_key(admin, feeds.fits, [(["GetRevocationFeed"], ["*"])])
    with small.client(scoped.credentials) as as_scoped:
        streamed = b"".join(message.chunk for message in _stream(as_scoped, feeds.fits))
        assert read_feed(streamed).parent == feeds.fits
    other = add_api_key(admin, feeds.fits, [(["GetPublicKey", "ListRevocations"], ["*"])])
    with small.client(other.credentials) as as_other:
        expect_error(DENIED, "PERMISSION_DENIED", lambda: _stream(as_other, feeds.fits))


def test_the_cli_writes_a_feed_larger_than_a_message_that_openssl_verifies(
    small: VaultServer, feeds: Feeds, pinned_feed_key: bytes, tmp_path: Path
) -> None:
    prefix = tmp_path / "all"
    result = CliRunner().invoke(
        cli,
        ["--target", small.target, "keys", "revocation-feed", "-", "--out", str(prefix)],
        env={"VAULT_CREDENTIALS_FILE": str(small.data_dir / "admin-credentials.json")},
        prog_name="vaultctl",
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert hashlib.sha256(pinned_feed_key).hexdigest() in result.stderr
    feed = Path(f"{prefix}.feed")
    assert feed.stat().st_size > SMALLEST
    assert {entry.key_version for entry in read_feed(feed.read_bytes()).entries} == (
        feeds.everything
    )
    verify = ["openssl", "dgst", "-sha256", "-verify", f"{prefix}.pem"]
    verify += ["-signature", f"{prefix}.sig", str(feed)]
    checked = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stdout.strip() == "Verified OK", checked
    spki = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", f"{prefix}.pem", "-outform", "DER"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert spki.stdout == pinned_feed_key
    tampered = bytearray(feed.read_bytes())
    tampered[-1] ^= 0x01
    feed.write_bytes(bytes(tampered))
    assert subprocess.run(verify, capture_output=True, timeout=60).returncode != 0
