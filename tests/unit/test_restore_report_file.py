"""The report file a restore writes next to its bundle (BundleFiles.write_report): named after
the bundle and the restore's time within a file name's 255 bytes, mode 0600, and complete or
absent."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vault.service.backup import BundleFiles

WHEN = datetime(2026, 12, 3, 11, 45, 0, 123456, tzinfo=UTC)


def test_the_report_is_named_after_the_bundle_and_the_time_with_mode_0600(
    tmp_path: Path,
) -> None:
    files = BundleFiles(tmp_path)
    name = files.write_report("vault.bundle", WHEN, [b'{"a":1}\n', b'{"b":2}\n'])
    assert name == "vault.bundle.restore-20261203T114500123456Z.jsonl"
    path = tmp_path / name
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [name]

    longest = files.write_report("b" * 255, WHEN, [])
    assert len(longest) == 255 and longest.endswith(".restore-20261203T114500123456Z.jsonl")


def test_a_report_that_fails_midway_leaves_no_file(tmp_path: Path) -> None:
    def lines() -> Iterator[bytes]:
        yield b'{"a":1}\n'
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        BundleFiles(tmp_path).write_report("vault.bundle", WHEN, lines())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        BundleFiles(tmp_path / "missing").write_report("vault.bundle", WHEN, [])
