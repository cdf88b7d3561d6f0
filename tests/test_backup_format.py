"""Unit tests of the backup bundle's format and its offline check (vault.domain.backup,
vault.service.backup.verify_bundle): a bundle signed with a software P-256 key stands in for
the token's backup key, whose path the two-token tests cover."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.domain.algorithms import Algorithm, Purpose
from vault.domain.backup import (
    BundleWriter,
    Selection,
    Skipped,
    SkipReason,
    fingerprint,
    key_entry,
    key_from_entry,
    read_bundle,
    skipped_entry,
    split_lines,
    tombstone_entry,
)
from vault.domain.ceremony import TokenIdentity
from vault.domain.errors import BackupInvalid
from vault.domain.models import Key, KeyState, KeyVersion, RevocationReason, VersionState
from vault.domain.names import KeyName
from vault.service.backup import verify_bundle

NOW = datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
TOKEN = TokenIdentity("vault", "0123456789abcdef", "SoftHSM project", "SoftHSM v2")


def _key() -> tuple[Key, list[KeyVersion]]:
    name = KeyName("acme", "orders")
    key = Key(
        name=name,
        purpose=Purpose.ENCRYPT_DECRYPT,
        algorithm=Algorithm.AES_256_GCM,
        state=KeyState.ENABLED,
        primary_version=2,
        create_time=NOW,
        update_time=NOW,
        labels={"team": "shop"},
    )
    versions = [
        KeyVersion(name.version(1), VersionState.DESTROYED, NOW, None, None, None, None, NOW),
        KeyVersion(name.version(2), VersionState.ENABLED, NOW, 1, b"\x01" * 40, None),
    ]
    return key, versions


def bundle(signer: ec.EllipticCurvePrivateKey | None = None) -> tuple[bytes, str]:
    signer = signer or ec.generate_private_key(ec.SECP256R1())
    public = signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    writer = BundleWriter("e1", NOW, Selection(accounts=("acme",)), TOKEN, public)
    key, versions = _key()
    data = writer.header_line()
    data += writer.entry_line(key_entry(key, versions))
    data += writer.entry_line(
        tombstone_entry(
            "accounts/acme/keys/old", KeyState.REVOKED, NOW, RevocationReason.COMPROMISED, "leak"
        )
    )
    data += writer.entry_line(
        skipped_entry(Skipped("accounts/acme/keys/hsm", SkipReason.TOKEN_RESIDENT))
    )
    payload, summary = writer.signed_payload()
    data += writer.trailer_line(summary, signer.sign(payload, ec.ECDSA(hashes.SHA256())))
    return data, fingerprint(public)


def test_a_signed_bundle_verifies_offline_and_round_trips_its_keys() -> None:
    data, signer = bundle()
    verified = verify_bundle(split_lines(data), signer)
    assert verified.signer_fingerprint == signer
    assert verified.bundle.counts == {"key": 1, "bucket": 0, "tombstone": 1, "skipped": 1}
    assert verified.bundle.header["token"]["serial"] == TOKEN.serial
    assert key_from_entry(read_bundle(split_lines(data)).entries[0]) == _key()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data.replace(b'"team":"shop"', b'"team":"shoq"'), id="edited"),
        pytest.param(lambda data: b"".join(data.splitlines(True)[:2] + data.splitlines(True)[3:])),
        pytest.param(lambda data: b"".join(data.splitlines(True)[:-1]), id="truncated"),
        pytest.param(lambda data: data[:-1], id="cut-mid-line"),
        pytest.param(
            lambda data: b"".join(
                [
                    data.splitlines(True)[0],
                    *reversed(data.splitlines(True)[1:4]),
                    data.splitlines(True)[4],
                ]
            ),
            id="reordered",
        ),
    ],
)
def test_an_altered_or_incomplete_bundle_is_refused(damage: object) -> None:
    data, _ = bundle()
    assert callable(damage)
    with pytest.raises(BackupInvalid):
        verify_bundle(split_lines(damage(data)))


def test_a_bundle_re_signed_by_another_key_verifies_only_without_a_pin() -> None:
    data, signer = bundle()
    forged, other = bundle(ec.generate_private_key(ec.SECP256R1()))
    verify_bundle(split_lines(forged))  # self-consistent
    with pytest.raises(BackupInvalid, match="another key"):
        verify_bundle(split_lines(forged), signer)
    # The signature covers the header (and with it the public key): swapping keys fails.
    lines = data.splitlines(True)
    swapped = forged.splitlines(True)[0] + b"".join(lines[1:])
    with pytest.raises(BackupInvalid):
        verify_bundle(split_lines(swapped))
    assert other != signer


def test_every_backup_method_needs_the_admin_role_and_changes_are_audited_first() -> None:
    from vault.domain.identity import (
        MUTATING_METHODS,
        CredentialKind,
        Principal,
        ResourceRef,
        authorize,
    )
    from vault.gen.vault.v1 import backup_service_pb2

    service = backup_service_pb2.DESCRIPTOR.services_by_name["BackupService"]
    methods = {method.name for method in service.methods}
    assert methods == {
        "ExportBackup",
        "VerifyBackup",
        "RestoreBackup",
        "StreamRestoreBackup",
        "ListBackups",
    }
    owner = Principal(CredentialKind.ACCESS_KEY, "VK" + "A" * 18, "acme")  # full access to acme
    admin = Principal(CredentialKind.ACCESS_KEY, "VK" + "B" * 18, "ops", admin=True)
    for method in methods:
        assert not authorize(owner, service.full_name, method, [ResourceRef("acme", "")])
        assert not authorize(owner, service.full_name, method, [])
        assert authorize(admin, service.full_name, method, [])
    assert {m for m in methods if m in MUTATING_METHODS} == {
        "ExportBackup",
        "RestoreBackup",
        "StreamRestoreBackup",
    }
