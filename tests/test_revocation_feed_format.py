"""The revocation feed's serialisation as pure logic: fixed bytes for a fixed input (so a
change of layout cannot pass unnoticed), and a reader that refuses anything else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vault.domain.algorithms import Algorithm
from vault.domain.models import Revocation, RevocationReason
from vault.domain.names import KeyVersionName
from vault.domain.revocation_feed import MAGIC, parse, serialise

WHEN = datetime(2026, 12, 3, 0, 0, 1, 500, tzinfo=UTC)


def entry(key: str, reason: RevocationReason | None, public: bytes | None) -> Revocation:
    return Revocation(
        KeyVersionName("acme", key, 2), Algorithm.EC_SIGN_P256_SHA256, reason, WHEN, public
    )


def test_layout_byte_by_byte() -> None:
    payload = serialise(
        "accounts/acme",
        WHEN,
        [entry("a", RevocationReason.COMPROMISED, b"\x30\x01"), entry("b", None, None)],
    )
    micros = (1_796_256_001_000_500).to_bytes(8, "big")
    assert payload == (
        b"vault-revocation-feed/1\n"
        + b"\x00\x0daccounts/acme"
        + micros
        + b"\x00\x00\x00\x02"
        + b"\x00\x1f"
        + b"accounts/acme/keys/a/versions/2"
        + b"\x01"
        + micros
        + b"\x00\x02\x30\x01"
        + b"\x00\x1f"
        + b"accounts/acme/keys/b/versions/2"
        + b"\x00"
        + micros
        + b"\x00\x00"
    )
    assert len(MAGIC) == 24


def test_parse_reads_back_what_serialise_wrote() -> None:
    payload = serialise("accounts/-", WHEN, [entry("k", RevocationReason.SUPERSEDED, b"pk")])
    feed = parse(payload)
    assert feed.parent == "accounts/-"
    (only,) = feed.entries
    assert (only.key_version, only.reason_code, only.public_key_der) == (
        "accounts/acme/keys/k/versions/2",
        2,
        b"pk",
    )


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_parse_refuses_truncated_extended_and_foreign_bytes(cut: int) -> None:
    payload = serialise("accounts/acme", WHEN, [entry("k", None, b"pk")])
    with pytest.raises(ValueError):
        parse(payload[:-cut])
    with pytest.raises(ValueError):
        parse(payload + b"\x00")
    with pytest.raises(ValueError):
        parse(b"vault-revocation-feed/2\n" + payload[len(MAGIC) :])
