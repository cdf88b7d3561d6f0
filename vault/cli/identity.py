"""`vaultctl accounts|access-keys|api-keys ...`: accounts and their credentials over gRPC.

Every command here calls IdentityService, which only the admin role may use: an access key
without grants of an admin account, such as the one the vault bootstraps at its first start.

A secret the vault issues (an access key's secret key, an API key's token) is returned once
and never again. The commands therefore open the files it goes to before asking the vault
for it: a path that cannot be written then fails the command before any secret exists,
instead of after, when it would be lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vault.cli._context import EXIT_LOCAL, EXIT_USAGE, CliError, CliState, json_option, pass_state
from vault.cli._io import STDIO
from vault.cli._output import emit, format_time, note, print_fields, print_table, short_time
from vault.cli.keys import account_parent, parse_duration
from vault.domain.identity import REQUIRED_LEVEL

if TYPE_CHECKING:
    from collections.abc import Sequence

    from google.protobuf.message import Message

    from vault.gen.vault.v1 import identity_service_pb2, resources_pb2

F = TypeVar("F", bound=Callable[..., Any])

LEVELS = ("READ", "READWRITE", "FULL")
ADMIN_NOTE = "Needs the admin role."

ACCOUNTS_HELP = f"""Create and inspect accounts (admin role).

Accounts are the principals that own keys and credentials. They are named
accounts/{{account}} (ids: a lower-case letter, then up to 62 lower-case letters, digits or
'-'). The access keys without grants of an admin account hold the admin role: they manage
accounts, credentials and the audit log, and use the keys of every account. {ADMIN_NOTE}

\b
Examples:
  vaultctl accounts create acme --display-name "ACME Corp"
  vaultctl accounts get accounts/acme
  vaultctl --json accounts list
"""

ACCESS_KEYS_HELP = f"""Issue and manage access keys (admin role).

An access key is an id plus a secret key that signs each request; it is named
accounts/{{account}}/accessKeys/{{id}}. The secret key is shown once, by `create` and
`reset-secret`; the vault never stores it. Write it to files with --secret-out or
--credentials-out (created with mode 0600): it then never appears on the terminal or in a
log. Without either, it is printed on standard output. Use a credentials file with
`vaultctl --credentials-file FILE ...`, or set VAULT_ACCESS_KEY_ID and VAULT_SECRET_KEY.
{ADMIN_NOTE}

\b
Examples:
  vaultctl access-keys create accounts/acme --grant keys/docs=READWRITE \\
      --credentials-out acme-docs.json
  vaultctl --credentials-file acme-docs.json crypto encrypt accounts/acme/keys/docs --in a.txt
  vaultctl access-keys list accounts/acme
  vaultctl access-keys reset-secret accounts/acme/accessKeys/VK... --credentials-out new.json
  vaultctl access-keys revoke accounts/acme/accessKeys/VK... --yes
"""

API_KEYS_HELP = f"""Issue and manage API keys (admin role).

An API key is a bearer token limited to some methods and keys; it is named
accounts/{{account}}/apiKeys/{{id}}. The token is shown once, by `create`; the vault keeps
only a keyed hash of it. Write it to a file with --token-out (created with mode 0600), or
it is printed on standard output. Callers send it by setting VAULT_API_KEY. An API key
never holds the admin role. {ADMIN_NOTE}

\b
Examples:
  vaultctl api-keys create accounts/acme --scope 'Sign,Verify:keys/release' \\
      --expires-in 90d --rate 10 --burst 20 --daily-quota 10000 --token-out release.token
  VAULT_API_KEY=$(cat release.token) vaultctl crypto sign accounts/acme/keys/release \\
      --in build.tar --out build.sig
  vaultctl api-keys usage accounts/acme/apiKeys/abcdefghijklmnop --days 7
  vaultctl api-keys revoke accounts/acme/apiKeys/abcdefghijklmnop --yes
