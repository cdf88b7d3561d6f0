"""`vaultctl admin recover`: an operator who lost the admin credential makes a new one on the
vault's machine, from the data directory and the user PIN, while the server runs."""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ROOT, VaultServer, provision, vault_environment
from vault.client import VaultClient, load_credentials_file

VAULTCTL = ROOT / ".venv" / "bin" / "vaultctl"


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    data_dir = tmp_path_factory.mktemp("recover")
    provision(data_dir)
    with VaultServer(data_dir) as server:
        yield server


def recover(server: VaultServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VAULTCTL), "--json", "admin", "recover", *args],
        env=vault_environment(server.data_dir, **env),
        cwd=server.data_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_a_lost_admin_credential_is_recovered_on_the_vaults_machine(
    vault: VaultServer,
) -> None:
    stored = vault.data_dir / "admin-credentials.json"
    lost = load_credentials_file(stored).access_key_id
    stored.unlink()  # lost

    done = recover(vault)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    credentials = load_credentials_file(stored)
    assert result["access_key_id"] == credentials.access_key_id != lost
    assert result["name"] == f"accounts/admin/accessKeys/{credentials.access_key_id}"
    assert credentials.secret_key not in done.stdout + done.stderr

    # The running server takes it at once, with the admin role.
    with VaultClient(vault.target, credentials=credentials) as admin:
        assert "accounts/admin" in {account.name for account in admin.list_accounts()}
        events = admin.list_audit_events(method="CreateAccessKey").events
        started, done_event = events[-2], events[-1]
        assert (started.outcome, started.resource) == ("STARTED", "accounts/admin")
        assert (done_event.outcome, done_event.resource) == ("OK", result["name"])
        assert done_event.source.startswith("local:")
        assert admin.verify_audit_log().ok


def test_an_existing_file_is_replaced_only_with_force(vault: VaultServer) -> None:
    stored = vault.data_dir / "admin-credentials.json"
    before = stored.read_text()
    refused = recover(vault)
    assert refused.returncode == 4
    assert "--force" in refused.stderr
    assert stored.read_text() == before
    forced = recover(vault, "--force")
    assert forced.returncode == 0, forced.stderr
    assert stored.read_text() != before


def test_another_file_and_a_wrong_pin(vault: VaultServer, tmp_path: Path) -> None:
    elsewhere = tmp_path / "admin.json"
    done = recover(vault, "--credentials-out", str(elsewhere))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600
    wrong = recover(
        vault, "--credentials-out", str(tmp_path / "x.json"), VAULT_HSM__USER_PIN="wrong"
    )
    assert wrong.returncode == 4
    assert "PIN_INCORRECT" in wrong.stderr
    assert not (tmp_path / "x.json").exists()
