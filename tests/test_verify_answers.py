"""Verify and VerifyMac answers through the SDK against the real server: the result's truth
value is the verdict (a forgery is false under `if`), and a key name finds the version that
made a signature or MAC, also after rotations, while a forgery still gets one uniform answer.
"""

from __future__ import annotations

import os

import pytest

from tests.support.api_calls import new_account, new_id
from vault.client import AuditLogVerification, VaultClient, Verification

MESSAGE = b"invoice 1042: pay 10 to account 7"


def flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.fixture(scope="module")
def account(client: VaultClient) -> str:
    return new_account(client)


@pytest.mark.parametrize("algorithm", ["EC_SIGN_P256_SHA256", "RSA_SIGN_PSS_2048_SHA256"])
def test_verify_result_is_false_for_a_forgery_and_true_for_the_signature(
    client: VaultClient, account: str, algorithm: str
) -> None:
    name = client.create_key(account, new_id(), "SIGN_VERIFY", algorithm).name
    signature = client.sign(name, message=MESSAGE).signature

    good = client.verify(name, signature, message=MESSAGE)
    assert isinstance(good, Verification)
    assert bool(good) is True and good.valid is True
    assert good.key_version == f"{name}/versions/1"

    forgeries = [
        (flip_last_bit(signature), MESSAGE),
        (signature, MESSAGE + b"0"),
        (os.urandom(len(signature)), MESSAGE),
        (b"", MESSAGE),
    ]
    for forged, message in forgeries:
        result = client.verify(name, forged, message=message)
        assert bool(result) is False and result.valid is False
        if result:
            pytest.fail("`if` on the result of a forged signature's verify() was true")


def test_verify_mac_result_is_false_for_a_forgery_and_true_for_the_mac(
    client: VaultClient, account: str
) -> None:
    name = client.create_key(account, new_id(), "MAC").name
    mac = client.generate_mac(name, MESSAGE).mac

    good = client.verify_mac(name, MESSAGE, mac)
    assert isinstance(good, Verification)
    assert bool(good) is True and good.valid is True
    assert good.key_version == f"{name}/versions/1"

    for data, forged in [(MESSAGE, flip_last_bit(mac)), (MESSAGE + b"0", mac), (MESSAGE, b"")]:
        result = client.verify_mac(name, data, forged)
        assert bool(result) is False and result.valid is False
        if result:
            pytest.fail("`if` on the result of a forged MAC's verify_mac() was true")


def test_verify_audit_log_result_is_its_verdict(client: VaultClient) -> None:
    result = client.verify_audit_log()
    assert isinstance(result, AuditLogVerification)
    assert bool(result) is result.ok is True
    assert result.records_checked > 0


def test_a_signature_made_before_a_rotation_verifies_by_key_name(
    client: VaultClient, account: str
) -> None:
    name = client.create_key(account, new_id(), "SIGN_VERIFY", "EC_SIGN_P256_SHA256").name
    old = client.sign(name, message=MESSAGE)
    client.rotate_key(name)
    client.rotate_key(name)
    new = client.sign(name, message=MESSAGE)
    assert (old.key_version, new.key_version) == (f"{name}/versions/1", f"{name}/versions/3")

    by_key = client.verify(name, old.signature, message=MESSAGE)
    assert by_key and by_key.key_version == f"{name}/versions/1"
    latest = client.verify(name, new.signature, message=MESSAGE)
    assert latest and latest.key_version == f"{name}/versions/3"

    # A named version checks that version only.
    assert client.verify(f"{name}/versions/1", old.signature, message=MESSAGE)
    assert not client.verify(f"{name}/versions/3", old.signature, message=MESSAGE)
    assert not client.verify(f"{name}/versions/2", old.signature, message=MESSAGE)

    # A forgery matches no version, and gets the answer any failure gets: invalid, primary.
    for forged in (flip_last_bit(old.signature), flip_last_bit(new.signature)):
        result = client.verify(name, forged, message=MESSAGE)
        assert not result
        assert result.key_version == f"{name}/versions/3"
    wrong_message = client.verify(name, old.signature, message=MESSAGE + b"!")
    assert (wrong_message.valid, wrong_message.key_version) == (False, f"{name}/versions/3")


def test_a_mac_made_before_a_rotation_verifies_by_key_name(
    client: VaultClient, account: str
) -> None:
    name = client.create_key(account, new_id(), "MAC").name
    old = client.generate_mac(name, MESSAGE).mac
    client.rotate_key(name)
    new = client.generate_mac(name, MESSAGE).mac
    assert old != new

    by_key = client.verify_mac(name, MESSAGE, old)
    assert by_key and by_key.key_version == f"{name}/versions/1"
    latest = client.verify_mac(name, MESSAGE, new)
    assert latest and latest.key_version == f"{name}/versions/2"
    assert not client.verify_mac(f"{name}/versions/2", MESSAGE, old)

    forged = client.verify_mac(name, MESSAGE, flip_last_bit(old))
    assert (forged.valid, forged.key_version) == (False, f"{name}/versions/2")