"""


@click.group("accounts", help=ACCOUNTS_HELP)
def accounts_group() -> None:
    pass


@click.group("access-keys", help=ACCESS_KEYS_HELP)
def access_keys_group() -> None:
    pass


@click.group("api-keys", help=API_KEYS_HELP)
def api_keys_group() -> None:
    pass


# -- conversions from the client's messages -------------------------------------------------


def proto_time(message: Message, field: str) -> str | None:
    """An optional Timestamp field as ISO 8601 text, or None when unset."""
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return format_time(value)


def _enum_name(wrapper: Any, value: int, prefix: str) -> str:
    name: str = wrapper.Name(value)
    return name.removeprefix(prefix)


def _account_of(name: str) -> str:
    """accounts/acme/accessKeys/VK... -> accounts/acme."""
    parts = name.split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else ""


def account_record(account: resources_pb2.Account) -> dict[str, Any]:
    return {
        "name": account.name,
        "account_id": account.name.removeprefix("accounts/"),
        "display_name": account.display_name,
        "admin": account.admin,
        "create_time": proto_time(account, "create_time"),
    }


def access_key_record(key: resources_pb2.AccessKey) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    return {
        "name": key.name,
        "access_key_id": key.access_key_id,
        "account": _account_of(key.name),
        "state": _enum_name(resources_pb2.CredentialState, key.state, "CREDENTIAL_STATE_"),
        "grants": [
            {
                "resource": grant.resource,
                "level": _enum_name(resources_pb2.AccessLevel, grant.level, "ACCESS_LEVEL_"),
            }
            for grant in key.grants
        ],
        "description": key.description,
        "create_time": proto_time(key, "create_time"),
        "last_used_time": proto_time(key, "last_used_time"),
        "secret_reset_time": proto_time(key, "secret_reset_time"),
    }


def api_key_record(key: resources_pb2.ApiKey) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    rate_limit = (
        {
            "requests_per_second": key.rate_limit.requests_per_second,
            "burst": key.rate_limit.burst,
        }
        if key.HasField("rate_limit")
        else None
    )
    return {
        "name": key.name,
        "api_key_id": key.api_key_id,
        "account": _account_of(key.name),
        "state": _enum_name(resources_pb2.CredentialState, key.state, "CREDENTIAL_STATE_"),
        "scopes": [
            {"methods": list(scope.methods), "resources": list(scope.resources)}
            for scope in key.scopes
        ],
        "expire_time": proto_time(key, "expire_time"),
        "rate_limit": rate_limit,
        "daily_quota": key.daily_quota,
        "description": key.description,
        "create_time": proto_time(key, "create_time"),
        "last_used_time": proto_time(key, "last_used_time"),
    }


def _grants_text(grants: list[dict[str, str]]) -> str:
    # The --grant syntax, so a listing can be pasted back into a command.
    return ", ".join(f"{grant['resource']}={grant['level']}" for grant in grants)


def _scopes_text(scopes: list[dict[str, list[str]]]) -> str:
    # The --scope syntax, for the same reason.
    return "; ".join(
        f"{','.join(scope['methods'])}:{','.join(scope['resources'])}" for scope in scopes
    )


def _rate_text(rate_limit: dict[str, Any] | None) -> str | None:
    if rate_limit is None:
        return None
    return f"{rate_limit['requests_per_second']:g}/s, burst {rate_limit['burst']}"


def _print_account(record: dict[str, Any]) -> None:
    print_fields(
        [
            ("name", record["name"]),
            ("display name", record["display_name"]),
            ("admin", record["admin"]),
            ("created", record["create_time"]),
        ]
    )


def _print_access_key(record: dict[str, Any]) -> None:
    print_fields(
        [
            ("name", record["name"]),
            ("access key id", record["access_key_id"]),
            ("state", record["state"]),
            (
                "grants",
                _grants_text(record["grants"]) or "none: full access to the account's keys",
            ),
            ("description", record["description"]),
            ("created", record["create_time"]),
            ("last used", record["last_used_time"]),
            ("secret reset", record["secret_reset_time"]),
        ]
    )


def _print_api_key(record: dict[str, Any]) -> None:
    print_fields(
        [
            ("name", record["name"]),
            ("api key id", record["api_key_id"]),
            ("state", record["state"]),
            ("scopes", _scopes_text(record["scopes"])),
            ("expires", record["expire_time"] or "never"),
            ("rate limit", _rate_text(record["rate_limit"]) or "none"),
            ("daily quota", record["daily_quota"] or "unlimited"),
            ("description", record["description"]),
            ("created", record["create_time"]),
            ("last used", record["last_used_time"]),
        ]
    )


def _show(
    state: CliState,
    record: dict[str, Any],
    printer: Callable[[dict[str, Any]], None],
    done: str = "",
) -> None:
    def human() -> None:
        if done:
            note(done)
        printer(record)

    emit(state, record, human)


# -- option parsing ---------------------------------------------------------------------------


def _relative_key(resource: str, parent: str, param_hint: str) -> str:
    """keys/docs stays; accounts/acme/keys/docs becomes keys/docs when acme is the parent.

    Grants and scopes are relative to the credential's account, but people copy full key
    names from `keys list`; one of another account could never be granted."""
    if not resource.startswith("accounts/"):
        return resource
    prefix = f"{parent}/"
    if not resource.startswith(prefix):
        raise click.BadParameter(
            f"{resource!r} belongs to another account than {parent}", param_hint=param_hint
        )
    return resource.removeprefix(prefix)


def parse_grants(values: Sequence[str], parent: str) -> list[tuple[str, str]]:
    grants: list[tuple[str, str]] = []
    for value in values:
        resource, separator, level = value.rpartition("=")
        level = level.strip().upper()
        if not separator or not resource or level not in LEVELS:
            raise click.BadParameter(
                f"{value!r}: expected keys/KEY=LEVEL or keys/*=LEVEL, LEVEL one of "
                + ", ".join(LEVELS),
                param_hint="--grant",
            )
        grants.append((_relative_key(resource.strip(), parent, "--grant"), level))
    return grants


def parse_scopes(values: Sequence[str], parent: str) -> list[tuple[list[str], list[str]]]:
    scopes: list[tuple[list[str], list[str]]] = []
    for value in values:
        methods_text, separator, resources_text = value.partition(":")
        methods = [method.strip() for method in methods_text.split(",") if method.strip()]
        resources = [
            _relative_key(resource.strip(), parent, "--scope")
            for resource in resources_text.split(",")
            if resource.strip()
        ]
        if not separator or not methods or not resources:
            raise click.BadParameter(
                f"{value!r}: expected METHOD[,METHOD...]:RESOURCE[,RESOURCE...], "
                "e.g. 'Sign,Verify:keys/release'",
                param_hint="--scope",
            )
        scopes.append((methods, resources))
    return scopes


def duration(text: str, option: str) -> timedelta:
    """keys.parse_duration for option: its error names option, and a duration beyond what a
    datetime can hold is a usage error rather than a traceback."""
    try:
        return parse_duration(text)
    except click.BadParameter as error:
        raise click.BadParameter(error.message, param_hint=option) from None
    except OverflowError:
        raise click.BadParameter(f"{text!r} is too long", param_hint=option) from None


def _expire_time(expires_in: str | None) -> datetime | None:
    if expires_in is None:
        return None
    period = duration(expires_in, "--expires-in")
    if period.total_seconds() <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--expires-in")
    try:
        return datetime.now(UTC) + period
    except OverflowError:
        raise click.BadParameter(f"{expires_in!r} is too long", param_hint="--expires-in") from None


def _rate_limit(rate: float | None, burst: int | None) -> tuple[float, int] | None:
    if rate is None:
        if burst is not None:
            raise click.UsageError("--burst needs --rate")
        return None
    if not math.isfinite(rate):
        raise click.BadParameter("must be a finite number", param_hint="--rate")
    # A burst below the per-second rate would cap the rate at the burst after any pause.
    return rate, burst if burst is not None else max(1, math.ceil(rate))


def _confirm(verb: str, name: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            f"{verb} {name} cannot be undone: pass --yes to confirm without a terminal",
            exit_code=EXIT_USAGE,
        )
    click.confirm(f"{verb.capitalize()} {name}? This cannot be undone", abort=True, err=True)


# -- secrets to files -------------------------------------------------------------------------


@dataclass
class _PrivateFile:
    """A file opened for a secret that does not exist yet; written once the vault issued it,
    or removed again (when this command created it) if the vault refused."""

    path: str
    descriptor: int
    created: bool

    def write(self, data: bytes) -> None:
        try:
            os.fchmod(self.descriptor, 0o600)
            os.ftruncate(self.descriptor, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(self.descriptor, view) :]
            os.fsync(self.descriptor)
        finally:
            self.close()

    def discard(self) -> None:
        self.close()
        if self.created:
            # Best effort: an empty file is harmless, and the command fails anyway.
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def close(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1


def _write_error(path: str, error: OSError) -> CliError:
    # O_EXCL reports a symbolic link as existing; --force would not follow it either.
    if error.errno == errno.ELOOP or (error.errno == errno.EEXIST and os.path.islink(path)):
        message = f"{path} is a symbolic link: refusing to follow it"
    elif error.errno == errno.EEXIST:
        message = f"{path} exists: refusing to overwrite it (--force replaces it)"
    else:
        message = f"cannot write {path}: {error.strerror or error}"
    return CliError(message, exit_code=EXIT_LOCAL)


def open_private(path: str, *, force: bool) -> _PrivateFile:
    """Open path for a secret: created with mode 0600, never through a symbolic link, and an
    existing file only with force (it keeps its content until the secret replaces it)."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    created = True
    try:
        try:
            descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if not force:
                raise
            descriptor = os.open(path, flags)
            created = False
    except OSError as error:
        raise _write_error(path, error) from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise CliError(f"{path} is not a regular file", exit_code=EXIT_LOCAL)
    return _PrivateFile(path, descriptor, created)


