"""`vaultctl ceremony ...`: key ceremonies on the token of this machine (README "Ceremonies").

Each ceremony is described by one TOML file, reviewed before it runs, and writes a record
signed by the token's ceremony key to the file it names. Like `vaultctl token`, these commands
talk to the token directly, not through a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vault.cli._context import (
    EXIT_LOCAL,
    EXIT_MISMATCH,
    CliError,
    CliState,
    json_option,
    pass_state,
    private_files,
)
from vault.cli._output import emit, note, print_fields, print_table

if TYPE_CHECKING:
    from vault.app import CeremonySite
    from vault.service.ceremonies import CeremonyConfig

_NAME = r"^[a-z][a-z0-9-]{0,62}$"


class _Ceremony(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where the signed record goes; relative paths are from the ceremony file's directory.
    record: Path
    operators: list[str] = Field(default_factory=list)
    description: str = ""


class TransportKeyCreate(_Ceremony):
    ceremony: Literal["transport-key-create"]
    name: str = Field(pattern=_NAME)
    bits: Literal[3072, 4096] = 3072
    public_key_out: Path


class TransportKeyTrust(_Ceremony):
    ceremony: Literal["transport-key-trust"]
    name: str = Field(pattern=_NAME)
    public_key: Path


class CloneRoots(_Ceremony):
    ceremony: Literal["clone-roots"]
    trusted_key: str = Field(pattern=_NAME)
    transfer_out: Path


class ReceiveRoots(_Ceremony):
    ceremony: Literal["receive-roots"]
    transport_key: str = Field(pattern=_NAME)
    transfer: Path
    source_signer_fingerprint: str
    # Keep the transport key pair for another transfer (by default it is destroyed once the
    # roots are in: README "Ceremonies").
    keep_transport_key: bool = False


class NewRootGeneration(_Ceremony):
    ceremony: Literal["new-root-generation"]


class RetireRootGeneration(_Ceremony):
    ceremony: Literal["retire-root-generation"]
    generation: int = Field(ge=1)


class Rewrap(_Ceremony):
    ceremony: Literal["rewrap"]
    generation: int = Field(ge=1)


class _Loaded:
    def __init__(self, path: Path, model: Any, sha256: str) -> None:
        self.path = path
        self.model = model
        self.sha256 = sha256

    def resolve(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.path.parent / relative

    def config(self) -> CeremonyConfig:
        from vault.service.ceremonies import CeremonyConfig

        return CeremonyConfig(
            self.path.name, self.sha256, tuple(self.model.operators), self.model.description
        )


def _load(path: Path, kind: type[_Ceremony]) -> _Loaded:
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise CliError(f"{path}: not a TOML file ({error})", exit_code=EXIT_LOCAL) from None
    try:
        model = kind.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in problem['loc']) or 'file'}: {problem['msg']}"
            for problem in error.errors(include_input=False, include_url=False)
        )
        raise CliError(f"{path}: {problems}", exit_code=EXIT_LOCAL) from None
    return _Loaded(path, model, hashlib.sha256(raw).hexdigest())


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise CliError(
                f"{path} exists already; a ceremony never overwrites a record or its output",
                exit_code=EXIT_LOCAL,
            )


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


@contextmanager
def _site(state: CliState) -> Iterator[CeremonySite]:
    from vault.app import ceremony_site

    private_files()
    with ceremony_site(state.settings()) as site:
        yield site


ceremony_file = click.argument(
    "ceremony_file",
    metavar="CEREMONY.toml",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)


@click.group("ceremony")
def ceremony_group() -> None:
    """Key ceremonies on this machine's token, each described by one TOML file.

    Every ceremony writes a record signed by the token's ceremony key (ECDSA P-256, created at
    first use) to the file its TOML names: what was done, by which token, to which objects,
    when, and the SHA-256 of the TOML file. `verify-record` checks one. PINs come from the
    usual settings (never the command line); the SO PIN, needed only by `transport-key
    trust`, as for `vaultctl token init`.

    \b
    Moving the roots to a second token (README "Ceremonies"):
      on token 2: vaultctl ceremony transport-key create create.toml
      on token 1: vaultctl ceremony transport-key trust trust.toml --fingerprint HEX
      on token 1: vaultctl ceremony clone-roots clone.toml
      on token 2: vaultctl ceremony receive-roots receive.toml
    """


@ceremony_group.group("transport-key")
def transport_key_group() -> None:
    """Create this token's transport key; trust another token's."""


@transport_key_group.command("create")
@ceremony_file
@json_option
@pass_state
def transport_key_create(state: CliState, ceremony_file: Path) -> None:
    """Create an RSA transport key pair (private half UNWRAP only, never extractable) and
    write its public half as PEM, with its SHA-256 fingerprint."""
    from cryptography.hazmat.primitives import serialization

    from vault.service.ceremonies import public_object

    loaded = _load(ceremony_file, TransportKeyCreate)
    spec: TransportKeyCreate = loaded.model
    record_path, pem_path = loaded.resolve(spec.record), loaded.resolve(spec.public_key_out)
    _refuse_existing(record_path, pem_path)
    with _site(state) as site:
        key = site.ceremonies.create_transport_key(spec.name, spec.bits)
        pem = serialization.load_der_public_key(key.public_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pem_path.parent.mkdir(parents=True, exist_ok=True)
        pem_path.write_bytes(pem)
        record = site.ceremonies.record(
            spec.ceremony,
            loaded.config(),
            [
                {"kind": "transport-private-key", "label": key.label, "bits": spec.bits},
                public_object("transport-public-key", key),
            ],
            {"public_key_file": str(pem_path)},
        )
        _write_json(record_path, record)
    data = {
        "label": key.label,
        "fingerprint": key.fingerprint,
        "public_key_file": str(pem_path),
        "record": str(record_path),
    }
    emit(state, data, lambda: _show_fingerprint(data))


def _show_fingerprint(data: dict[str, Any]) -> None:
    from vault.domain.ceremony import grouped

    print_fields(
        [
            ("transport key", data["label"]),
            ("public key file", data["public_key_file"]),
            ("SHA-256 fingerprint", grouped(data["fingerprint"])),
            ("record", data["record"]),
        ]
    )


@transport_key_group.command("trust")
@ceremony_file
@click.option(
    "--fingerprint",
    metavar="HEX",
    help="The SHA-256 fingerprint the key's owner read out; without it, it is asked for.",
)
@json_option
@pass_state
def transport_key_trust(state: CliState, ceremony_file: Path, fingerprint: str | None) -> None:
    """As the SO, import another token's transport public key with TRUSTED=TRUE (WRAP only),
    once its fingerprint matches the one its owner gave; then log the SO out."""
    from cryptography.hazmat.primitives import serialization

    from vault import so_pin
    from vault.app import trust_transport_key
    from vault.domain.ceremony import grouped, normalise_fingerprint, public_key_fingerprint
    from vault.domain.errors import InvalidArgument
    from vault.service.ceremonies import public_object

    loaded = _load(ceremony_file, TransportKeyTrust)
    spec: TransportKeyTrust = loaded.model
    record_path = loaded.resolve(spec.record)
    _refuse_existing(record_path)
    pem_path = loaded.resolve(spec.public_key)
    try:
        der = serialization.load_pem_public_key(pem_path.read_bytes()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except ValueError:
        raise CliError(f"{pem_path}: not a PEM public key", exit_code=EXIT_LOCAL) from None
    actual = public_key_fingerprint(der)
    if fingerprint is None:
        note(f"public key {pem_path}: SHA-256 fingerprint {grouped(actual)}")
        fingerprint = click.prompt(
            "Type the fingerprint the key's owner read out to you", err=True, default=""
        )
    try:
        expected = normalise_fingerprint(fingerprint or "")
    except InvalidArgument as error:
        raise CliError(error.message, exit_code=EXIT_LOCAL) from None
    if expected != actual:
        raise CliError(
            f"fingerprint mismatch: {pem_path} has {actual}, not {expected}; nothing trusted",
            exit_code=EXIT_MISMATCH,
            reason="FINGERPRINT_MISMATCH",
        )
    settings = state.settings()
    prompt = _prompt_so_pin if sys.stdin.isatty() else None
    private_files()

    def pin() -> str:
        try:
            return so_pin.obtain(settings, prompt).value
        except so_pin.SoPinCustodyError as error:
            raise CliError(str(error), exit_code=EXIT_LOCAL) from None

    trusted = trust_transport_key(settings, pin, spec.name, der)
    with _site(state) as site:
        record = site.ceremonies.record(
            spec.ceremony,
            loaded.config(),
            [public_object("trusted-public-key", trusted)],
            {"confirmed_fingerprint": expected},
        )
        _write_json(record_path, record)
    data = {"label": trusted.label, "fingerprint": actual, "record": str(record_path)}
    emit(
        state,
        data,
        lambda: print_fields(
            [
                ("trusted key", data["label"]),
                ("SHA-256 fingerprint", grouped(actual)),
                ("record", data["record"]),
            ]
        ),
    )


def _prompt_so_pin() -> str:
    value: str = click.prompt("SO PIN of this token", hide_input=True, err=True)
    return value


@ceremony_group.command("clone-roots")
@ceremony_file
@json_option
@pass_state
def clone_roots(state: CliState, ceremony_file: Path) -> None:
    """Wrap every root (every generation and family) under a trusted transport key into a
    root-transfer file signed by this token's ceremony key."""
    from vault.service.ceremonies import public_object, root_objects

    loaded = _load(ceremony_file, CloneRoots)
    spec: CloneRoots = loaded.model
    record_path, transfer_path = loaded.resolve(spec.record), loaded.resolve(spec.transfer_out)
    _refuse_existing(record_path, transfer_path)
    with _site(state) as site:
        transfer, roots = site.ceremonies.clone_roots(spec.trusted_key)
        _write_json(transfer_path, transfer)
        trusted = site.ceremonies.trusted_key(spec.trusted_key)
        record = site.ceremonies.record(
            spec.ceremony,
            loaded.config(),
            [public_object("trusted-public-key", trusted), *root_objects(roots)],
            {
                "transfer_file": str(transfer_path),
                "transfer_sha256": hashlib.sha256(transfer_path.read_bytes()).hexdigest(),
            },
        )
        _write_json(record_path, record)
        signer = transfer["signature"]["signer_fingerprint"]
    data = {
        "roots": [root.label for root in roots],
        "transfer_file": str(transfer_path),
        "signer_fingerprint": signer,
        "record": str(record_path),
    }
    emit(
        state,
        data,
        lambda: print_fields(
            [
                ("roots wrapped", len(roots)),
                ("transfer file", data["transfer_file"]),
                ("signed by (give to the receiver)", signer),
                ("record", data["record"]),
            ]
        ),
    )


