"""A bundle is checked in one pass that keeps no entry (vault.domain.backup.BundleReader,
vault.service.backup.verify_bundle): a bundle of any size takes the memory of its longest line.
The bundle is signed with a software P-256 key, as in tests/test_backup_format.py."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.domain.backup import (
    MAX_LINE_BYTES,
    BundleWriter,
    Selection,
    Skipped,
    SkipReason,
    check_bundle,
    fingerprint,
    read_bundle,
    read_lines,
    skipped_entry,
)
from vault.domain.ceremony import TokenIdentity
from vault.domain.errors import BackupInvalid
from vault.service.backup import verify_bundle

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
TOKEN = TokenIdentity("vault", "0123456789abcdef", "SoftHSM project", "SoftHSM v2")
# 200 entries of 100 KB: 20 MB kept, far more than the few lines a pass holds at a time.
ENTRIES = 200
DETAIL_BYTES = 100_000


class OneShot:
    """A bundle's lines, made as they are asked for (the source holds none of them), and only
    once: a second pass over them fails."""

    def __init__(self, entries: int) -> None:
        self.signer = ec.generate_private_key(ec.SECP256R1())
        public = self.signer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.fingerprint = fingerprint(public)
        self._writer = BundleWriter("e1", NOW, Selection(), TOKEN, public)
        self._entries = entries
        self.passes = 0

    def __iter__(self) -> Iterator[bytes]:
        self.passes += 1
        assert self.passes == 1, "the bundle's lines were read twice"
        yield self._writer.header_line()
        for number in range(self._entries):
            detail = f"{number:06d}".ljust(DETAIL_BYTES, "x")
            item = Skipped(f"accounts/acme/keys/k{number:06d}", SkipReason.TOKEN_RESIDENT, detail)
            yield self._writer.entry_line(skipped_entry(item))
        payload, summary = self._writer.signed_payload()
        signature = self.signer.sign(payload, ec.ECDSA(hashes.SHA256()))
        yield self._writer.trailer_line(summary, signature)


def test_verification_reads_the_lines_once_and_keeps_no_entry() -> None:
    source = OneShot(ENTRIES)
    tracemalloc.start()
    try:
        verified = verify_bundle(source, source.fingerprint)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert source.passes == 1
    assert verified.signer_fingerprint == source.fingerprint
    assert verified.bundle.counts == {"key": 0, "bucket": 0, "tombstone": 0, "skipped": ENTRIES}
    # A few copies of one line (its bytes, its parsed form, its canonical form), not 20 MB.
    assert peak < 20 * DETAIL_BYTES
    assert not hasattr(verified.bundle, "entries")


def test_read_bundle_keeps_the_entries_in_order() -> None:
    bundle = read_bundle(OneShot(3))
    assert [entry["name"] for entry in bundle.entries] == [
        f"accounts/acme/keys/k{number:06d}" for number in range(3)
    ]
    assert bundle.counts["skipped"] == 3


def test_a_bundle_file_is_read_a_bounded_line_at_a_time() -> None:
    data = b"".join(OneShot(2))
    assert b"".join(read_lines(io.BytesIO(data))) == data
    assert check_bundle(read_lines(io.BytesIO(data))).counts["skipped"] == 2
    # A line over the limit comes cut, without its line feed, and is refused as such.
    endless = io.BytesIO(data.splitlines(True)[0] + b"x" * (2 * MAX_LINE_BYTES))
    lines = read_lines(endless)
    next(lines)
    assert len(next(lines)) == MAX_LINE_BYTES + 1
    with pytest.raises(BackupInvalid, match="truncated or malformed"):
        check_bundle(read_lines(io.BytesIO(data.splitlines(True)[0] + b"x" * MAX_LINE_BYTES)))


def test_a_restore_copy_that_does_not_fit_fails_as_a_full_disk() -> None:
    import errno

    from vault.domain.errors import DiskFull
    from vault.service.backup import _copying

    class FullDisk(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull):
        list(_copying([b"{}\n"], FullDisk()))
