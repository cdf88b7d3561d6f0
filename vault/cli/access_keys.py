"""`vaultctl access-keys ...`: issue, inspect, reset, revoke and delete access keys over gRPC
(admin role)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vault.cli._context import CliState, json_option, pass_state
from vault.cli._identity_common import (
    ADMIN_NOTE,
    account_of,
    confirm,
    enum_name,
    proto_time,
    relative_key,
    show,
)
from vault.cli._output import (
    emit,
    first,
    limit_option,
    note,
    print_fields,
    print_table,
    short_time,
)
from vault.cli._secret_output import SecretOutputs, force_option
from vault.cli.keys import account_parent

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vault.gen.vault.v1 import identity_service_pb2, resources_pb2

F = TypeVar("F", bound=Callable[..., Any])

LEVELS = ("READ", "READWRITE", "FULL")

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


@click.group("access-keys", help=ACCESS_KEYS_HELP)
def access_keys_group() -> None:
    pass


def access_key_record(key: resources_pb2.AccessKey) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    return {
        "name": key.name,
        "access_key_id": key.access_key_id,
        "account": account_of(key.name),
        "state": enum_name(resources_pb2.CredentialState, key.state, "CREDENTIAL_STATE_"),
        "grants": [
            {
                "resource": grant.resource,
                "level": enum_name(resources_pb2.AccessLevel, grant.level, "ACCESS_LEVEL_"),
            }
            for grant in key.grants
        ],
        "description": key.description,
        "create_time": proto_time(key, "create_time"),
        "last_used_time": proto_time(key, "last_used_time"),
        "secret_reset_time": proto_time(key, "secret_reset_time"),
    }


def _grants_text(grants: list[dict[str, str]]) -> str:
    # The --grant syntax, so a listing can be pasted back into a command.
    return ", ".join(f"{grant['resource']}={grant['level']}" for grant in grants)


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
        grants.append((relative_key(resource.strip(), parent, "--grant"), level))
    return grants


def _credentials_json(access_key_id: str, secret_key: str) -> bytes:
    # The format --credentials-file and the vault's own admin-credentials.json use.
    return (json.dumps({"access_key_id": access_key_id, "secret_key": secret_key}) + "\n").encode()


def _secret_options(function: F) -> F:
    function = force_option(function)
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
    show(state, access_key_record(key), _print_access_key)


@access_keys_group.command("list")
@click.argument("account")
@limit_option("access keys", pages=False)
@json_option
@pass_state
def list_access_keys(state: CliState, account: str, limit: int | None) -> None:
    """List the access keys of an account.

    ACCOUNT is `acme` or `accounts/acme`. Needs the admin role.
    """
    keys = first(state.client().list_access_keys(account_parent(account)), limit)
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
    confirm("revoke", name, yes)
    key = state.client().revoke_access_key(name)
    show(state, access_key_record(key), _print_access_key, f"revoked {key.name}")


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
    confirm("delete", name, yes)
    state.client().delete_access_key(name)
    emit(state, {"name": name, "deleted": True}, lambda: note(f"deleted {name}"))