@ceremony_group.command("receive-roots")
@ceremony_file
@json_option
@pass_state
def receive_roots(state: CliState, ceremony_file: Path) -> None:
    """Unwrap the roots of a root-transfer file with this token's transport key, after
    checking it is signed by the source token's ceremony key."""
    from vault.service.ceremonies import root_objects

    loaded = _load(ceremony_file, ReceiveRoots)
    spec: ReceiveRoots = loaded.model
    record_path, transfer_path = loaded.resolve(spec.record), loaded.resolve(spec.transfer)
    _refuse_existing(record_path)
    try:
        transfer = json.loads(transfer_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CliError(f"{transfer_path}: not a JSON file", exit_code=EXIT_LOCAL) from None
    with _site(state) as site:
        report = site.ceremonies.receive_roots(
            transfer,
            spec.source_signer_fingerprint,
            spec.transport_key,
            keep_transport_key=spec.keep_transport_key,
        )
        record = site.ceremonies.record(
            spec.ceremony,
            loaded.config(),
            root_objects([*report.received, *report.already_present]),
            {
                "transfer_file": str(transfer_path),
                "transfer_sha256": hashlib.sha256(transfer_path.read_bytes()).hexdigest(),
                "source_token": report.source,
                "source_signer_fingerprint": report.source_signer,
                "received": [root.label for root in report.received],
                "already_present": [root.label for root in report.already_present],
                "replaced_unused_roots": report.replaced,
                "transport_key_destroyed": report.transport_key_destroyed,
            },
        )
        _write_json(record_path, record)
    data = {
        "received": [root.label for root in report.received],
        "already_present": [root.label for root in report.already_present],
        "replaced_unused_roots": report.replaced,
        "transport_key_destroyed": report.transport_key_destroyed,
        "record": str(record_path),
    }
    emit(
        state,
        data,
        lambda: print_fields(
            [
                ("roots received", len(report.received)),
                ("already present", len(report.already_present)),
                ("unused roots replaced", len(report.replaced)),
                ("transport key destroyed", report.transport_key_destroyed),
                ("record", data["record"]),
            ]
        ),
    )


@ceremony_group.command("verify-record")
@click.argument(
    "record_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--signer-fingerprint",
    metavar="HEX",
    help="The ceremony key the record must be signed by. Default: this machine's token's "
    "(logs in as user).",
)
@json_option
@pass_state
def verify_record(state: CliState, record_file: Path, signer_fingerprint: str | None) -> None:
    """Check a ceremony record's (or root-transfer file's) signature and signer.

    Exit 0 when it verifies; 1 when it does not (changed, or signed by another key)."""
    from vault.domain.ceremony import DocumentInvalid, verify_document

    try:
        document = json.loads(record_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        document = None
    if signer_fingerprint is None:
        with _site(state) as site:
            signer_fingerprint = site.ceremonies.signer_fingerprint()
    try:
        verified = verify_document(document, None, signer_fingerprint)
    except DocumentInvalid as error:
        raise CliError(
            f"{record_file}: {error.message}", exit_code=EXIT_MISMATCH, reason=error.reason
        ) from None
    body = verified.body
    data = {
        "valid": True,
        "format": verified.document_format,
        "signer_fingerprint": verified.signer_fingerprint,
        "ceremony": body.get("ceremony"),
        "time": body.get("time"),
        "token": body.get("token") or body.get("source_token"),
    }
    emit(
        state,
        data,
        lambda: print_fields(
            [
                ("signature", "valid"),
                ("format", data["format"]),
                ("ceremony", data["ceremony"]),
                ("time", data["time"]),
                ("token", data["token"]),
                ("signed by", data["signer_fingerprint"]),
            ]
        ),
    )


def _table(rows: list[dict[str, Any]]) -> None:
    print_table(
        ["generation", "in token", "current", "retired", "key versions"],
        [
            [
                row["generation"],
                "yes (single root)" if row["legacy"] else ("yes" if row["in_token"] else "no"),
                "yes" if row["current"] else "",
                "yes" if row["retired"] else "",
                row["versions"],
            ]
            for row in rows
        ],
        title="Root generations",
    )


@ceremony_group.command("new-root-generation")
@ceremony_file
@json_option
@pass_state
def new_root_generation(state: CliState, ceremony_file: Path) -> None:
    """Create a new generation of roots (one per family). New key versions go under it
    once the vault restarts; older versions keep working under theirs."""
    from vault.service.ceremonies import root_objects

    loaded = _load(ceremony_file, NewRootGeneration)
    spec: NewRootGeneration = loaded.model
    record_path = loaded.resolve(spec.record)
    _refuse_existing(record_path)
    with _site(state) as site:
        generation, roots = site.ceremonies.new_root_generation()
        record = site.ceremonies.record(
            spec.ceremony, loaded.config(), root_objects(roots), {"generation": generation}
        )
        _write_json(record_path, record)
    data = {"generation": generation, "roots": [r.label for r in roots], "record": str(record_path)}
    emit(
        state,
        data,
        lambda: print_fields(
            [
                ("root generation created", generation),
                ("roots", len(roots)),
                ("record", data["record"]),
                ("next", "restart the vault: new key versions then go under this generation"),
            ]
        ),
    )


@ceremony_group.command("root-generations")
@json_option
@pass_state
def root_generations(state: CliState) -> None:
    """List root generations: in the token or not, which one new versions go under, and how
    many key versions (not destroyed) each still wraps."""
    with _site(state) as site:
        usage = site.ceremonies.root_generations()
    rows = [
        {
            "generation": u.generation,
            "in_token": u.in_token,
            "legacy": u.legacy,
            "current": u.current,
            "retired": u.retired,
            "versions": u.versions,
        }
        for u in usage
    ]
    emit(state, {"root_generations": rows}, lambda: _table(rows))


@ceremony_group.command("retire-root-generation")
@click.argument("generation", type=click.IntRange(min=1))
@ceremony_file
@json_option
@pass_state
def retire_root_generation(state: CliState, generation: int, ceremony_file: Path) -> None:
    """Destroy the roots of GENERATION. Refused while any key version (not destroyed) is
    wrapped under it, saying how many, and for the generation new versions go under."""
    loaded = _load(ceremony_file, RetireRootGeneration)
    spec: RetireRootGeneration = loaded.model
    _same_generation(spec.generation, generation, ceremony_file)
    record_path = loaded.resolve(spec.record)
    _refuse_existing(record_path)
    with _site(state) as site:
        destroyed = site.ceremonies.retire_root_generation(generation)
        record = site.ceremonies.record(
            spec.ceremony,
            loaded.config(),
            [{"kind": "root", "label": label, "destroyed": True} for label in destroyed],
            {"generation": generation},
        )
        _write_json(record_path, record)
    data = {"generation": generation, "destroyed": destroyed, "record": str(record_path)}
    emit(
        state,
        data,
        lambda: print_fields(
            [
                ("root generation retired", generation),
                ("roots destroyed", len(destroyed)),
                ("record", data["record"]),
            ]
        ),
    )


def _same_generation(configured: int, given: int, ceremony_file: Path) -> None:
    if configured != given:
        raise CliError(
            f"{ceremony_file} describes generation {configured}, not {given}",
            exit_code=EXIT_LOCAL,
        )


@ceremony_group.command("rewrap")
@click.option("--generation", type=click.IntRange(min=1), required=True, help="The old one.")
@ceremony_file
@json_option
@pass_state
def rewrap(state: CliState, generation: int, ceremony_file: Path) -> None:
    """Move keys off an old root generation: rotate every ENABLED key whose primary version
    is under it (the new version goes under the newest generation), and report the old
    versions left under it and what data still needs them.

    SoftHSM cannot wrap an existing blob again (what a root unwraps is non-extractable), so
    old versions stay under the old generation until their keys are destroyed; only then can
    `retire-root-generation` destroy its roots (README "Ceremonies")."""
    loaded = _load(ceremony_file, Rewrap)
    spec: Rewrap = loaded.model
    _same_generation(spec.generation, generation, ceremony_file)
    record_path = loaded.resolve(spec.record)
    _refuse_existing(record_path)
    with _site(state) as site:
        total = site.ceremonies.keys_under(generation)
        current = site.keystore.current_root_generation()
        # The bar goes to stderr, so --json output stays parseable.
        with click.progressbar(
            length=total, label=f"keys under generation {generation}", file=sys.stderr
        ) as bar:
            done = [0]

            def advance(count: int) -> None:
                bar.update(count - done[0])
                done[0] = count

            report = site.ceremonies.rewrap(generation, site.keys, current, advance)
        entries = [
            {
                "key": e.key,
                "purpose": e.purpose,
                "state": e.state,
                "new_version": e.new_version,
                "left_under_generation": e.left_under_generation,
                "note": e.note,
            }
            for e in report.entries
        ]
        record = site.ceremonies.record(
            spec.ceremony,
            loaded.config(),
            [{"kind": "key", "name": e["key"], "new_version": e["new_version"]} for e in entries],
            {
                "generation": generation,
                "target_generation": report.target_generation,
                "keys": entries,
                "versions_left_under_generation": report.versions_left,
            },
        )
        _write_json(record_path, record)
    data = {
        "generation": generation,
        "target_generation": report.target_generation,
        "keys": entries,
        "rotated": sum(1 for e in entries if e["new_version"] is not None),
        "versions_left_under_generation": report.versions_left,
        "record": str(record_path),
    }

    def human() -> None:
        print_table(
            ["key", "new version", f"versions left under {generation}", "note"],
            [
                [e["key"], e["new_version"] or "", e["left_under_generation"], e["note"]]
                for e in entries
            ],
            title=f"Rewrap of root generation {generation} to {report.target_generation}",
        )
        note(
            f"{data['rotated']} keys rotated; {report.versions_left} versions still under "
            f"generation {generation}; record {record_path}"
        )

    emit(state, data, human)
