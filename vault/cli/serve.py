"""`vaultctl serve`: run the gRPC server in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import json
from pathlib import Path
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
from vault.cli._output import note
from vault.config import Settings, record_local_server, user_config_file

if TYPE_CHECKING:
    from vault.tls_dev import DevTls


@click.command("serve")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Address to bind, overriding server.listen (VAULT_SERVER__LISTEN): host:port, "
    "[ipv6]:port or unix:PATH; without TLS only loopback and unix:. Default: 127.0.0.1:50051.",
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
    the command line. Logs go to stderr at log_level (VAULT_LOG_LEVEL), as text or, with
    log_format = "json" (VAULT_LOG_FORMAT), one JSON object per line.

    On SIGTERM or Ctrl-C the server drains: health turns NOT_SERVING, new calls are refused
    and calls in flight get server.drain_seconds (default 5) to finish. With
    server.metrics_listen set, Prometheus metrics are served at http://ADDRESS/metrics.

    Refused (exit 4, one line) while another vault runs on the same data directory (it
    holds <data_dir>/vault.lock) or anything listens on the address already.

    TLS: with server.tls_cert_file and server.tls_key_file (mode 0600) the server uses that
    certificate, and with server.client_ca_file it also requires client certificates issued
    by that CA. Without them it creates, on first start, a development CA and a server
    certificate in <data_dir>/tls (kept afterwards) and serves with those; it prints where
    the CA is, for other clients to trust. With server.dev_tls = false and no certificate it
    serves plaintext, on loopback addresses and unix: sockets only.

    Settings: the same file the client commands read (--config, $VAULT_CONFIG, the nearest
    vault.toml, ~/.config/vault/config.toml). When the user has no ~/.config/vault/config.toml
    yet, serve writes one naming this server's data_dir and listen address, so vaultctl
    finds it from any directory; an existing file is never changed.

    \b
    Examples:
      vaultctl serve
      vaultctl serve --listen 127.0.0.1:50052 --workers 4
      vaultctl serve --listen 0.0.0.0:50051      # TLS: reachable from other machines
      vaultctl serve --listen unix:/run/vault/vault.sock --workers 1
      VAULT_CONFIG=/etc/vault/vault.toml vaultctl serve
    """
    server: dict[str, Any] = {}
    if listen is not None:
        server["listen"] = listen
    if workers is not None:
        server["workers"] = workers
    settings = state.settings(server=server) if server else state.settings()
    from vault.so_pin import SoPinCustodyError, refuse_to_serve_beside

    try:
        refuse_to_serve_beside(settings)
    except SoPinCustodyError as error:
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None
    _configure_logging(settings)
    private_files()
    # Imported here: grpc and the generated code load only in the command that serves.
    from vault.app import serve
    from vault.data_lock import DataDirectoryInUse
    from vault.transport.server import ListenAddress, ListenAddressError, ensure_port_free
    from vault.transport.supervisor import load_tls, lock_for
    from vault.transport.tls import TlsConfigError

    try:
        address = ListenAddress.parse(settings.server.listen, tls=True)  # syntax, before files
        # Another vault on this data directory or this port: one line, and nothing else
        # printed or written (serve() checks both again, for callers other than this one).
        data_lock = lock_for(settings)
    except (ListenAddressError, DataDirectoryInUse) as error:
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None
    try:
        ensure_port_free(address)
        dev = _ensure_dev_tls(settings)
        # Checked here too (serve() does it again), so nothing is announced before an error.
        ListenAddress.parse(settings.server.listen, tls=load_tls(settings) is not None)
    except (ListenAddressError, TlsConfigError) as error:
        data_lock.release()
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None
    except BaseException:
        data_lock.release()
        raise
    recorded = _record_local_server(settings)
    if state.json:
        # One line, so a supervisor can parse it before the server's own output follows.
        event = _start_event(settings, dev)
        event["user_config_written"] = str(recorded) if recorded is not None else None
        click.echo(json.dumps(event, sort_keys=True))
    else:
        _print_tls(settings, dev)
        if recorded is not None:
            note(f"settings: recorded this server in {recorded} for vaultctl in other directories")
    try:
        serve(settings, data_lock)
    except (ListenAddressError, TlsConfigError) as error:
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None
    except RuntimeError as error:
        # serve() has logged the details; this is the summary a person reads last.
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None


def _record_local_server(settings: Settings) -> Path | None:
    """The user's settings file, written now to name this server, or None (it existed, or
    could not be written: the server does not need it, so that is only a remark)."""
    try:
        return record_local_server(settings)
    except OSError as error:
        note(f"settings: could not record this server in {user_config_file()}: {error.strerror}")
        return None


def _configure_logging(settings: Settings) -> None:
    from vault.logs import configure

    try:
        configure(settings.log_level, settings.log_format)
    except ValueError as error:
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None


def _ensure_dev_tls(settings: Settings) -> DevTls | None:
    """Create or keep the development CA and server certificate, unless the settings name a
    certificate or turn development TLS off."""
    if settings.server.tls_cert_file is not None or not settings.server.dev_tls:
        return None
    from vault.tls_dev import DevTlsError, ensure_dev_tls, server_names

    try:
        return ensure_dev_tls(settings.dev_tls_paths, server_names(settings.server.listen))
    except DevTlsError as error:
        raise CliError(str(error), exit_code=EXIT_LOCAL) from None


def _print_tls(settings: Settings, dev: DevTls | None) -> None:
    """Where the TLS material is (never its content): people give the CA to other clients."""
    files = settings.server_tls()
    if files is None:
        note("TLS: off (server.dev_tls = false): plaintext, on loopback and unix: only")
        return
    if dev is not None:
        paths = dev.paths
        note(f"TLS: development CA {paths.ca_cert}{' (created now)' if dev.ca_created else ''}")
        note(
            f"     server certificate {paths.server_cert} for {', '.join(dev.names)}"
            f"{' (issued now)' if dev.server_issued else ''}"
        )
        note(
            "     vaultctl on this machine trusts this CA by itself; give ca.pem to other "
            "clients: vaultctl --ca-file ca.pem, VaultClient(target, ca_file='ca.pem')"
        )
    else:
        note(f"TLS: certificate {files.cert_file}")
    if files.client_ca_file is not None:
        note(f"     client certificates required, issued by the CA in {files.client_ca_file}")


def _start_event(settings: Settings, dev: DevTls | None) -> dict[str, Any]:
    files = settings.server_tls()
    tls: dict[str, Any] | None = None
    if files is not None:
        tls = {
            "cert_file": str(files.cert_file),
            "client_ca_file": str(files.client_ca_file) if files.client_ca_file else None,
            "dev_ca_file": str(files.dev_ca) if files.dev_ca else None,
            "dev_ca_created": dev is not None and dev.ca_created,
            "server_cert_issued": dev is not None and dev.server_issued,
        }
    return {
        "event": "starting",
        "listen": settings.server.listen,
        "workers": settings.server.workers,
        "threads": settings.server.threads,
        "data_dir": str(settings.data_dir),
        "token_label": settings.hsm.token_label,
        "tls": tls,
    }