class SecretOutputs:
    """The files a command writes the secret it is about to receive to.

    Use as a context manager around the call that issues the secret: when it raises, the
    files this command created are removed again."""

    def __init__(self, paths: dict[str, str | None], *, force: bool) -> None:
        given = {option: path for option, path in paths.items() if path is not None}
        for option, path in given.items():
            if path == STDIO:
                raise click.BadParameter(
                    "omit the option to print the secret on standard output", param_hint=option
                )
        if len({os.path.abspath(path) for path in given.values()}) < len(given):
            raise click.UsageError(f"{' and '.join(given)} must name different files")
        self._files: dict[str, _PrivateFile] = {}
        try:
            for option, path in given.items():
                self._files[option] = open_private(path, force=force)
        except BaseException:
            self._discard()
            raise

    @property
    def given(self) -> bool:
        """Whether any file was given: the secret is then not printed."""
        return bool(self._files)

    def __enter__(self) -> SecretOutputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self._discard()

    def _discard(self) -> None:
        for pending in self._files.values():
            pending.discard()

    def path(self, option: str) -> str | None:
        pending = self._files.get(option)
        return pending.path if pending is not None else None

    def write(self, contents: dict[str, bytes], *, lost: str) -> None:
        """Write each option's file; lost: what to do when that fails, since the secret
        cannot be fetched again."""
        failure: OSError | None = None
        failed = ""
        for option, pending in self._files.items():
            try:
                pending.write(contents[option])
            except OSError as error:
                failure, failed = failure or error, failed or pending.path
        if failure is not None:
            raise CliError(
                "the secret was issued but could not be saved: "
                f"{_write_error(failed, failure).message}; {lost}",
                exit_code=EXIT_LOCAL,
            )


