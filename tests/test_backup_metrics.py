"""ExportBackup, a server-streaming call, is counted in the request metrics like unary calls
(tests/test_observability.py's vault with metrics on)."""

from __future__ import annotations

from tests.support.security_helpers import add_access_key, expect_denied, new_account
from tests.test_observability import (  # noqa: F401 (fixtures)
    ObservedVault,
    admin,
    observed,
    value,
)
from vault.client import VaultClient


def test_exports_are_counted_by_outcome(
    observed: ObservedVault,  # noqa: F811
    admin: VaultClient,  # noqa: F811
) -> None:
    account = new_account(admin, "b").removeprefix("accounts/")
    admin.create_key(f"accounts/{account}", "one", "ENCRYPT_DECRYPT")
    outsider = add_access_key(admin, new_account(admin, "o"))
    before = observed.scrape()
    for _ in range(2):
        assert b"".join(chunk.chunk for chunk in admin.export_backup(accounts=[account]))
    with observed.server.client(outsider.credentials) as other:
        expect_denied(lambda: list(other.export_backup(accounts=[account])))
    after = observed.scrape()
    labels = {"service": "vault.v1.BackupService", "method": "ExportBackup"}

    def delta(code: str) -> float:
        name = "vault_grpc_requests_total"
        return value(after, name, **labels, code=code) - value(before, name, **labels, code=code)

    assert delta("OK") == 2
    assert delta("PERMISSION_DENIED") == 1
