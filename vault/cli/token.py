"""`vaultctl token init|status`: provision and inspect the PKCS#11 token on this machine.

These commands talk to the token directly (not through a server), in a process that exits
afterwards: provisioning must not share a process with a server (DESIGN.md section 4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from vault.cli._context import CliState, json_option, pass_state, private_files
from vault.cli._output import emit, note, print_fields
from vault.config import Settings

if TYPE_CHECKING:
    from vault.hsm.provision import TokenStatus


@click.group("token")
def token_group() -> None:
    """Provision and inspect the vault's PKCS#11 token.

    The token, its SoftHSM2 configuration, the PIN files and the metadata store live in the
    data directory (data_dir, default ./.vault-data). PINs are never printed and never read
    from the command line: set VAULT_HSM__USER_PIN / VAULT_HSM__SO_PIN, or point
    hsm.user_pin_file / hsm.so_pin_file at files of mode 0600. For a development token,
    `token init` generates both PINs into <data_dir>/secrets/ (mode 0600).

    \b
    Examples:
      vaultctl token init
      vaultctl token status --json
      VAULT_DATA_DIR=/var/lib/vault vaultctl token init
    """


@token_group.command("init")
@json_option
@pass_state
def token_init(state: CliState) -> None:
    """Initialise the token, set its PINs, create the first root key; record it in the store.

    Idempotent: each step checks what exists first, so running it again on a provisioned
    token changes nothing and exits 0 (`make run` runs it every time).
    """
    # Imported here: loading the PKCS#11 and database layers is slow and needless for --help.
    from vault.hsm.provision import provision
    from vault.storage import open_store

    settings = state.settings()
    assert settings.store.url is not None  # filled from data_dir by Settings
    private_files()
    # Created here, before the store: SQLite would otherwise create the directory's database
    # first and leave the directory itself with the umask's default mode.
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_store(settings.store.url)
    try:
        status = provision(settings, store)
    finally:
        store.close()
    data = _status_data(status, settings)
    if status.initialised_now:
        summary = f"token {status.label!r} initialised"
    elif status.root_created_now:
        summary = f"token {status.label!r} was initialised; root key created"
    else:
        summary = f"token {status.label!r} already provisioned; nothing changed"

    def human() -> None:
        note(summary)
        _print_status(data)

    emit(state, data, human)


@token_group.command("status")
@json_option
@pass_state
def token_status_command(state: CliState) -> None:
    """Show the token's identity, root key generations and object counts (logs in as user)."""
    from vault.hsm.provision import token_status

    settings = state.settings()
    status = token_status(settings)
    data = _status_data(status, settings)
    emit(state, data, lambda: _print_status(data))


def _pin_source(settings: Settings, which: str) -> str:
    # Where the PIN comes from, never the PIN: an operator needs to know which file to
    # protect or back up.
    if which == "user":
        value, path = settings.hsm.user_pin, settings.hsm.user_pin_file
    else:
        value, path = settings.hsm.so_pin, settings.hsm.so_pin_file
    if value is not None:
        return f"environment (VAULT_HSM__{which.upper()}_PIN) or config file"
    return f"file {path}"


def _status_data(status: TokenStatus, settings: Settings) -> dict[str, Any]:
    return {
        "label": status.label,
        "serial": status.serial,
        "manufacturer": status.manufacturer,
        "model": status.model,
        "root_generations": list(status.root_generations),
        "key_objects": status.key_objects,
        "mechanisms": status.mechanisms,
        "initialised_now": status.initialised_now,
        "root_created_now": status.root_created_now,
        "data_dir": str(settings.data_dir),
        "module": str(settings.hsm.module),
        "softhsm_conf": str(settings.hsm.softhsm_conf),
        "user_pin_source": _pin_source(settings, "user"),
        "so_pin_source": _pin_source(settings, "so"),
    }


def _print_status(data: dict[str, Any]) -> None:
    print_fields(
        [
            ("token label", data["label"]),
            ("serial", data["serial"]),
            ("manufacturer", data["manufacturer"]),
            ("model", data["model"]),
            ("root key generations", data["root_generations"]),
            ("token key objects", data["key_objects"]),
            ("mechanisms offered", data["mechanisms"]),
            ("data directory", data["data_dir"]),
            ("PKCS#11 module", data["module"]),
            ("SoftHSM2 config", data["softhsm_conf"]),
            ("user PIN from", data["user_pin_source"]),
            ("SO PIN from", data["so_pin_source"]),
        ]
    )