def _force_option(function: F) -> F:
    return click.option(
        "--force",
        is_flag=True,
        help="Replace existing output files (still never through a symbolic link).",
    )(function)


def _credentials_json(access_key_id: str, secret_key: str) -> bytes:
    # The format --credentials-file and the vault's own admin-credentials.json use.
    return (json.dumps({"access_key_id": access_key_id, "secret_key": secret_key}) + "\n").encode()


def _secret_options(function: F) -> F:
    function = _force_option(function)
    function = click.option(
        "--credentials-out",
        metavar="FILE",
        default=None,
        help="Write the access key id and secret key as JSON "
        '({"access_key_id": ..., "secret_key": ...}) to FILE, created with mode 0600: '
        "the file `vaultctl --credentials-file` reads.",
    )(function)
    return click.option(
        "--secret-out",
        metavar="FILE",
        default=None,
        help="Write the bare secret key (no newline) to FILE, created with mode 0600. "
        "Without --secret-out or --credentials-out the secret is printed on standard output.",
    )(function)


def _issued_access_key(
    state: CliState,
    response: identity_service_pb2.CreateAccessKeyResponse,
    outputs: SecretOutputs,
    done: str,
) -> None:
    """Save or print the secret of a new or reset access key, then show the key."""
    key = response.access_key
    outputs.write(
        {
            "--secret-out": response.secret_key.encode(),
            "--credentials-out": _credentials_json(key.access_key_id, response.secret_key),
        },
        lost=f"issue a new one with `vaultctl access-keys reset-secret {key.name}`",
    )
    printed = None if outputs.given else response.secret_key
    secret_out, credentials_out = outputs.path("--secret-out"), outputs.path("--credentials-out")
    record = access_key_record(key)
    payload = {
        "access_key": record,
        "access_key_id": key.access_key_id,
        "secret_key": printed,
        "secret_out": secret_out,
        "credentials_out": credentials_out,
    }

    def human() -> None:
        note(done)
        _print_access_key(record)
        if printed is not None:
            click.echo(f"secret key: {printed}")
            note("The secret key is shown only now: store it safely.")
        if secret_out is not None:
            note(f"secret key written to {secret_out}")
        if credentials_out is not None:
            note(
                f"credentials written to {credentials_out}; use them with "
                f"`vaultctl --credentials-file {credentials_out} ...`"
            )

    emit(state, payload, human)


