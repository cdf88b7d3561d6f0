"""The environment a test runs vaultctl in (click's CliRunner, in this process)."""

from __future__ import annotations

from typing import Final

# Nothing from the caller's environment may steer the CLI: no settings, data directory, target,
# CA or credentials other than the ones a test passes. None removes the variable for one call.
CLEAN_CLI_ENV: Final[dict[str, str | None]] = {
    name: None
    for name in (
        "VAULT_CONFIG",
        "VAULT_DATA_DIR",
        "VAULT_TARGET",
        "VAULT_CA_FILE",
        "VAULT_CLIENT_CERT_FILE",
        "VAULT_CLIENT_KEY_FILE",
        "VAULT_CREDENTIALS_FILE",
        "VAULT_ACCESS_KEY_ID",
        "VAULT_SECRET_KEY",
        "VAULT_API_KEY",
    )
}
