"""`vaultctl keys ...`: create, inspect and manage the lifecycle of keys over gRPC."""

from __future__ import annotations

import re
import sys
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

import click

from vault.cli._context import (
    EXIT_LOCAL,
    EXIT_USAGE,
    EXIT_VAULT,
    CliError,
    CliState,
    json_option,
    pass_state,
)
from vault.cli._io import (
    atomic_output,
    check_out,
    force_option,
    in_option,
    output_error,
    read_input,
    write_output,
)
from vault.cli._output import (
    emit,
    first,
    format_time,
    limit_option,
    note,
    page_size_alias,
    print_fields,
    print_table,
    short_time,
)
from vault.domain.algorithms import DEFAULT_ALGORITHM, Algorithm, Purpose
from vault.domain.models import KeyState

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from vault.gen.vault.v1 import resources_pb2

# The server's largest page (vault.storage.paging.MAX_PAGE_SIZE); a bigger --limit takes several.
_MAX_PAGE = 1000

GROUP_HELP = """Create keys and manage their lifecycle on a running vault.

Keys are named accounts/{account}/keys/{key} (ids: a lower-case letter, then up to 62
lower-case letters, digits or '-'); versions are .../versions/{n}. Each key has one purpose,
fixed at creation, that decides which crypto commands it serves. Rotation adds a version
that new operations use; older versions keep decrypting and verifying.

\b
Examples:
  vaultctl keys create accounts/acme/keys/docs --purpose ENCRYPT_DECRYPT --label team=storage
  vaultctl keys create accounts/acme/keys/release --purpose SIGN_VERIFY \\
      --algorithm RSA_SIGN_PSS_3072_SHA256
  vaultctl keys list acme --purpose SIGN_VERIFY --state ENABLED
  vaultctl keys get accounts/acme/keys/docs --json
  vaultctl keys rotate accounts/acme/keys/docs
  vaultctl keys public-key accounts/acme/keys/release --out release.pem
  vaultctl keys revoke accounts/acme/keys/release --reason "laptop stolen" --yes
  vaultctl keys compromise accounts/acme/keys/release --reason "incident 1234"
  vaultctl keys revocation-feed acme --out acme
  vaultctl keys schedule-destroy accounts/acme/keys/docs --waiting-period 30d
  vaultctl keys import-job create accounts/acme/keys/docs
  vaultctl keys import accounts/acme/keys/docs --job JOB --in key.bin
"""


@click.group("keys", help=GROUP_HELP)
def keys_group() -> None:
    pass


# -- conversions from the client's messages -------------------------------------------------


def _enum_name(wrapper: Any, value: int, prefix: str) -> str:
    # The proto names carry a prefix (PURPOSE_SIGN_VERIFY); the CLI, like the domain and the
    # options it accepts, uses the bare name (SIGN_VERIFY).
    name: str = wrapper.Name(value)
    return name.removeprefix(prefix)


def _time(message: Any, field: str) -> str | None:
    if not message.HasField(field):
        return None
    timestamp: Timestamp = getattr(message, field)
    return format_time(timestamp.ToDatetime(tzinfo=UTC))


def key_record(key: resources_pb2.Key) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    primary = key.primary_version
    return {
        "name": key.name,
        "purpose": _enum_name(resources_pb2.Purpose, key.purpose, "PURPOSE_"),
        "algorithm": _enum_name(resources_pb2.Algorithm, key.algorithm, "ALGORITHM_"),
        "state": _enum_name(resources_pb2.KeyState, key.state, "KEY_STATE_"),
        "primary_version": primary,
        "primary_version_number": _version_number(primary),
        "token_resident": key.token_resident,
        "labels": dict(sorted(key.labels.items())),
        "description": key.description,
        "create_time": _time(key, "create_time"),
        "update_time": _time(key, "update_time"),
        # Two fields, not one: a scheduled destruction is a date in the future (and can still
        # be cancelled); only a DESTROYED key has a time it was destroyed, its last change.
        "destroy_scheduled_time": (
            _time(key, "destroy_scheduled_time")
            if key.state == resources_pb2.KEY_STATE_DESTROY_SCHEDULED
            else None
        ),
        "destroy_time": (
            _time(key, "update_time") if key.state == resources_pb2.KEY_STATE_DESTROYED else None
        ),
        "revocation_reason": key.revocation_reason,
        "revocation_reason_code": _reason_code(key.revocation_reason_code),
        "revoke_time": _time(key, "revoke_time"),
    }