# -- accounts ---------------------------------------------------------------------------------


@accounts_group.command("create")
@click.argument("account_id", metavar="ID")
@click.option("--display-name", default="", help="Free text, at most 256 characters.")
@click.option(
    "--admin",
    is_flag=True,
    help="Make it an admin account: its access keys without grants hold the admin role. "
    "Fixed at creation.",
)
@json_option
@pass_state
def create_account(state: CliState, account_id: str, display_name: str, admin: bool) -> None:
    """Create an account.

    ID is the new account's id, `acme`, or its name, `accounts/acme`. Needs the admin role.
    """
    account = state.client().create_account(
        account_id.removeprefix("accounts/"), display_name=display_name, admin=admin
    )
    _show(state, account_record(account), _print_account, f"created {account.name}")


@accounts_group.command("get")
@click.argument("name")
@json_option
@pass_state
def get_account(state: CliState, name: str) -> None:
    """Show an account.

    NAME is `acme` or `accounts/acme`. Needs the admin role.
    """
    account = state.client().get_account(account_parent(name))
    _show(state, account_record(account), _print_account)


@accounts_group.command("list")
@json_option
@pass_state
def list_accounts(state: CliState) -> None:
    """List every account, in name order.

    Needs the admin role.
    """
    records = [account_record(account) for account in state.client().list_accounts()]

    def human() -> None:
        print_table(
            ["NAME", "DISPLAY NAME", "ADMIN", "CREATED"],
            [
                [r["name"], r["display_name"], r["admin"], short_time(r["create_time"])]
                for r in records
            ],
        )

    emit(state, {"accounts": records}, human)


# -- access keys ------------------------------------------------------------------------------


@access_keys_group.command("create")
@click.argument("account")
@click.option(
    "--grant",
    "grants",
    multiple=True,
    metavar="RESOURCE=LEVEL",
    help="A permission (repeatable): RESOURCE is keys/KEY or keys/* (every key of the "
    "account); a full key name of the account works too. LEVEL is READ (metadata, decrypt, "
    "verify), READWRITE (also encrypt, sign, wrap, MAC) or FULL (also create, rotate, "
    "disable, revoke, destroy keys). Without --grant the key has full access to every key "
    "of the account and, for an admin account, the admin role.",
)
@click.option("--description", default="", help="Free text, at most 1024 characters.")
@_secret_options
@json_option
@pass_state
def create_access_key(
    state: CliState,
    account: str,
    grants: tuple[str, ...],
    description: str,
    secret_out: str | None,
    credentials_out: str | None,
    force: bool,
) -> None:
    """Issue an access key; its secret is shown once.

    ACCOUNT is the account it belongs to, `acme` or `accounts/acme`. Prints the access key id
    and the secret key, or writes them to --secret-out / --credentials-out. Needs the admin
    role.
    """
    parent = account_parent(account)
    parsed = parse_grants(grants, parent)
    with SecretOutputs(
        {"--secret-out": secret_out, "--credentials-out": credentials_out}, force=force
    ) as outputs:
        response = state.client().create_access_key(parent, grants=parsed, description=description)
    _issued_access_key(state, response, outputs, f"created {response.access_key.name}")


@access_keys_group.command("get")
@click.argument("name")
@json_option
@pass_state
def get_access_key(state: CliState, name: str) -> None:
    """Show an access key (never its secret).

    NAME is accounts/{account}/accessKeys/{id}. Needs the admin role.
    """
    key = state.client().get_access_key(name)
    _show(state, access_key_record(key), _print_access_key)


