"""`vaultctl serve`: run the gRPC server in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from vault.cli._context import (
    EXIT_LOCAL,
    CliError,
    CliState,
    json_option,
    pass_state,
    private_files,
)
from vault.config import Settings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@click.command("serve")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Address to bind, overriding server.listen (VAULT_SERVER__LISTEN): a loopback "
    "host:port or unix:PATH. Default: 127.0.0.1:50051.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Server processes sharing the port, overriding server.workers "
    "(VAULT_SERVER__WORKERS). Default: 2.",
)
@json_option
@pass_state
def serve_command(state: CliState, listen: str | None, workers: int | None) -> None:
    """Serve the vault's gRPC API (KeyService, CryptoService, health, reflection).

    Provision the token first (`vaultctl token init`; `make run` does both). Start-up
    reconciles the store with the token, then the worker processes serve until Ctrl-C or
    SIGTERM. The user PIN comes from hsm.user_pin_file or VAULT_HSM__USER_PIN, never from
    the command line. Until TLS can be configured the server binds only loopback addresses
    and unix: sockets. Logs go to stderr at log_level (VAULT_LOG_LEVEL).

    \b
    Examples:
      vaultctl serve
      vaultctl serve --listen 127.0.0.1:50052 --workers 4
      vaultctl serve --listen unix:/run/vault/vault.sock --workers 1
      VAULT_CONFIG=/etc/vault/vault.toml vaultctl serve
    """
    server: dict[str, Any] = {}
    if listen is not None:
        server["listen"] = listen
    if workers is not None:
        server["workers"] = workers
    settings = state.settings(server=server) if server else state.settings()
    _configure_logging(settings)
    private_files()
    if state.json:
        # One line, so a supervisor can parse it before the server's own output follows.
        click.echo(json.dumps(_start_event(settings), sort_keys=True))
    # Imported here: grpc and the generated code load only in the command that serves.
    from vault.transport.server import ListenAddressError
    from vault.transport.supervisor import serve

    try:
        serve(settings)
    except ListenAddressError as error:
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None
    except RuntimeError as error:
        # serve() has logged the details; this is the summary a person reads last.
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None


def _configure_logging(settings: Settings) -> None:
    level = settings.log_level.upper()
    if level not in LOG_LEVELS:
        raise CliError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, not {settings.log_level!r}",
            exit_code=EXIT_LOCAL,
        )
    # processName tells the supervisor's lines from each worker's.
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    if level != "DEBUG":
        # Alembic announces each of its plugins at INFO in every process that opens the store.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _start_event(settings: Settings) -> dict[str, Any]:
    return {
        "event": "starting",
        "listen": settings.server.listen,
        "workers": settings.server.workers,
        "threads": settings.server.threads,
        "data_dir": str(settings.data_dir),
        "token_label": settings.hsm.token_label,
    }
