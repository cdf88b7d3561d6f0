"""The `vaultctl` console entry point: global options, command groups, error reporting."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from vault.cli._context import EXIT_LOCAL, EXIT_VAULT, CliError, CliState
from vault.cli.access_keys import access_keys_group
from vault.cli.accounts import accounts_group
from vault.cli.admin import admin_group
from vault.cli.api_keys import api_keys_group
from vault.cli.audit import audit_group
from vault.cli.backup import backup_group
from vault.cli.buckets import buckets_group
from vault.cli.ceremony import ceremony_group
from vault.cli.crypto import crypto_group
from vault.cli.keys import keys_group
from vault.cli.objects import object_group
from vault.cli.serve import serve_command
from vault.cli.status import status_command
from vault.cli.token import token_group
from vault.config import CONFIG_ENV
from vault.domain.errors import VaultError

EPILOG = """\b
Exit codes:
  0  success
  1  verify / verify-mac: the signature or MAC does not match;
     audit verify: the audit log is not intact
  2  usage error (unknown option, missing argument)
  3  the vault refused the request or could not be reached
  4  local error: configuration, an input or output file, the token

\b
Examples:
  vaultctl token init                       # provision the token (idempotent)
  vaultctl serve                            # serve on server.listen (127.0.0.1:50051)
  vaultctl accounts create acme             # keys are made in an existing account
  vaultctl keys create accounts/acme/keys/docs --purpose ENCRYPT_DECRYPT
  vaultctl crypto encrypt accounts/acme/keys/docs --in report.pdf --out report.pdf.enc
  vaultctl --json keys list acme
  vaultctl buckets create accounts/acme/buckets/photos --key-lifetime 15m
  vaultctl object encrypt --bucket accounts/acme/buckets/photos --object-key cat.jpg \\
      --in cat.jpg --out cat.jpg.enc
  vaultctl access-keys create acme --grant keys/docs=READWRITE --credentials-out acme.json
  vaultctl --credentials-file acme.json crypto encrypt accounts/acme/keys/docs --in a.txt
  vaultctl audit verify
  vaultctl admin recover                    # lost the admin key: a new one, on the vault's machine
  vaultctl --target vault.example:50051 --ca-file ca.pem keys list acme   # another machine
"""


class _VaultGroup(click.Group):
    """Turns expected failures into one line on stderr and a documented exit code.

    Anything not recognised here is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        state = ctx.ensure_object(CliState)
        try:
            return super().invoke(ctx)
        except CliError as error:
            failure = error
        except Exception as error:
            translated = (
                None if state.debug else translate(error, state.dialed, ca_file=state.dialed_ca)
            )
            if translated is None:
                raise
            failure = translated
        finally:
            state.close()
        if state.debug:
            raise failure
        failure.as_json = state.json
        failure.show()
        ctx.exit(failure.exit_code)


def translate(
    error: Exception, target: str = "", *, ca_file: Path | None = None
) -> CliError | None:
    """The CliError for an expected failure, or None for a bug. target and ca_file: what the
    client dialed and the CA it trusted (None: plaintext), for the hint when nothing answers."""
    from_vault = _from_client_error(error, target, ca_file)
    if from_vault is not None:
        return from_vault
    if isinstance(error, VaultError):
        # Raised in this process: token commands talk to the token directly.
        return CliError(
            error.message, exit_code=EXIT_LOCAL, reason=error.reason, metadata=error.metadata
        )
    if _is_validation_error(error):
        return CliError(
            f"invalid configuration: {_validation_summary(error)}", exit_code=EXIT_LOCAL
        )
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return CliError(f"{error.strerror or error}{where}", exit_code=EXIT_LOCAL)
    if type(error).__module__.split(".")[0] == "pkcs11":
        # The CLI does not import pkcs11 (vault/hsm is its only importer), so its exceptions
        # are recognised by module. Their names (PinIncorrect, TokenNotPresent) say it all.
        detail = str(error)
        return CliError(
            f"token: {type(error).__name__}{': ' + detail if detail else ''}",
            exit_code=EXIT_LOCAL,
        )
    return None


def _from_client_error(error: Exception, target: str, ca_file: Path | None) -> CliError | None:
    try:
        # Imported here: without generated code (before `make proto`) the client cannot be
        # imported, and then no error can be one of its errors either.
        from vault.client import VaultClientError
    except ImportError:
        return None
    if not isinstance(error, VaultClientError):
        return None
    message = error.message
    if error.code.name == "UNAVAILABLE" and not error.reason:
        # No reason: the call never reached a vault (the vault's own UNAVAILABLE errors,
        # TOKEN_UNAVAILABLE and STORE_UNAVAILABLE, carry one).
        message = f"no vault reachable at {target or '?'} ({message}); is it serving?"
        if ca_file is None:
            message += " If it serves TLS, give its CA certificate with --ca-file."
        else:
            message += f" (TLS, trusting the CA in {ca_file}; is it the server's?)"
    return CliError(
        message,
        exit_code=EXIT_VAULT,
        reason=error.reason,
        code=error.code.name,
        metadata=error.metadata,
    )


