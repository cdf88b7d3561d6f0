"""The admin access key a vault bootstraps at its first start: stored for the CLI with mode
0600, announced by id but never with its secret in a log, made once and kept across restarts."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.support.harness import VaultServer, provision


def test_first_start_bootstraps_one_admin_key_and_restarts_keep_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data_dir: Path = tmp_path_factory.mktemp("bootstrap")
    provision(data_dir)
    stored = data_dir / "admin-credentials.json"
    assert not stored.exists()

    with VaultServer(data_dir) as first:
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        credentials = json.loads(stored.read_text())
        log = first.log()
        # Announced by id; the secret goes to a terminal only, and the server's output here
        # is a log file.
        assert f"bootstrapped admin access key {credentials['access_key_id']}" in log
        assert credentials["secret_key"] not in log
        with first.client() as admin:
            (account,) = admin.list_accounts()
            assert (account.name, account.admin) == ("accounts/admin", True)
            key = admin.get_access_key(f"accounts/admin/accessKeys/{credentials['access_key_id']}")
            assert not key.grants  # unscoped: the admin role

    with VaultServer(data_dir) as second:
        assert "bootstrapped admin access key" not in second.log()
        assert json.loads(stored.read_text()) == credentials
        with second.client() as admin:
            assert [a.name for a in admin.list_accounts()] == ["accounts/admin"]
            assert len(admin.list_access_keys("accounts/admin")) == 1