def _reason_code(value: int) -> str | None:
    from vault.gen.vault.v1 import resources_pb2

    if value == resources_pb2.REVOCATION_REASON_UNSPECIFIED:
        return None
    return _enum_name(resources_pb2.RevocationReason, value, "REVOCATION_REASON_")


def version_record(version: resources_pb2.KeyVersion) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    return {
        "name": version.name,
        "number": _version_number(version.name),
        "state": _enum_name(resources_pb2.VersionState, version.state, "VERSION_STATE_"),
        "token_resident": version.token_resident,
        "create_time": _time(version, "create_time"),
        "destroy_time": _time(version, "destroy_time"),
        "revoke_time": _time(version, "revoke_time"),
        "revocation_reason_code": _reason_code(version.revocation_reason_code),
        "revocation_reason": version.revocation_reason,
    }


def _version_number(name: str) -> int | None:
    _, _, number = name.rpartition("/versions/")
    return int(number) if number.isdigit() else None


def _print_key(record: dict[str, Any]) -> None:
    fields: list[tuple[str, Any]] = [
        ("name", record["name"]),
        ("purpose", record["purpose"]),
        ("algorithm", record["algorithm"]),
        ("state", record["state"]),
        ("primary version", record["primary_version"]),
        ("token resident", record["token_resident"]),
        ("labels", record["labels"]),
        ("description", record["description"]),
        ("created", record["create_time"]),
        ("updated", record["update_time"]),
    ]
    if record["destroy_scheduled_time"]:
        fields.append(("destruction scheduled for", record["destroy_scheduled_time"]))
    if record["destroy_time"]:
        fields.append(("destroyed at", record["destroy_time"]))
    if record["revoke_time"]:
        fields.append(("revoked", record["revoke_time"]))
        fields.append(("revocation reason code", record["revocation_reason_code"] or "-"))
    if record["revocation_reason"]:
        fields.append(("revocation reason", record["revocation_reason"]))
    print_fields(fields)


def _show_key(state: CliState, key: resources_pb2.Key, done: str = "") -> None:
    record = key_record(key)

    def human() -> None:
        if done:
            note(done)
        _print_key(record)

    emit(state, record, human)


# -- option parsing ---------------------------------------------------------------------------


def split_key_name(name: str) -> tuple[str, str]:
    """accounts/{a}/keys/{k} -> (accounts/{a}, k). Only the shape is checked here; the
    vault validates the ids and answers MALFORMED_NAME."""
    parent, separator, key_id = name.rpartition("/keys/")
    if not separator or not parent.startswith("accounts/") or not key_id:
        raise click.BadParameter(
            f"{name!r}: expected accounts/{{account}}/keys/{{key}}", param_hint="NAME"
        )
    return parent, key_id


def account_parent(account: str) -> str:
    """`acme` or `accounts/acme` -> accounts/acme."""
    return account if account.startswith("accounts/") else f"accounts/{account}"


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        label, separator, text = value.partition("=")
        if not separator or not label:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint="--label")
        labels[label] = text
    return labels