@access_keys_group.command("list")
@click.argument("account")
@json_option
@pass_state
def list_access_keys(state: CliState, account: str) -> None:
    """List the access keys of an account.

    ACCOUNT is `acme` or `accounts/acme`. Needs the admin role.
    """
    keys = state.client().list_access_keys(account_parent(account))
    records = [access_key_record(key) for key in keys]

    def human() -> None:
        print_table(
            ["NAME", "STATE", "GRANTS", "DESCRIPTION", "CREATED", "LAST USED"],
            [
                [
                    r["name"],
                    r["state"],
                    _grants_text(r["grants"]) or "(full)",
                    r["description"],
                    short_time(r["create_time"]),
                    short_time(r["last_used_time"]),
                ]
                for r in records
            ],
        )

    emit(state, {"access_keys": records}, human)


@access_keys_group.command("reset-secret")
@click.argument("name")
@_secret_options
@json_option
@pass_state
def reset_secret(
    state: CliState,
    name: str,
    secret_out: str | None,
    credentials_out: str | None,
    force: bool,
) -> None:
    """Replace an access key's secret; shown once.

    NAME is accounts/{account}/accessKeys/{id}. The old secret stops working at once; the
    new one is printed, or written to --secret-out / --credentials-out. Needs the admin role.
    """
    with SecretOutputs(
        {"--secret-out": secret_out, "--credentials-out": credentials_out}, force=force
    ) as outputs:
        response = state.client().reset_secret_key(name)
    _issued_access_key(state, response, outputs, f"new secret key for {response.access_key.name}")


@access_keys_group.command("revoke")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_state
def revoke_access_key(state: CliState, name: str, yes: bool) -> None:
    """Revoke an access key: irreversible.

    NAME is accounts/{account}/accessKeys/{id}. It stops authenticating at once; its record
    stays, for the audit log. Asks for confirmation unless --yes. Needs the admin role.
    """
    _confirm("revoke", name, yes)
    key = state.client().revoke_access_key(name)
    _show(state, access_key_record(key), _print_access_key, f"revoked {key.name}")


@access_keys_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_state
def delete_access_key(state: CliState, name: str, yes: bool) -> None:
    """Delete an access key: irreversible.

    NAME is accounts/{account}/accessKeys/{id}. It stops authenticating at once and its
    record is removed (audit records naming it remain). Asks for confirmation unless --yes.
    Needs the admin role.
    """
    _confirm("delete", name, yes)
    state.client().delete_access_key(name)
    emit(state, {"name": name, "deleted": True}, lambda: note(f"deleted {name}"))


# -- API keys ---------------------------------------------------------------------------------


def _methods_help() -> str:
    # Built from the vault's own table, so the help cannot drift from what scopes accept.
    return ", ".join(sorted(REQUIRED_LEVEL))


@api_keys_group.command("create")
@click.argument("account")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    metavar="METHODS:RESOURCES",
    help="What the key may do (repeatable; a call is allowed when one scope covers its method "
    "and every key it names): comma-separated methods, a colon, comma-separated resources. "
    f"Methods: {_methods_help()}, or * for all. Resources: keys/KEY (a full key name of "
    "the account works too), keys/* for every key, or * which also covers calls naming no "
    "key (ListKeys, GenerateRandom). Example: 'Sign,Verify:keys/k1,keys/k2'.",
)
@click.option(
    "--expires-in",
    metavar="DURATION",
    default=None,
    help="Stop working after this long: seconds, or a number with s, m, h, d or w (e.g. "
    "30d, 12h). Default: never.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    metavar="RPS",
    default=None,
    help="Sustained requests per second allowed, over all the server's worker processes. "
    "Default: no rate limit.",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Requests allowed at once after a quiet period (with --rate). Default: RPS rounded up.",
)
@click.option(
    "--daily-quota",
    type=click.IntRange(min=0),
    metavar="N",
    default=0,
    help="Requests allowed per UTC day. Default: 0, unlimited.",
)
@click.option("--description", default="", help="Free text, at most 1024 characters.")
@click.option(
    "--token-out",
    metavar="FILE",
    default=None,
    help="Write the bare token (no newline) to FILE, created with mode 0600, instead of "
    "printing it on standard output.",
)
@_force_option
@json_option
@pass_state
def create_api_key(
    state: CliState,
    account: str,
    scopes: tuple[str, ...],
    expires_in: str | None,
    rate: float | None,
    burst: int | None,
    daily_quota: int,
    description: str,
    token_out: str | None,
    force: bool,
) -> None:
    """Issue an API key; its token is shown once.

    ACCOUNT is the account it belongs to, `acme` or `accounts/acme`. Prints the token, or
    writes it to --token-out. Give at least one --scope. Needs the admin role.
    """
    parent = account_parent(account)
    parsed = parse_scopes(scopes, parent)
    rate_limit = _rate_limit(rate, burst)
    expire_time = _expire_time(expires_in)
    with SecretOutputs({"--token-out": token_out}, force=force) as outputs:
        response = state.client().create_api_key(
            parent,
            parsed,
            expire_time=expire_time,
            rate_limit=rate_limit,
            daily_quota=daily_quota,
            description=description,
        )
    key = response.api_key
    outputs.write(
        {"--token-out": response.token.encode()},
        lost=f"revoke it with `vaultctl api-keys revoke {key.name}` and create another",
    )
    printed = None if outputs.given else response.token
    record = api_key_record(key)
    payload = {
        "api_key": record,
        "api_key_id": key.api_key_id,
        "token": printed,
        "token_out": outputs.path("--token-out"),
    }

    def human() -> None:
        note(f"created {key.name}")
        _print_api_key(record)
        if printed is not None:
            click.echo(f"token: {printed}")
            note("The token is shown only now: store it safely.")
        else:
            note(f"token written to {token_out}; use it with VAULT_API_KEY=$(cat {token_out})")

    emit(state, payload, human)