def _is_validation_error(error: Exception) -> bool:
    from pydantic import ValidationError

    return isinstance(error, ValidationError)


def _validation_summary(error: Exception) -> str:
    from pydantic import ValidationError

    assert isinstance(error, ValidationError)
    # Field locations and messages only: pydantic's default text quotes the input value,
    # which for a PIN setting is the PIN itself.
    parts = []
    for problem in error.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in problem["loc"]) or "settings"
        parts.append(f"{location}: {problem['msg']}")
    return "; ".join(parts)


@click.group(cls=_VaultGroup, epilog=EPILOG, context_settings={"max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    show_envvar=True,
    help="TOML settings file; environment variables (VAULT_SERVER__LISTEN, ...) override it. "
    "Default: the nearest vault.toml in this directory or a parent, else "
    "~/.config/vault/config.toml (under $XDG_CONFIG_HOME when set).",
)
@click.option(
    "--target",
    metavar="HOST:PORT",
    envvar="VAULT_TARGET",
    show_envvar=True,
    help="Vault server for keys and crypto commands. Default: settings server.listen "
    "(a wildcard bind such as 0.0.0.0 dials loopback).",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="VAULT_CA_FILE",
    show_envvar=True,
    help="PEM CA certificate to trust: keys and crypto commands then use TLS. Default: for "
    "the server these settings describe, the development CA <data_dir>/tls/ca.pem when it "
    "serves the development certificate; otherwise plaintext.",
)
@click.option(
    "--client-cert",
    "client_cert_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="VAULT_CLIENT_CERT_FILE",
    show_envvar=True,
    help="PEM client certificate, for a server that requires one (mutual TLS); with --client-key.",
)
@click.option(
    "--client-key",
    "client_key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="VAULT_CLIENT_KEY_FILE",
    show_envvar=True,
    help="PEM private key of --client-cert.",
)
@click.option(
    "--credentials-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="VAULT_CREDENTIALS_FILE",
    show_envvar=True,
    help="JSON file with an access key (access_key_id, secret_key) to sign calls with. "
    "Without it: VAULT_ACCESS_KEY_ID and VAULT_SECRET_KEY (or VAULT_API_KEY) when set; else, "
    "for the server these settings describe, the admin key it stored at its first start "
    "(auth.admin_credentials_file).",
)
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Machine-readable JSON with stable keys on stdout (errors as JSON on stderr).",
)
@click.option(
    "--debug", is_flag=True, help="Show the full traceback of every error, expected or not."
)
@click.version_option(package_name="vault", prog_name="vaultctl")
@click.pass_context
def cli(
    ctx: click.Context,
    config: Path | None,
    target: str | None,
    ca_file: Path | None,
    client_cert_file: Path | None,
    client_key_file: Path | None,
    credentials_file: Path | None,
    json_output: bool,
    debug: bool,
) -> None:
    """Operate and use the HSM-backed key vault.

    Operators provision the PKCS#11 token (`token`) and run the gRPC server (`serve`);
    callers manage keys (`keys`) and use them (`crypto`) over gRPC, and manage buckets
    (`buckets`) whose objects they encrypt locally under bucket keys (`object`). Administrators (the
    admin role) manage accounts (`accounts`) and their credentials (`access-keys`,
    `api-keys`) and read and verify the audit log (`audit`). Plaintext, key material,
    secrets and PINs are never taken as command-line arguments: they come from files or
    standard input, and PINs from settings files or the environment.

    `vaultctl serve` serves TLS with a development CA it creates in <data_dir>/tls (or with
    server.tls_cert_file); the client commands trust that CA by themselves when they talk to
    the server the same settings describe, and take --ca-file for any other.
    """
    state = ctx.ensure_object(CliState)
    state.config = config
    state.target = target
    state.ca_file = ca_file
    state.client_cert_file = client_cert_file
    state.client_key_file = client_key_file
    state.credentials_file = credentials_file
    state.json = state.json or json_output
    state.debug = debug


cli.add_command(serve_command)
cli.add_command(status_command)
cli.add_command(token_group)
cli.add_command(ceremony_group)
cli.add_command(keys_group)
cli.add_command(crypto_group)
cli.add_command(buckets_group)
cli.add_command(object_group)
cli.add_command(accounts_group)
cli.add_command(access_keys_group)
cli.add_command(api_keys_group)
cli.add_command(audit_group)
cli.add_command(backup_group)
cli.add_command(admin_group)


def main() -> None:
    quiet_grpc(sys.argv[1:])
    cli(prog_name="vaultctl")


def quiet_grpc(arguments: list[str]) -> None:
    """Keep gRPC's own C-core log lines (a failed TLS handshake, a refused connection) off
    stderr, where they would precede the one error line or the --json document: the error
    vaultctl prints already says what happened. The server keeps gRPC's errors for its log.

    Must run before grpc is imported: the core reads GRPC_VERBOSITY once, when it starts. A
    value the user set wins."""
    if "GRPC_VERBOSITY" not in os.environ:
        os.environ["GRPC_VERBOSITY"] = "ERROR" if "serve" in arguments else "NONE"


if __name__ == "__main__":
    main()
