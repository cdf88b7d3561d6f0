"""DataDirectoryLock: one holder at a time, and a refusal that names the holder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vault.data_lock import DataDirectoryInUse, DataDirectoryLock


def test_a_second_holder_is_refused_with_who_holds_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with DataDirectoryLock.acquire(data_dir, holder="vaultctl serve", listen="127.0.0.1:1"):
        assert (data_dir / "vault.lock").stat().st_mode & 0o777 == 0o600
        with pytest.raises(DataDirectoryInUse) as refused:
            DataDirectoryLock.acquire(data_dir, holder="vaultctl token init")
        assert str(refused.value) == (
            f"data directory {data_dir} is in use by vaultctl serve (pid {os.getpid()}, "
            "serving on 127.0.0.1:1); one vault per data directory: stop it or set data_dir"
        )
    # Released: the next one gets it, and the file names the new holder only.
    with (
        DataDirectoryLock.acquire(data_dir, holder="vaultctl token init"),
        pytest.raises(DataDirectoryInUse, match=r"in use by vaultctl token init \(pid"),
    ):
        DataDirectoryLock.acquire(data_dir, holder="vaultctl serve")