@api_keys_group.command("get")
@click.argument("name")
@json_option
@pass_state
def get_api_key(state: CliState, name: str) -> None:
    """Show an API key (never its token).

    NAME is accounts/{account}/apiKeys/{id}. Needs the admin role.
    """
    key = state.client().get_api_key(name)
    _show(state, api_key_record(key), _print_api_key)


@api_keys_group.command("list")
@click.argument("account")
@json_option
@pass_state
def list_api_keys(state: CliState, account: str) -> None:
    """List the API keys of an account.

    ACCOUNT is `acme` or `accounts/acme`. Needs the admin role.
    """
    records = [api_key_record(key) for key in state.client().list_api_keys(account_parent(account))]

    def human() -> None:
        print_table(
            ["NAME", "STATE", "SCOPES", "EXPIRES", "RATE", "QUOTA", "LAST USED"],
            [
                [
                    r["name"],
                    r["state"],
                    _scopes_text(r["scopes"]),
                    short_time(r["expire_time"]),
                    _rate_text(r["rate_limit"]),
                    r["daily_quota"] or None,
                    short_time(r["last_used_time"]),
                ]
                for r in records
            ],
        )

    emit(state, {"api_keys": records}, human)


@api_keys_group.command("revoke")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_state
def revoke_api_key(state: CliState, name: str, yes: bool) -> None:
    """Revoke an API key: irreversible.

    NAME is accounts/{account}/apiKeys/{id}. It stops authenticating at once. Asks for
    confirmation unless --yes. Needs the admin role.
    """
    _confirm("revoke", name, yes)
    key = state.client().revoke_api_key(name)
    _show(state, api_key_record(key), _print_api_key, f"revoked {key.name}")


@api_keys_group.command("usage")
@click.argument("name")
@click.option(
    "--days",
    type=click.IntRange(1, 366),
    default=None,
    help="How many UTC days back from today, 1 to 366. Default: the vault's, 31.",
)
@json_option
@pass_state
def usage(state: CliState, name: str, days: int | None) -> None:
    """Show a credential's requests per day and method.

    NAME is an API key, accounts/{account}/apiKeys/{id}, or an access key,
    accounts/{account}/accessKeys/{id}. Counted are the calls that were authenticated and
    allowed by scope and limits, per UTC day and method. Needs the admin role.
    """
    counters = state.client().get_usage(name, days or 0)
    records: list[dict[str, Any]] = [
        {"day": counter.day, "method": counter.method, "count": counter.count}
        for counter in counters
    ]
    total = sum(counter.count for counter in counters)

    def human() -> None:
        print_table(
            ["DAY", "METHOD", "COUNT"],
            [[r["day"], r["method"], r["count"]] for r in records],
            title=f"usage of {name}",
        )
        note(f"{total} requests")

    emit(state, {"name": name, "days": days, "counters": records, "total": total}, human)