_DURATION_RE = re.compile(r"^(?P<amount>\d+)(?P<unit>[smhdw]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> timedelta:
    match = _DURATION_RE.match(text.strip().lower())
    if not match:
        raise click.BadParameter(
            f"{text!r}: expected a number with an optional unit s, m, h, d or w (e.g. 30d)",
            param_hint="--waiting-period",
        )
    try:
        return timedelta(seconds=int(match["amount"]) * _UNIT_SECONDS[match["unit"]])
    except OverflowError:
        raise click.BadParameter(
            f"{text!r}: longer than any waiting period can be", param_hint="--waiting-period"
        ) from None


class _UpperChoice(click.Choice[str]):
    """A choice among upper-case names that also accepts lower case (sign_verify), while
    help and error messages show the names as the API and README spell them."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = value.upper() if isinstance(value, str) else value
        return str(super().convert(text, param, ctx))


def _choice(values: Any) -> click.Choice[str]:
    return _UpperChoice([str(value) for value in values])


def _algorithms_by_purpose() -> str:
    # Built from the domain's tables so the help cannot drift from what the vault accepts.
    groups = []
    for purpose in Purpose:
        default = DEFAULT_ALGORITHM[purpose]
        others = [a for a in Algorithm if a.purpose is purpose and a is not default]
        groups.append(f"{purpose}: " + ", ".join([default, *others]))
    return "; ".join(groups)


# -- commands -------------------------------------------------------------------------------


@keys_group.command("create")
@click.argument("name")
@click.option(
    "--purpose",
    type=_choice(Purpose),
    required=True,
    help="What the key is for; fixed for its lifetime. ENCRYPT_DECRYPT: encrypt, decrypt, "
    "data-key, re-encrypt. WRAP_UNWRAP: wrap, unwrap. SIGN_VERIFY: sign, verify, "
    "public-key. ASYMMETRIC_DECRYPT: asym-decrypt, public-key. MAC: mac, verify-mac. "
    "BUCKET_MASTER: bucket keys for the storage service.",
)
@click.option(
    "--algorithm",
    type=_choice(Algorithm),
    metavar="ALGORITHM",
    default=None,
    help="Algorithm of every version; must belong to the purpose (the first one listed is "
    f"the default): {_algorithms_by_purpose()}. A token may support fewer; the vault then "
    "answers UNSUPPORTED_ALGORITHM.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="A label (repeatable): keys match [a-z][a-z0-9-]{0,62}, values are at most 63 "
    "characters. Labels are metadata, not secrets.",
)
@click.option("--description", default="", help="Free text, at most 1024 characters.")
@click.option(
    "--token-resident",
    is_flag=True,
    help="Keep every version as a token object instead of wrapped under the root key, so it "
    "never leaves the token even wrapped. Ed25519 keys always are.",
)
@click.option(
    "--request-id",
    default="",
    help="Idempotency token: repeating a create with the same id returns the key the first "
    "call created instead of failing.",
)
@json_option
@pass_state
def create(
    state: CliState,
    name: str,
    purpose: str,
    algorithm: str | None,
    labels: tuple[str, ...],
    description: str,
    token_resident: bool,
    request_id: str,
) -> None:
    """Create key NAME with its first version, generated inside the token.

    NAME is the new key's resource name, accounts/{account}/keys/{key}.
    """
    parent, key_id = split_key_name(name)
    key = state.client().create_key(
        parent,
        key_id,
        purpose,
        algorithm,
        labels=parse_labels(labels),
        description=description,
        token_resident=token_resident,
        request_id=request_id,
    )
    _show_key(state, key, f"created {key.name}")


@keys_group.command("get")
@click.argument("name")
@json_option
@pass_state
def get(state: CliState, name: str) -> None:
    """Show key NAME: purpose, algorithm, state, primary version, labels, times.

    NAME is a key's resource name, accounts/{account}/keys/{key}.
    """
    _show_key(state, state.client().get_key(name))


@keys_group.command("list")
@click.argument("account")
@click.option("--purpose", type=_choice(Purpose), default=None, help="Only keys of this purpose.")
@click.option(
    "--state", "key_state", type=_choice(KeyState), default=None, help="Only keys in this state."
)
@click.option(
    "--label",
    default=None,
    metavar="KEY[=VALUE]",
    help="Only keys with this label (KEY), or with this label set to VALUE (KEY=VALUE).",
)
@limit_option("keys")
@page_size_alias
@click.option("--page-token", default="", help="Continue a listing where --limit stopped.")
@json_option
@pass_state
def list_keys(
    state: CliState,
    account: str,
    purpose: str | None,
    key_state: str | None,
    label: str | None,
    limit: int | None,
    page_size: int | None,
    page_token: str,
) -> None:
    """List the keys of ACCOUNT (`acme` or `accounts/acme`), in name order."""
    if page_size is not None:
        note("--page-size is deprecated: use --limit")
        limit = limit or page_size
    client = state.client()
    parent = account_parent(account)
    label_key, label_value = "", None
    if label:
        label_key, separator, value = label.partition("=")
        label_value = value if separator else None
    filters: dict[str, Any] = {
        "purpose": purpose,
        "state": key_state,
        "label_key": label_key,
        "label_value": label_value,
    }
    keys: list[resources_pb2.Key] = []
    next_token = page_token
    while True:
        # With a limit, the last page asks for exactly what is left, so its token resumes
        # right after the last key printed.
        size = _MAX_PAGE if limit is None else min(_MAX_PAGE, limit - len(keys))
        page = client.list_keys(parent, page_size=size, page_token=next_token, **filters)
        keys.extend(page.keys)
        next_token = page.next_page_token
        if not next_token or (limit is not None and len(keys) >= limit):
            break
    records = [key_record(key) for key in keys]

    def human() -> None:
        print_table(
            ["NAME", "PURPOSE", "ALGORITHM", "STATE", "PRIMARY", "LABELS", "CREATED"],
            [
                [
                    record["name"],
                    record["purpose"],
                    record["algorithm"],
                    record["state"],
                    record["primary_version_number"],
                    record["labels"],
                    short_time(record["create_time"]),
                ]
                for record in records
            ],
        )
        if next_token:
            note(f"more keys: --page-token {next_token}")

    emit(state, {"keys": records, "next_page_token": next_token}, human)


@keys_group.command("update")
@click.argument("name")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Replace all labels with the ones given (repeatable).",
)
@click.option("--clear-labels", is_flag=True, help="Remove every label.")
@click.option("--description", default=None, help='Replace the description ("" clears it).')
@json_option
@pass_state
def update(
    state: CliState,
    name: str,
    labels: tuple[str, ...],
    clear_labels: bool,
    description: str | None,
) -> None:
    """Replace the labels and/or the description of key NAME.

    NAME is a key's resource name. Purpose, algorithm and residency never change.
    """
    if labels and clear_labels:
        raise click.UsageError("--label and --clear-labels exclude each other")
    new_labels = {} if clear_labels else (parse_labels(labels) if labels else None)
    if new_labels is None and description is None:
        raise click.UsageError("nothing to update: give --label, --clear-labels or --description")
    key = state.client().update_key(name, labels=new_labels, description=description)
    _show_key(state, key, f"updated {key.name}")


@keys_group.command("rotate")
@click.argument("name")
@json_option
@pass_state
def rotate(state: CliState, name: str) -> None:
    """Add a new version to key NAME and make it primary.

    New operations use the new version; data protected by older versions stays readable.
    NAME is a key's resource name.
    """
    key = state.client().rotate_key(name)
    _show_key(state, key, f"rotated {key.name}: primary is now {key.primary_version}")


@keys_group.command("versions")
@click.argument("name")
@limit_option("versions", pages=False)
@json_option
@pass_state
def versions(state: CliState, name: str, limit: int | None) -> None:
    """List the versions of key NAME, oldest first. NAME is a key's resource name."""
    found = first(state.client().list_key_versions(name), limit)
    records = [version_record(version) for version in found]

    def human() -> None:
        print_table(
            ["VERSION", "STATE", "TOKEN RESIDENT", "CREATED", "DESTROYED", "REVOKED"],
            [
                [
                    record["number"],
                    record["state"],
                    record["token_resident"],
                    short_time(record["create_time"]),
                    short_time(record["destroy_time"]),
                    (
                        f"{short_time(record['revoke_time'])} "
                        f"{record['revocation_reason_code'] or ''}".strip()
                        if record["revoke_time"]
                        else None
                    ),
                ]
                for record in records
            ],
            title=f"versions of {name}",
        )

    emit(state, {"versions": records}, human)


@keys_group.command("public-key")
@click.argument("name")
@click.option(
    "--out",
    "out_path",
    metavar="FILE",
    default=None,
    help="Write the PEM to FILE instead of standard output (an existing FILE only with --force).",
)
@force_option
@json_option
@pass_state
def public_key(state: CliState, name: str, out_path: str | None, force: bool) -> None:
    """Print the PEM public key of a SIGN_VERIFY or ASYMMETRIC_DECRYPT key.

    NAME is a key (its primary version) or a key version,
    accounts/{account}/keys/{key}/versions/{n}. The PEM is a SubjectPublicKeyInfo that
    openssl and the `cryptography` package read directly.
    """
    from vault.gen.vault.v1 import resources_pb2

    check_out(state, out_path, force=force)
    public = state.client().get_public_key(name)
    record = {
        "name": public.name,
        "algorithm": _enum_name(resources_pb2.Algorithm, public.algorithm, "ALGORITHM_"),
        "pem": public.pem,
        "out": out_path,
    }
    if out_path is not None:
        write_output(out_path, public.pem.encode("ascii"), force=force)

    def human() -> None:
        if out_path is None:
            sys.stdout.write(public.pem if public.pem.endswith("\n") else public.pem + "\n")
        note(
            f"public key of {public.name} ({record['algorithm']})"
            + (f" written to {out_path}" if out_path else "")
        )

    emit(state, record, human)


@keys_group.command("enable")
@click.argument("name")
@json_option
@pass_state
def enable(state: CliState, name: str) -> None:
    """Enable key NAME again after `disable` (NAME: accounts/{account}/keys/{key})."""
    key = state.client().enable_key(name)
    _show_key(state, key, f"enabled {key.name}")


@keys_group.command("disable")
@click.argument("name")
@json_option
@pass_state
def disable(state: CliState, name: str) -> None:
    """Disable key NAME: every operation is refused until `enable`. Reversible.

    NAME is a key's resource name, accounts/{account}/keys/{key}.
    """
    key = state.client().disable_key(name)
    _show_key(state, key, f"disabled {key.name}")


REASON_CODES = ("COMPROMISED", "SUPERSEDED", "CESSATION_OF_OPERATION")


def _confirm(yes: bool, question: str, refusal: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{refusal}: pass --yes to confirm without a terminal", exit_code=EXIT_USAGE)
    click.confirm(question, abort=True, err=True)


@keys_group.command("revoke")
@click.argument("name")
@click.option(
    "--reason",
    default="",
    help='Why, in words, for the record (e.g. "laptop stolen"); at most 1024 characters.',
)
@click.option(
    "--reason-code",
    type=_choice(REASON_CODES),
    default=None,
    help="Why, as a code relying parties act on (listed in the revocation feed).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_state
def revoke(state: CliState, name: str, reason: str, reason_code: str | None, yes: bool) -> None:
    """Revoke key NAME, or one version of it: irreversible. It makes nothing new (no
    encryption, signature, wrap or MAC) but still decrypts, unwraps and verifies what it
    protected before.

    NAME is a key (every version is revoked) or a key version,
    accounts/{account}/keys/{key}/versions/{n} (only that version; rotate the key if it was
    the primary). Give --reason, --reason-code or both. Asks for confirmation unless --yes.
    """
    if not reason.strip() and reason_code is None:
        raise click.UsageError("give --reason, --reason-code or both")
    _confirm(yes, f"Revoke {name}? This cannot be undone", "revoking is irreversible")
    key = state.client().revoke_key(name, reason, reason_code)
    _show_key(state, key, f"revoked {name}")


# Calls that make something new with the version a request uses: what a compromised version
# may have produced that callers still hold.
PRODUCING_METHODS = (
    "Encrypt",
    "GenerateDataKey",
    "ReEncrypt",
    "WrapKey",
    "Sign",
    "GenerateMac",
)
CANNOT_KNOW = (
    "where callers keep what the version made (ciphertexts, wrapped data keys, signatures, "
    "MACs): the vault stores none of them; re-encrypt (crypto re-encrypt), re-wrap and re-sign "
    "under the new version",
    "which calls that named the key rather than a version used this version: they are "
    "counted by time, between the version's creation and its revocation",
    "calls in audit segments already archived out of the store (audit archive)",
    "copies of the data directory or token made other than by `vaultctl backup export` (file "
    "backups, replicas, snapshots): they still hold the version until it is destroyed there "
    "too",
    "who pinned or cached the version's public key: point relying parties at the "
    "revocation feed (keys revocation-feed)",
)


@keys_group.command("compromise")
@click.argument("name")
@click.option("--reason", default="", help="What happened, for the record (optional).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_state
def compromise(state: CliState, name: str, reason: str, yes: bool) -> None:
    """Handle the compromise of key NAME's primary version: revoke it (reason COMPROMISED),
    rotate to a new primary, and report what depends on the old version.

    NAME is a key's resource name, accounts/{account}/keys/{key}. The revoked version makes
    nothing new from then on, in every worker; it still decrypts and verifies what it
    protected, so that data can be moved to the new version. The report counts, from the
    audit log (admin role), the calls that made something with the old version, and lists
    what the vault cannot know. Asks for confirmation unless --yes.
    """
    from vault.client import VaultClientError

    split_key_name(name)
    client = state.client()
    key = client.get_key(name)
    old = key.primary_version
    _confirm(
        yes,
        f"Revoke {old} as COMPROMISED and rotate {name}? This cannot be undone",
        "revoking is irreversible",
    )
    client.revoke_key(old, reason, "COMPROMISED")
    try:
        rotated = client.rotate_key(name)
    except VaultClientError as error:
        raise CliError(
            f"{old} is revoked, but rotating {name} failed ({error.reason}): the key makes "
            "nothing new until `vaultctl keys rotate` succeeds",
            exit_code=EXIT_VAULT,
        ) from None
    versions = {version.name: version for version in client.list_key_versions(name)}
    revoked = versions[old]
    record: dict[str, Any] = {
        "name": name,
        "revoked_version": old,
        "revoke_time": _time(revoked, "revoke_time"),
        "new_primary_version": rotated.primary_version,
        "calls_with_revoked_version": None,
        "audit_log": "",
        "backups_holding_revoked_version": None,
        "cannot_know": list(CANNOT_KNOW),
    }
    try:
        record["backups_holding_revoked_version"] = [
            {
                "export_id": backup.export_id,
                "create_time": format_time(backup.create_time.ToDatetime(tzinfo=UTC)),
            }
            for backup in client.list_backups(old)
        ]
    except VaultClientError as error:
        record["backups_holding_revoked_version"] = f"not readable: {error.reason}"
    try:
        record["calls_with_revoked_version"] = _producing_calls(
            client, name, old, list(versions.values())
        )
        record["audit_log"] = "read"
    except VaultClientError as error:
        record["audit_log"] = f"not readable: {error.reason}"

    def human() -> None:
        note(f"revoked {old} (COMPROMISED); new primary version {rotated.primary_version}")
        calls = record["calls_with_revoked_version"]
        if calls is None:
            note(f"the audit log was {record['audit_log']} (it needs the admin role)")
        else:
            print_table(
                ["METHOD", "CALLS"],
                [[method, count] for method, count in calls.items()],
                title=f"calls that made something with {old} (audit log)",
            )
        backups = record["backups_holding_revoked_version"]
        if isinstance(backups, str):
            note(f"the export log was {backups} (it needs the admin role)")
        elif backups:
            print_table(
                ["EXPORT", "TIME"],
                [[backup["export_id"], backup["create_time"]] for backup in backups],
                title=f"backups that hold {old} (restoring them does not bring it back)",
            )
        else:
            note(f"no backup export holds {old}")
        note("what the vault cannot know:")
        for item in CANNOT_KNOW:
            note(f"  - {item}")

    emit(state, record, human)


def _producing_calls(
    client: Any, name: str, old: str, versions: list[resources_pb2.KeyVersion]
) -> dict[str, int]:
    """Successful calls per method that made something with version old: those that named
    it, and those that named the key while old was its newest version."""
    ordered = sorted(versions, key=lambda version: _version_number(version.name) or 0)
    index = [version.name for version in ordered].index(old)
    start = ordered[index].create_time.ToDatetime(tzinfo=UTC)
    newer = [v.create_time.ToDatetime(tzinfo=UTC) for v in ordered[index + 1 :]]
    end = min([*newer, ordered[index].revoke_time.ToDatetime(tzinfo=UTC)])
    counts = dict.fromkeys(PRODUCING_METHODS, 0)
    for event in client.iter_audit_events(resource=name, outcome="OK", start_time=start):
        method = event.method.rpartition("/")[2]
        if method not in counts:
            continue
        when = event.time.ToDatetime(tzinfo=UTC)
        if event.resource == old or (event.resource == name and start <= when <= end):
            counts[method] += 1
    return counts


@keys_group.command("revocations")
@click.argument("account")
@json_option
@pass_state
def revocations(state: CliState, account: str) -> None:
    """List the revoked key versions of ACCOUNT (`acme`, `accounts/acme`, or `-` for every
    account, admins only), with the SHA-256 of each public key."""
    from vault.gen.vault.v1 import resources_pb2

    parent = "accounts/-" if account == "-" else account_parent(account)
    records = [
        {
            "key_version": entry.key_version,
            "algorithm": _enum_name(resources_pb2.Algorithm, entry.algorithm, "ALGORITHM_"),
            "reason_code": _reason_code(entry.reason_code),
            "revoke_time": _time(entry, "revoke_time"),
            "reason": entry.reason,
            "public_key_sha256": entry.public_key_sha256.hex(),
        }
        for entry in state.client().iter_revocations(parent)
    ]

    def human() -> None:
        print_table(
            ["VERSION", "REASON", "REVOKED", "PUBLIC KEY SHA-256"],
            [
                [
                    record["key_version"],
                    record["reason_code"] or "-",
                    short_time(record["revoke_time"]),
                    record["public_key_sha256"] or "-",
                ]
                for record in records
            ],
            title=f"revocations of {parent}",
        )

    emit(state, {"revocations": records}, human)


@keys_group.command("revocation-feed")
@click.argument("account")
@click.option(
    "--out",
    "out_prefix",
    metavar="PREFIX",
    required=True,
    help="Write PREFIX.feed (the signed bytes), PREFIX.sig (DER ECDSA signature) and "
    "PREFIX.pem (the feed key); existing files only with --force.",
)
@force_option
@json_option
@pass_state
def revocation_feed(state: CliState, account: str, out_prefix: str, force: bool) -> None:
    """Fetch the signed revocation feed of ACCOUNT (or `-`: every account, admins only) for
    relying parties, streamed, so of any size, and print the feed key's SHA-256 to pin
    (README, Revocation feed)."""
    from cryptography.hazmat.primitives import serialization

    parent = "accounts/-" if account == "-" else account_parent(account)
    paths = {suffix: f"{out_prefix}.{suffix}" for suffix in ("feed", "sig", "pem")}
    for path in paths.values():
        check_out(state, path, force=force)
    # The payload goes to PREFIX.feed as it streams in (a feed may be larger than memory);
    # the file takes its name only once the stream ended with the signature.
    with atomic_output(paths["feed"], force=force) as out:
        try:
            feed = state.client().write_revocation_feed(parent, out)
        except OSError as error:
            raise output_error(paths["feed"], error) from None
    pem = serialization.load_der_public_key(feed.public_key_der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_output(paths["sig"], feed.signature, force=force)
    write_output(paths["pem"], pem, force=force)
    record = {
        "parent": parent,
        "files": paths,
        "feed_key_sha256": feed.public_key_sha256.hex(),
    }

    def human() -> None:
        note(f"revocation feed of {parent} written to {', '.join(paths.values())}")
        note(f"feed key SHA-256 (pin it): {record['feed_key_sha256']}")

    emit(state, record, human)


@keys_group.command("schedule-destroy")
@click.argument("name")
@click.option(
    "--waiting-period",
    metavar="DURATION",
    default=None,
    help="How long until the material is destroyed: seconds, or a number with s, m, h, d or "
    "w (e.g. 30d). Default: the server's keys.default_destroy_waiting_seconds (30 days); "
    "it refuses less than keys.min_destroy_waiting_seconds (1 day).",
)
@json_option
@pass_state
def schedule_destroy(state: CliState, name: str, waiting_period: str | None) -> None:
    """Schedule key NAME's material for destruction after a waiting period.

    Until then `cancel-destroy` undoes it; afterwards every version's material is destroyed
    in the token and the key remains as a DESTROYED record. NAME is a key's resource name.
    """
    period = parse_duration(waiting_period) if waiting_period is not None else None
    key = state.client().schedule_key_destruction(name, period)
    record = key_record(key)
    _show_key(
        state, key, f"{key.name}: destruction scheduled for {record['destroy_scheduled_time']}"
    )


@keys_group.command("cancel-destroy")
@click.argument("name")
@json_option
@pass_state
def cancel_destroy(state: CliState, name: str) -> None:
    """Cancel the scheduled destruction of key NAME.

    The key comes back DISABLED (REVOKED if it was revoked): re-enabling it is a separate,
    deliberate `enable`. NAME is a key's resource name.
    """
    key = state.client().cancel_key_destruction(name)
    _show_key(state, key, f"destruction of {key.name} cancelled")


# -- import ------------------------------------------------------------------------------


def _import_job_record(job: resources_pb2.ImportJob) -> dict[str, Any]:
    from vault.gen.vault.v1 import resources_pb2

    return {
        "name": job.name,
        "import_method": _enum_name(
            resources_pb2.ImportMethod, job.import_method, "IMPORT_METHOD_"
        ),
        "state": _enum_name(resources_pb2.ImportJobState, job.state, "IMPORT_JOB_STATE_"),
        "create_time": _time(job, "create_time"),
        "expire_time": _time(job, "expire_time"),
        "public_key_pem": job.public_key_pem,
    }


def _show_import_job(state: CliState, job: resources_pb2.ImportJob, done: str = "") -> None:
    record = _import_job_record(job)

    def human() -> None:
        print_fields(
            [(name, value) for name, value in record.items() if name != "public_key_pem"],
            title=job.name,
        )
        sys.stdout.write(record["public_key_pem"])
        if done:
            note(done)

    emit(state, record, human)


IMPORT_JOB_HELP = """Import jobs: a wrapping public key for one key, whose private half stays
in the vault's token (it only unwraps) until the job expires (keys.import_job_lifetime_seconds,
24 hours by default). `vaultctl keys import` wraps key material under it on this machine.

\b
Examples:
  vaultctl keys import-job create accounts/acme/keys/docs
  vaultctl keys import-job get accounts/acme/keys/docs/importJobs/j0123456789abcdef
  vaultctl keys import-job list accounts/acme/keys/docs --json
"""


@keys_group.group("import-job", help=IMPORT_JOB_HELP)
def import_job_group() -> None:
    pass


@import_job_group.command("create")
@click.argument("key")
@click.option(
    "--method",
    type=_choice(["RSA_OAEP_3072_SHA1_AES_256", "RSA_OAEP_4096_SHA1_AES_256"]),
    default="RSA_OAEP_3072_SHA1_AES_256",
    show_default=True,
    help="The job's RSA key size; the wrapping is RSA-OAEP(SHA-1) of an AES-256 key, then "
    "AES-KWP of the material.",
)
@json_option
@pass_state
def import_job_create(state: CliState, key: str, method: str) -> None:
    """Create an import job for KEY (accounts/{account}/keys/{key}) and print it with its
    public key (PEM)."""
    job = state.client().create_import_job(key, method)
    _show_import_job(state, job, f"created {job.name}")


@import_job_group.command("get")
@click.argument("name")
@json_option
@pass_state
def import_job_get(state: CliState, name: str) -> None:
    """Print import job NAME (accounts/{account}/keys/{key}/importJobs/{job})."""
    _show_import_job(state, state.client().get_import_job(name))


@import_job_group.command("list")
@click.argument("key")
@json_option
@pass_state
def import_job_list(state: CliState, key: str) -> None:
    """List the import jobs of KEY, newest first."""
    records = [_import_job_record(job) for job in state.client().list_import_jobs(key)]

    def human() -> None:
        print_table(
            ["JOB", "METHOD", "STATE", "CREATED", "EXPIRES"],
            [
                [
                    record["name"],
                    record["import_method"],
                    record["state"],
                    short_time(record["create_time"]),
                    short_time(record["expire_time"]),
                ]
                for record in records
            ],
            title=f"import jobs of {key}",
        )

    emit(state, {"import_jobs": records}, human)


@keys_group.command("import")
@click.argument("name")
@click.option(
    "--job",
    "job",
    required=True,
    metavar="JOB",
    help="An ACTIVE import job of NAME (`keys import-job create`).",
)
@in_option(
    "key material: the raw key for AES and HMAC keys, a PEM or DER private key for RSA and EC"
)
@click.option("--keep-primary", is_flag=True, help="Add the version without making it the primary.")
@json_option
@pass_state
def import_key(state: CliState, name: str, job: str, in_path: str, keep_primary: bool) -> None:
    """Import key material from a file as a new version of key NAME.

    The material is wrapped here, under the job's public key, and unwrapped only inside the
    vault's token; it never travels or rests in plaintext. An HMAC key longer than the
    hash's block is imported as its hash, which gives the same MACs.

    \b
    Examples:
      vaultctl keys import accounts/acme/keys/docs --job JOB --in key.bin
      vaultctl keys import accounts/acme/keys/release --job JOB --in release-key.pem
    """
    material = read_input(in_path, what="key material")
    try:
        version = state.client().import_key(name, job, material, keep_primary=keep_primary)
    except (ValueError, TypeError) as error:
        raise CliError(f"cannot import {in_path}: {error}", exit_code=EXIT_LOCAL) from None
    record = version_record(version)

    def human() -> None:
        note(
            f"imported {version.name}"
            + (" (the primary is unchanged)" if keep_primary else " (now primary)")
        )

    emit(state, record, human)
