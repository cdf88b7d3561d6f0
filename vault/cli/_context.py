"""State shared by every command: global options, settings, the client, and exit codes.

Settings and the client are created on first use, so `--help` and commands that need neither
work with an unreadable configuration or without generated gRPC code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vault.config import Settings, load_settings

if TYPE_CHECKING:
    from vault.client import Credentials, VaultClient

# Exit codes, documented in README.md and `vaultctl --help`. Scripts branch on them, so they
# are part of the interface: never renumber.
EXIT_OK = 0
EXIT_MISMATCH = 1  # verify / verify-mac ran and the signature or MAC did not match
EXIT_USAGE = 2  # click's own code for bad options and arguments
EXIT_VAULT = 3  # the vault refused the request or could not be reached
EXIT_LOCAL = 4  # configuration, a file, or the token on this machine

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    config: Path | None = None
    target: str | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    credentials_file: Path | None = None
    json: bool = False
    debug: bool = False
    dialed: str = ""  # the server address the client connected to, for error hints
    dialed_ca: Path | None = None  # the CA it trusted (None: plaintext), for error hints
    _settings: Settings | None = field(default=None, repr=False)
    _client: VaultClient | None = field(default=None, repr=False)

    def settings(self, **overrides: Any) -> Settings:
        if self._settings is None or overrides:
            self._settings = load_settings(self.config, discover=True, **overrides)
        return self._settings

    def resolved_target(self) -> str:
        if self.target:
            return self.target
        return connectable(self.settings().server.listen)

    def client(self) -> VaultClient:
        if self._client is None:
            # Imported here: the client pulls in grpc and the generated code, which the
            # operator commands (serve aside) and --help do not need.
            from vault.client import VaultClient

            self.dialed = self.resolved_target()
            self.dialed_ca = self.resolved_ca_file(self.dialed)
            if (self.client_cert_file is None) != (self.client_key_file is None):
                raise CliError("--client-cert and --client-key go together", exit_code=EXIT_LOCAL)
            if self.client_cert_file is not None and self.dialed_ca is None:
                raise CliError(
                    "--client-cert needs TLS: give the server's CA with --ca-file",
                    exit_code=EXIT_LOCAL,
                )
            self._client = VaultClient(
                self.dialed,
                ca_file=self.dialed_ca,
                client_cert_file=self.client_cert_file,
                client_key_file=self.client_key_file,
                credentials=self.resolved_credentials(self.dialed),
            )
        return self._client

    def resolved_credentials(self, target: str) -> Credentials | None:
        """What the client commands authenticate with, first found: --credentials-file
        ($VAULT_CREDENTIALS_FILE); VAULT_ACCESS_KEY_ID and VAULT_SECRET_KEY, or VAULT_API_KEY;
        for the server these settings describe, the admin access key it stored at its first
        start (auth.admin_credentials_file)."""
        from vault.client import credentials_from_env, load_credentials_file

        path = self.credentials_file
        if path is None:
            try:
                from_env = credentials_from_env()
            except ValueError as error:
                raise CliError(str(error), exit_code=EXIT_LOCAL) from None
            if from_env is not None:
                return from_env
            settings = self.settings()
            local = self.target is None or same_local_server(target, settings.server.listen)
            stored = settings.auth.admin_credentials_file
            if not local or stored is None or not stored.exists():
                return None
            path = stored
        try:
            return load_credentials_file(path)
        except (OSError, ValueError) as error:
            raise CliError(f"cannot read credentials: {error}", exit_code=EXIT_LOCAL) from None

    def resolved_ca_file(self, target: str) -> Path | None:
        """The CA certificate the client trusts, or None for plaintext.

        --ca-file ($VAULT_CA_FILE) when given. Otherwise, when target is the server these
        settings describe (no --target, or its port on a loopback name), whatever that server
        uses: the development CA for the development certificate `vaultctl serve` made, so
        `make run` then `vaultctl keys ...` needs no option; nothing for plaintext."""
        if self.ca_file is not None:
            return self.ca_file
        settings = self.settings()
        if self.target is not None and not same_local_server(self.target, settings.server.listen):
            return None
        files = settings.server_tls()
        if files is None:
            return None
        if files.dev_ca is not None:
            return files.dev_ca
        raise CliError(
            f"the vault at {target} serves TLS with its certificate {files.cert_file} "
            "(server.tls_cert_file): give the CA certificate that issued it with --ca-file "
            "or VAULT_CA_FILE",
            exit_code=EXIT_LOCAL,
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def connectable(listen: str) -> str:
    """The address a local client dials for a server bound to listen: a wildcard bind
    (0.0.0.0, [::]) accepts connections on loopback, but is not an address to connect to."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "*"):  # noqa: S104 - compared, not bound
        return f"127.0.0.1:{port}"
    if host == "[::]":
        return f"[::1]:{port}"
    return listen


def same_local_server(target: str, listen: str) -> bool:
    """Whether a client dialing target reaches the server bound to listen on this machine:
    the same address, or the same port on a loopback name (localhost, 127.0.0.1, [::1])."""
    local = connectable(listen)
    if target in (listen, local):
        return True
    if target.startswith("unix") or local.startswith("unix"):
        return False
    loopback = ("localhost", "127.0.0.1", "[::1]")
    target_host, _, target_port = target.rpartition(":")
    local_host, _, local_port = local.rpartition(":")
    return target_port == local_port and target_host in loopback and local_host in loopback


def private_files() -> None:
    """Make every file this process creates from now on readable by its owner only.

    The token directory, the SQLite database with its WAL and shared-memory files, and the
    PIN files are created by libraries (SoftHSM, SQLite) that use the process umask; a
    default umask of 022 would leave the store's metadata readable by every local user."""
    os.umask(0o077)


pass_state = click.make_pass_decorator(CliState, ensure=True)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(CliState).json = True


def json_option(function: F) -> F:
    """`--json` on a command; the same as the global `vaultctl --json`."""
    return click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_json,
        help="Print machine-readable JSON with stable keys instead of a table.",
    )(function)


class CliError(Exception):
    """An expected failure: one line on stderr (a JSON object under --json), no traceback.

    Not a click.ClickException: its exit code is fixed per class there, and the --json
    state decides the format, so the root group prints it (see main._VaultGroup)."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: int,
        reason: str = "",
        code: str = "",
        metadata: dict[str, str] | None = None,
        as_json: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.reason = reason
        self.code = code
        self.metadata = dict(metadata or {})
        self.as_json = as_json

    def show(self) -> None:
        if self.as_json:
            payload = {
                "error": {
                    "code": self.code or None,
                    "reason": self.reason or None,
                    "message": self.message,
                    "metadata": self.metadata,
                    "exit_code": self.exit_code,
                }
            }
            click.echo(json.dumps(payload, sort_keys=True), err=True)
            return
        # reason first: it is the stable word a person searches for (README lists them).
        prefix = f"{self.reason}: " if self.reason else ""
        status = f" (status {self.code})" if self.code else ""
        extra = "".join(f" {key}={value}" for key, value in sorted(self.metadata.items()))
        click.echo(f"vaultctl: error: {prefix}{self.message}{status}{extra}", err=True)
