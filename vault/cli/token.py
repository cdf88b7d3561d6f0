"""`vaultctl token init|status`: provision and inspect the PKCS#11 token on this machine.

These commands talk to the token directly (not through a server), in a process that exits
afterwards: provisioning must not share a process with a server (DESIGN.md section 4).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

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
from vault.config import Settings
from vault.so_pin import describe_source

if TYPE_CHECKING:
    from vault.domain.token import TokenStatus


@click.group("token")
def token_group() -> None:
    """Provision and inspect the vault's PKCS#11 token.

    The token, its SoftHSM2 configuration, the user PIN file and the metadata store live in
    the data directory (data_dir, default ./.vault-data). PINs are never printed and never
    read from the command line. The user PIN: VAULT_HSM__USER_PIN or hsm.user_pin_file
    (default <data_dir>/secrets/user.pin, generated 0600 for a development token).

    The SO PIN is needed only to initialise a token and is never kept in the data
    directory: VAULT_HSM__SO_PIN, or hsm.so_pin_file (a file outside the data directory), or
    a hidden prompt (twice) when run on a terminal. Without any of these (make run, CI), a
    development SO PIN is generated into $XDG_STATE_HOME/vault/ (default
    ~/.local/state/vault/, mode 0600), and its path is printed when it is created.

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
    """Initialise the token, set its PINs, create the root keys; record them in the store.

    Idempotent: each step checks what exists first, so running it again on a provisioned
    token changes nothing and exits 0 (`make run` runs it every time). On a token with a
    single root per generation (made by older versions) it adds a generation of per-family
    roots; on a data directory holding secrets/so.pin it moves that file out. Refused while
    a server runs on the same data directory (it holds <data_dir>/vault.lock).
    """
    # Imported here: loading the PKCS#11 and database layers is slow and needless for --help.
    from vault.app import provision_token
    from vault.data_lock import DataDirectoryInUse, DataDirectoryLock
    from vault.so_pin import SoPinCustodyError, obtain

    settings = state.settings()
    private_files()
    # Created here, before the store: SQLite would otherwise create the directory's database
    # first and leave the directory itself with the umask's default mode.
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # A server running on this data directory has its token and store open; provisioning
    # beside it could initialise a token or rewrite the SoftHSM configuration under it, and
    # `make run` would go on to start a second server.
    try:
        data_lock = DataDirectoryLock.acquire(settings.data_dir, holder="vaultctl token init")
    except DataDirectoryInUse as error:
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None
    prompt = _prompt_so_pin if sys.stdin.isatty() else None
    with data_lock:
        try:
            status = provision_token(settings, lambda: obtain(settings, prompt))
        except SoPinCustodyError as error:
            raise CliError(str(error), exit_code=EXIT_LOCAL) from None
    if status.so_pin_moved is not None:
        moved_from, moved_to = status.so_pin_moved
        note(f"moved the SO PIN out of the data directory: {moved_from} -> {moved_to}")
    if status.so_pin_created is not None:
        note(
            f"development SO PIN written to {status.so_pin_created} (mode 0600, outside the "
            "data directory); the server never needs it"
        )
    data = _status_data(status, settings)
    if status.initialised_now:
        summary = f"token {status.label!r} initialised"
    elif status.root_created_now:
        summary = (
            f"token {status.label!r} was initialised; per-family root keys of generation "
            f"{max(status.root_generations)} created"
        )
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
    from vault.app import token_status

    settings = state.settings()
    status = token_status(settings)
    data = _status_data(status, settings)
    emit(state, data, lambda: _print_status(data))


def _prompt_so_pin() -> str:
    value: str = click.prompt(
        "SO PIN for the new token", hide_input=True, confirmation_prompt=True, err=True
    )
    return value


def _user_pin_source(settings: Settings) -> str:
    # Where the PIN comes from, never the PIN: an operator needs to know which file to
    # protect or back up.
    if settings.hsm.user_pin is not None:
        return "environment (VAULT_HSM__USER_PIN) or config file"
    return f"file {settings.hsm.user_pin_file}"


def _legacy_note(generations: list[int]) -> str:
    if not generations:
        return "none"
    # README, Key hierarchy: these roots pin less of what they unwrap.
    return (
        f"{generations}: made before per-family roots; versions wrapped under them stay "
        "open to the weaker unwrap template until destroyed or replaced"
    )


def _status_data(status: TokenStatus, settings: Settings) -> dict[str, Any]:
    return {
        "label": status.label,
        "serial": status.serial,
        "manufacturer": status.manufacturer,
        "model": status.model,
        "root_generations": list(status.root_generations),
        "legacy_root_generations": list(status.legacy_root_generations),
        "key_objects": status.key_objects,
        "mechanisms": status.mechanisms,
        "initialised_now": status.initialised_now,
        "root_created_now": status.root_created_now,
        "data_dir": str(settings.data_dir),
        "module": str(settings.hsm.module),
        "softhsm_conf": str(settings.hsm.softhsm_conf),
        "user_pin_source": _user_pin_source(settings),
        "so_pin_source": describe_source(settings),
    }


def _print_status(data: dict[str, Any]) -> None:
    print_fields(
        [
            ("token label", data["label"]),
            ("serial", data["serial"]),
            ("manufacturer", data["manufacturer"]),
            ("model", data["model"]),
            ("root key generations", data["root_generations"]),
            ("single-root generations", _legacy_note(data["legacy_root_generations"])),
            ("token key objects", data["key_objects"]),
            ("mechanisms offered", data["mechanisms"]),
            ("data directory", data["data_dir"]),
            ("PKCS#11 module", data["module"]),
            ("SoftHSM2 config", data["softhsm_conf"]),
            ("user PIN from", data["user_pin_source"]),
            ("SO PIN from", data["so_pin_source"]),
        ]
    )
