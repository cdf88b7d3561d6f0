"""`vaultctl admin recover`: a new admin access key, made on the vault's machine.

For an operator who lost every admin credential: it needs what only the vault's machine has
(the data directory with the store and the token, and the user PIN), not a credential, so it
talks to the token and the store directly, like `vaultctl token`, and never over gRPC.
"""

from __future__ import annotations

from pathlib import Path

import click

from vault.cli._context import (
    EXIT_LOCAL,
    CliError,
    CliState,
    json_option,
    pass_state,
    private_files,
)
from vault.cli._output import emit, note, print_fields


@click.group("admin")
def admin_group() -> None:
    """Recover administrative access, on the vault's machine.

    \b
    Examples:
      vaultctl admin recover
      vaultctl admin recover --credentials-out /root/vault-admin.json
    """


@admin_group.command("recover")
@click.option(
    "--account",
    default="admin",
    show_default=True,
    help="The admin account the new access key belongs to.",
)
@click.option(
    "--credentials-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the new access key (access_key_id, secret_key) to FILE, mode 0600. "
    "Default: auth.admin_credentials_file (<data_dir>/admin-credentials.json), which "
    "vaultctl on this machine signs with by itself.",
)
@click.option("--force", is_flag=True, help="Replace the file if it exists.")
@json_option
@pass_state
def recover(state: CliState, account: str, credentials_out: Path | None, force: bool) -> None:
    """Create a new admin access key directly in the store and token, and write it to a file.

    Run it where the vault's data directory is, with the same settings as the server (the
    user PIN from hsm.user_pin_file or VAULT_HSM__USER_PIN): holding those is what proves the
    right to administer this vault. It works whether or not the server runs, and a running
    server accepts the key at once. The audit log records it as a CreateAccessKey from
    source `local:USER`. The secret is only written to the file, never printed. Earlier admin
    keys stay valid: list them with `vaultctl access-keys list admin` and revoke the lost ones.
    """
    from vault.app import recover_admin

    settings = state.settings()
    target = credentials_out or settings.auth.admin_credentials_file
    assert target is not None  # filled from data_dir by Settings
    if target.exists() and not force:
        raise CliError(
            f"{target} exists: give --force to replace it, or --credentials-out FILE",
            exit_code=EXIT_LOCAL,
        )
    private_files()
    access_key_id = recover_admin(settings, target, account)
    data = {
        "access_key_id": access_key_id,
        "name": f"accounts/{account}/accessKeys/{access_key_id}",
        "credentials_file": str(target),
    }

    def human() -> None:
        note(f"created admin access key {access_key_id}; stored in {target} (mode 0600)")
        print_fields([(key.replace("_", " "), value) for key, value in data.items()])

    emit(state, data, human)
