"""`vaultctl crypto ...`: use keys on a running vault (encrypt, sign, wrap, MAC, random).

Data and key material are read from files or standard input only (`--in FILE`, `--in -`),
never from arguments. Results go to `--out FILE`, raw to standard output with `--out -`,
or base64 on standard output by default; under --json they are base64 fields.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

import click

from vault.cli._context import (
    EXIT_MISMATCH,
    EXIT_VAULT,
    CliError,
    CliState,
    json_option,
    pass_state,
)
from vault.cli._io import (
    STDIO,
    aad_option,
    check_out,
    force_option,
    in_base64_option,
    in_option,
    open_input,
    out_option,
    read_input,
    read_optional,
    write_output,
)
from vault.cli._output import emit, note

if TYPE_CHECKING:
    from vault.client import Verification

F = TypeVar("F", bound=Callable[..., Any])

GROUP_HELP = """Use keys on a running vault: each command needs a key of the right purpose.

Inputs come from files or standard input (`--in FILE`, `--in -`), never from arguments, so
no plaintext or key material lands in shell history or `ps`. Results are printed base64 by
default; `--out FILE` writes raw bytes (mode 0600, atomically; an existing FILE is replaced
only with --force) and `--out -` writes raw bytes to standard output. `--in-base64` reads
base64 text, so commands can be piped together.

\b
Examples:
  vaultctl crypto encrypt accounts/acme/keys/docs --in report.pdf --out report.pdf.enc
  vaultctl crypto decrypt accounts/acme/keys/docs --in report.pdf.enc --out copy.pdf
  echo -n secret | vaultctl crypto encrypt accounts/acme/keys/docs --in - \\
      | vaultctl crypto decrypt accounts/acme/keys/docs --in - --in-base64 --out -
  vaultctl crypto data-key accounts/acme/keys/docs --out dk.enc --plaintext-out dk.bin
  vaultctl crypto sign accounts/acme/keys/release --in release.tar --out release.sig
  vaultctl crypto verify accounts/acme/keys/release --in release.tar --signature release.sig
  vaultctl crypto random --size 32 --out nonce.bin
"""

NAME_HELP = "KEY is a key's resource name, accounts/{account}/keys/{key}"
VERSION_NAME_HELP = (
    "KEY is a key (its primary version) or a key version, "
    "accounts/{account}/keys/{key}/versions/{n}"
)


@click.group("crypto", help=GROUP_HELP)
def crypto_group() -> None:
    pass


def _one_stdin(*paths: str | None) -> None:
    # Standard input can be read once: a second `-` would silently read nothing.
    if sum(path == STDIO for path in paths) > 1:
        raise click.UsageError("only one input can be `-` (standard input)")


def _binary_result(
    state: CliState,
    *,
    field: str,
    data: bytes,
    out_path: str | None,
    force: bool,
    done: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Emit one binary result: to out_path, or base64 on stdout (a JSON field under --json).

    The JSON always has the same keys: field is null when the bytes went to --out."""
    printed = write_output(out_path, data, force=force)
    record: dict[str, Any] = {**(extra or {}), field: printed, "out": out_path}

    def human() -> None:
        if printed is not None:
            click.echo(printed)
        if out_path is not None and out_path != STDIO:
            done_text = f"{done}; {len(data)} bytes written to {out_path}"
        else:
            done_text = done
        note(done_text)

    emit(state, record, human)


class _Versioned(Protocol):
    """A response carrying the key version that made its bytes."""

    @property
    def key_version(self) -> str: ...


def _versioned_result(
    state: CliState,
    response: _Versioned,
    force: bool,
    field: str,
    out_path: str | None,
    done: str,
) -> None:
    """_binary_result of the bytes in response.<field> (the JSON key as well), "<done> with
    <key version>" for a person and the key version in the JSON."""
    _binary_result(
        state,
        field=field,
        data=getattr(response, field),
        out_path=out_path,
        force=force,
        done=f"{done} with {response.key_version}",
        extra={"key_version": response.key_version},
    )


@crypto_group.command("encrypt")
@click.argument("key")
@in_option("plaintext (at most keys.max_plaintext_bytes, 64 KiB by default)")
@in_base64_option
@aad_option()
@out_option("ciphertext")
@force_option
@json_option
@pass_state
def encrypt(
    state: CliState,
    key: str,
    in_path: str,
    in_base64: bool,
    aad_path: str | None,
    out_path: str | None,
    force: bool,
) -> None:
    """Encrypt with AES-256-GCM under KEY's primary version (purpose ENCRYPT_DECRYPT).

    The ciphertext records the key version that made it, so `decrypt` needs only the key.
    For larger data (over keys.max_plaintext_bytes), encrypt it locally under a `data-key`
    (envelope encryption).
    """
    _one_stdin(in_path, aad_path)
    check_out(state, out_path, force=force)
    plaintext = read_input(in_path, what="plaintext", base64_text=in_base64)
    aad = read_optional(aad_path, what="additional authenticated data")
    with _large_plaintext_advice(key):
        response = state.client().encrypt(key, plaintext, aad)
    _versioned_result(state, response, force, "ciphertext", out_path, "encrypted")


@contextlib.contextmanager
def _large_plaintext_advice(key: str) -> Iterator[None]:
    """The vault's INPUT_TOO_LARGE for a plaintext, told as what to do from here."""
    from vault.client import VaultClientError

    try:
        yield
    except VaultClientError as error:
        if error.reason != "INPUT_TOO_LARGE" or error.metadata.get("field") != "plaintext":
            raise
        limit = error.metadata.get("limit", "?")
        raise CliError(
            f"plaintext is larger than the vault's limit of {limit} bytes: encrypt it "
            f"locally under a data key instead. `vaultctl crypto data-key {key} --out "
            "FILE.dk --plaintext-out FILE.key` returns a key to encrypt FILE with (AES-GCM, "
            "say) and its encrypted copy FILE.dk to store beside the data; delete FILE.key "
            "after use, and recover it later with `vaultctl crypto decrypt "
            f"{key} --in FILE.dk --out FILE.key`",
            exit_code=EXIT_VAULT,
            reason=error.reason,
            code=error.code.name,
            metadata=error.metadata,
        ) from None


@crypto_group.command("decrypt")
@click.argument("key")
@in_option("ciphertext")
@in_base64_option
@aad_option()
@out_option("plaintext")
@force_option
@json_option
@pass_state
def decrypt(
    state: CliState,
    key: str,
    in_path: str,
    in_base64: bool,
    aad_path: str | None,
    out_path: str | None,
    force: bool,
) -> None:
    """Decrypt a ciphertext made by `encrypt` or `data-key` with KEY.

    Any failure (tampering, wrong AAD, wrong key) is the same DECRYPTION_FAILED error, so the
    vault never tells which. Works while KEY is ENABLED or REVOKED.
    """
    _one_stdin(in_path, aad_path)
    check_out(state, out_path, force=force)
    ciphertext = read_input(in_path, what="ciphertext", base64_text=in_base64)
    aad = read_optional(aad_path, what="additional authenticated data")
    response = state.client().decrypt(key, ciphertext, aad)
    _versioned_result(state, response, force, "plaintext", out_path, "decrypted")


@crypto_group.command("data-key")
@click.argument("key")
@click.option(
    "--size",
    type=click.Choice(["16", "24", "32", "64"]),
    default="32",
    show_default=True,
    help="Data key length in bytes.",
)
@aad_option()
@out_option("encrypted data key")
@force_option
@click.option(
    "--plaintext-out",
    "plaintext_path",
    metavar="FILE",
    default=None,
    help="Also return the data key itself and write it to FILE (mode 0600; an existing FILE "
    "only with --force). Without it the vault returns only the encrypted copy; `decrypt` "
    "recovers the key later.",
)
@json_option
@pass_state
def data_key(
    state: CliState,
    key: str,
    size: str,
    aad_path: str | None,
    out_path: str | None,
    plaintext_path: str | None,
    force: bool,
) -> None:
    """Generate a random data key for local encryption, encrypted under KEY.

    The encrypted data key is the output; store it beside the data. The plaintext key is only
    ever written to --plaintext-out FILE, never printed. KEY: purpose ENCRYPT_DECRYPT.
    """
    if plaintext_path == STDIO:
        raise click.BadParameter("must be a file, not `-`", param_hint="--plaintext-out")
    check_out(state, out_path, plaintext_path, force=force)
    aad = read_optional(aad_path, what="additional authenticated data")
    response = state.client().generate_data_key(
        key, int(size), aad, include_plaintext=plaintext_path is not None
    )
    if plaintext_path is not None:
        write_output(plaintext_path, response.plaintext, force=force)
    _binary_result(
        state,
        field="ciphertext",
        data=response.ciphertext,
        out_path=out_path,
        force=force,
        done=f"data key of {size} bytes encrypted with {response.key_version}"
        + (f"; plaintext key written to {plaintext_path}" if plaintext_path else ""),
        extra={"key_version": response.key_version, "plaintext_out": plaintext_path},
    )


@crypto_group.command("re-encrypt")
@click.argument("key")
@in_option("ciphertext made with KEY")
@in_base64_option
@aad_option(what="additional authenticated data the ciphertext was made with")
@click.option(
    "--to",
    "destination",
    metavar="KEY",
    default="",
    help="Key to re-encrypt under. Default: KEY itself (its current primary version).",
)
@click.option(
    "--to-aad-file",
    "to_aad_path",
    metavar="FILE",
    default=None,
    help="Read the additional authenticated data for the new ciphertext from FILE (`-` for "
    "standard input; an empty file for none). Default: the --aad-file data, so the new "
    "ciphertext is bound to the same context as the old one.",
)
@out_option("new ciphertext")
@force_option
@json_option
@pass_state
def re_encrypt(
    state: CliState,
    key: str,
    in_path: str,
    in_base64: bool,
    aad_path: str | None,
    destination: str,
    to_aad_path: str | None,
    out_path: str | None,
    force: bool,
) -> None:
    """Decrypt with KEY and encrypt again, inside the vault: the plaintext never leaves it.

    Use it after `keys rotate` (no --to) or to move data to another key (--to). Both keys:
    purpose ENCRYPT_DECRYPT. The new ciphertext keeps the --aad-file data unless
    --to-aad-file gives other data.
    """
    _one_stdin(in_path, aad_path, to_aad_path)
    check_out(state, out_path, force=force)
    ciphertext = read_input(in_path, what="ciphertext", base64_text=in_base64)
    source_aad = read_optional(aad_path, what="additional authenticated data")
    destination_aad = (
        source_aad
        if to_aad_path is None
        else read_input(to_aad_path, what="destination additional authenticated data")
    )
    response = state.client().re_encrypt(
        key,
        ciphertext,
        source_aad=source_aad,
        destination_key_name=destination,
        destination_aad=destination_aad,
    )
    _binary_result(
        state,
        field="ciphertext",
        data=response.ciphertext,
        out_path=out_path,
        force=force,
        done=f"re-encrypted from {response.source_key_version} to {response.key_version}",
        extra={
            "key_version": response.key_version,
            "source_key_version": response.source_key_version,
        },
    )


@crypto_group.command("wrap")
@click.argument("key")
@in_option("key material to wrap (16 to 4096 bytes, a multiple of 8)")
@in_base64_option
@out_option("wrapped key")
@force_option
@json_option
@pass_state
def wrap(
    state: CliState, key: str, in_path: str, in_base64: bool, out_path: str | None, force: bool
) -> None:
    """Wrap your own key material under KEY with AES key wrap with padding (RFC 5649).

    KEY: purpose WRAP_UNWRAP. The wrapped blob records the key version that made it.
    """
    check_out(state, out_path, force=force)
    material = read_input(in_path, what="key material", base64_text=in_base64)
    response = state.client().wrap_key(key, material)
    _versioned_result(state, response, force, "wrapped_key", out_path, "wrapped")


@crypto_group.command("unwrap")
@click.argument("key")
@in_option("wrapped key made by `wrap`")
@in_base64_option
@out_option("key material")
@force_option
@json_option
@pass_state
def unwrap(
    state: CliState, key: str, in_path: str, in_base64: bool, out_path: str | None, force: bool
) -> None:
    """Unwrap key material wrapped by `wrap` with KEY (purpose WRAP_UNWRAP).

    Prefer --out FILE: the result is secret key material.
    """
    check_out(state, out_path, force=force)
    wrapped = read_input(in_path, what="wrapped key", base64_text=in_base64)
    response = state.client().unwrap_key(key, wrapped)
    _versioned_result(state, response, force, "key_material", out_path, "unwrapped")


def _digest_option(function: F) -> F:
    return click.option(
        "--digest",
        "is_digest",
        is_flag=True,
        help="--in holds a precomputed digest (SHA-256 for P-256 and RSA, SHA-384 for "
        "P-384) instead of the message. Not for Ed25519 or RSA PKCS#1 v1.5 keys.",
    )(function)


_HASHED_HERE = "signed the digest of the message, computed here,"


@contextlib.contextmanager
def _signed_input(
    path: str, base64_text: bool, is_digest: bool
) -> Iterator[tuple[bytes | BinaryIO | None, bytes | None]]:
    """(message, digest) for sign and verify: a digest or base64 text read whole; a raw
    message as an open file, which the client sends whole up to 64 KiB and otherwise hashes
    a chunk at a time, so a message of any size takes bounded memory."""
    if is_digest:
        yield None, read_input(path, what="digest", base64_text=base64_text)
    elif base64_text:
        yield read_input(path, what="message", base64_text=True), None
    else:
        with open_input(path, what="message") as stream:
            yield stream, None


@crypto_group.command("sign")
@click.argument("key")
@in_option(
    "message, of any size: one over 64 KiB is hashed here and its digest signed (EC and "
    "RSA-PSS keys)"
)
@in_base64_option
@_digest_option
@out_option("signature")
@force_option
@json_option
@pass_state
def sign(
    state: CliState,
    key: str,
    in_path: str,
    in_base64: bool,
    is_digest: bool,
    out_path: str | None,
    force: bool,
) -> None:
    """Sign a message or a digest with KEY (purpose SIGN_VERIFY).

    RSA-PSS and PKCS#1 v1.5 signatures are raw; ECDSA signatures are DER; Ed25519 are 64
    bytes. Verify them here with `verify` or anywhere with the PEM from `keys public-key`.

    A message over 64 KiB is hashed here, a chunk at a time, with the hash of KEY's algorithm
    and the digest is signed: the same standard signature of the whole message. Ed25519 and
    RSA PKCS#1 v1.5 keys sign whole messages only, up to 64 KiB.
    """
    check_out(state, out_path, force=force)
    with _signed_input(in_path, in_base64, is_digest) as (message, digest):
        response = state.client().sign(key, message=message, digest=digest)
    done = "signed" if is_digest or not response.verified_digest_crc32c else _HASHED_HERE
    _versioned_result(state, response, force, "signature", out_path, done)


def _version_of(key_version: str) -> str:
    """accounts/a/keys/k/versions/1 as "version 1 of accounts/a/keys/k"."""
    key, _, number = key_version.rpartition("/versions/")
    return f"version {number} of {key}" if key else key_version


def _verdict(state: CliState, key: str, verification: Verification, what: str) -> None:
    record = {"valid": verification.valid, "key_version": verification.key_version}

    def human() -> None:
        if verification:
            click.echo(f"{what} matches ({_version_of(verification.key_version)})")
        elif "/versions/" in key:
            click.echo(f"{what} does NOT match ({_version_of(verification.key_version)})")
        else:
            click.echo(f"{what} does NOT match any version of {key}")

    emit(state, record, human)
    if not verification:
        click.get_current_context().exit(EXIT_MISMATCH)


@crypto_group.command("verify")
@click.argument("key")
@in_option("message that was signed (of any size, as for `sign`)")
@in_base64_option
@_digest_option
@click.option(
    "--signature",
    "signature_path",
    metavar="FILE",
    required=True,
    help="Read the signature from FILE (`-` for standard input).",
)
@click.option(
    "--signature-base64",
    is_flag=True,
    help="The signature file holds base64 text (as `sign` prints without --out).",
)
@json_option
@pass_state
def verify(
    state: CliState,
    key: str,
    in_path: str,
    in_base64: bool,
    is_digest: bool,
    signature_path: str,
    signature_base64: bool,
) -> None:
    """Check a signature made with KEY. Exit code 0 if it matches, 1 if not.

    A key version in KEY checks against that version only. A key name checks against each of
    its versions, so a signature made before a rotation still matches; the output names the
    version that matched.
    """
    _one_stdin(in_path, signature_path)
    signature = read_input(signature_path, what="signature", base64_text=signature_base64)
    with _signed_input(in_path, in_base64, is_digest) as (message, digest):
        verification = state.client().verify(key, signature, message=message, digest=digest)
    _verdict(state, key, verification, "signature")


@crypto_group.command("asym-decrypt")
@click.argument("key")
@in_option("RSA-OAEP ciphertext")
@in_base64_option
@out_option("plaintext")
@force_option
@json_option
@pass_state
def asym_decrypt(
    state: CliState, key: str, in_path: str, in_base64: bool, out_path: str | None, force: bool
) -> None:
    """Decrypt an RSA-OAEP ciphertext made with KEY's public key (purpose ASYMMETRIC_DECRYPT).

    Encrypt with the PEM from `keys public-key` and the OAEP hash of KEY's algorithm
    (SHA1 or SHA256, MGF1 with the same hash, no label).
    """
    check_out(state, out_path, force=force)
    ciphertext = read_input(in_path, what="ciphertext", base64_text=in_base64)
    response = state.client().asymmetric_decrypt(key, ciphertext)
    _versioned_result(state, response, force, "plaintext", out_path, "decrypted")


@crypto_group.command("mac")
@click.argument("key")
@in_option("data to authenticate")
@in_base64_option
@out_option("MAC")
@force_option
@json_option
@pass_state
def mac(
    state: CliState, key: str, in_path: str, in_base64: bool, out_path: str | None, force: bool
) -> None:
    """Compute an HMAC of the data with KEY (purpose MAC)."""
    check_out(state, out_path, force=force)
    data = read_input(in_path, what="data", base64_text=in_base64)
    response = state.client().generate_mac(key, data)
    _versioned_result(state, response, force, "mac", out_path, "MAC computed")


@crypto_group.command("verify-mac")
@click.argument("key")
@in_option("data that was authenticated")
@in_base64_option
@click.option(
    "--mac",
    "mac_path",
    metavar="FILE",
    required=True,
    help="Read the MAC from FILE (`-` for standard input).",
)
@click.option(
    "--mac-base64", is_flag=True, help="The MAC file holds base64 text (as `mac` prints)."
)
@json_option
@pass_state
def verify_mac(
    state: CliState, key: str, in_path: str, in_base64: bool, mac_path: str, mac_base64: bool
) -> None:
    """Check an HMAC made with KEY. Exit code 0 if it matches, 1 if not.

    A key version in KEY checks with that version only; a key name, with each of its
    versions. The output names the version that matched.
    """
    _one_stdin(in_path, mac_path)
    data = read_input(in_path, what="data", base64_text=in_base64)
    expected = read_input(mac_path, what="MAC", base64_text=mac_base64)
    _verdict(state, key, state.client().verify_mac(key, data, expected), "MAC")


@crypto_group.command("random")
@click.option(
    "--size",
    type=click.IntRange(1, 1024),
    required=True,
    help="Number of random bytes, from the token's generator (1 to 1024).",
)
@out_option("random bytes")
@force_option
@json_option
@pass_state
def random(state: CliState, size: int, out_path: str | None, force: bool) -> None:
    """Generate random bytes with the HSM's random number generator."""
    check_out(state, out_path, force=force)
    response = state.client().generate_random(size)
    _binary_result(
        state,
        field="data",
        data=response.data,
        out_path=out_path,
        force=force,
        done=f"{len(response.data)} random bytes",
    )


# -- batches ----------------------------------------------------------------------------------

BATCH_HELP = """Run OPERATION for every line of a JSON Lines file, in batch calls.

Each input line is one JSON object; byte fields are base64. Items may name different keys:

\b
  encrypt      {"key": KEY, "plaintext": B64, "aad": B64 (optional)}
  decrypt      {"key": KEY, "ciphertext": B64, "aad": B64 (optional)}
  sign         {"key": KEY, "message": B64} or {"key": KEY, "digest": B64}
  verify       {"key": KEY, "message": B64 or "digest": B64, "signature": B64}
  data-key     {"key": KEY}  (with --size and --include-plaintext for every line)
  bucket-key   {"bucket": BUCKET, "wrapped_key": B64}  (DecryptBucketKey)

Each output line answers the input line of the same number: the result's fields (bytes
base64, e.g. {"key_version": ..., "ciphertext": ...}; verify adds "valid"), or {"error":
{"code", "reason", "message", "metadata"}} for an item that failed alone (denied,
rate-limited, undecryptable...). The lines go to --out FILE (mode 0600: results may hold
plaintext) or to standard output. Exit status 3 if any item failed, after every line is
written; 0 otherwise (an invalid signature is a result, "valid": false).

\b
Example:
  vaultctl crypto batch sign --in requests.jsonl --out signatures.jsonl
"""

_BATCH_OPERATIONS = ("encrypt", "decrypt", "sign", "verify", "data-key", "bucket-key")
# Per-item result fields whose values are bytes (base64 in the output).
_BYTE_FIELDS = ("ciphertext", "plaintext", "signature")


@crypto_group.command("batch", help=BATCH_HELP)
@click.argument("operation", type=click.Choice(_BATCH_OPERATIONS))
@in_option("JSON Lines requests, one item per line")
@click.option(
    "--size",
    type=click.IntRange(0),
    default=32,
    show_default=True,
    help="data-key: bytes per data key (16, 24, 32 or 64).",
)
@click.option(
    "--include-plaintext",
    is_flag=True,
    help="data-key: also return each data key in plaintext.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Items per call (default: the server's limit, 1,000 unless configured lower).",
)
@out_option("JSON Lines results")
@force_option
@pass_state
def batch(
    state: CliState,
    operation: str,
    in_path: str,
    size: int,
    include_plaintext: bool,
    batch_size: int | None,
    out_path: str | None,
    force: bool,
) -> None:
    import json

    from vault.client import VaultClientError, Verification

    if out_path is not None:
        check_out(state, out_path, force=force)
    lines = [line for line in read_input(in_path, what="requests").splitlines() if line.strip()]
    items = [_batch_item(number, line) for number, line in enumerate(lines, start=1)]
    client = state.client()
    chunk = batch_size or 0
    answers: list[Any]
    if operation == "encrypt":
        answers = client.batch_encrypt(
            [(_text(i, "key"), _b64(i, "plaintext"), _b64(i, "aad", b"")) for i in items], chunk
        )
    elif operation == "decrypt":
        answers = client.batch_decrypt(
            [(_text(i, "key"), _b64(i, "ciphertext"), _b64(i, "aad", b"")) for i in items], chunk
        )
    elif operation in ("sign", "verify"):
        prehashed = _all_digests(items)
        field = "digest" if prehashed else "message"
        if operation == "sign":
            answers = client.batch_sign(
                [(_text(i, "key"), _b64(i, field)) for i in items],
                prehashed=prehashed,
                batch_size=chunk,
            )
        else:
            answers = client.batch_verify(
                [(_text(i, "key"), _b64(i, field), _b64(i, "signature")) for i in items],
                prehashed=prehashed,
                batch_size=chunk,
            )
    elif operation == "data-key":
        answers = client.batch_generate_data_key(
            [_text(i, "key") for i in items],
            size,
            include_plaintext=include_plaintext,
            batch_size=chunk,
        )
    else:
        answers = client.batch_decrypt_bucket_key(
            [(_text(i, "bucket"), _b64(i, "wrapped_key")) for i in items], chunk
        )
    failed = 0
    out_lines = []
    for answer in answers:
        record: dict[str, Any]
        if isinstance(answer, VaultClientError):
            failed += 1
            record = {
                "error": {
                    "code": answer.code.name,
                    "reason": answer.reason,
                    "message": answer.message,
                    "metadata": answer.metadata,
                }
            }
        elif isinstance(answer, Verification):
            record = {"valid": answer.valid, "key_version": answer.key_version}
        else:
            record = _batch_fields(answer)
        out_lines.append(json.dumps(record, sort_keys=True))
    text = "".join(line + "\n" for line in out_lines)
    if out_path is None or out_path == STDIO:
        click.echo(text, nl=False)
    else:
        write_output(out_path, text.encode("utf-8"), force=force)
    note(f"{len(answers) - failed} of {len(answers)} items done, {failed} failed")
    if failed:
        raise CliError(f"{failed} of {len(answers)} items failed", exit_code=EXIT_VAULT)


def _batch_item(number: int, line: bytes) -> dict[str, Any]:
    import json

    try:
        item = json.loads(line)
    except ValueError:
        raise click.BadParameter(f"line {number} is not JSON", param_hint="--in") from None
    if not isinstance(item, dict):
        raise click.BadParameter(f"line {number} is not a JSON object", param_hint="--in")
    item["#"] = number
    return item


def _text(item: dict[str, Any], field: str) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise click.BadParameter(f"line {item['#']}: {field} must be a string", param_hint="--in")
    return value


def _b64(item: dict[str, Any], field: str, default: bytes | None = None) -> bytes:
    import base64
    import binascii

    value = item.get(field)
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise click.BadParameter(
            f"line {item['#']}: {field} must be base64 text", param_hint="--in"
        )
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise click.BadParameter(
            f"line {item['#']}: {field} is not valid base64", param_hint="--in"
        ) from None


def _all_digests(items: list[dict[str, Any]]) -> bool:
    """Whether the lines give digests (True) or messages (False): all alike."""
    digests = {"digest" in item for item in items}
    if len(digests) > 1:
        raise click.BadParameter(
            "give a message on every line or a digest on every line, not both", param_hint="--in"
        )
    return digests == {True}


def _batch_fields(response: Any) -> dict[str, Any]:
    """A result message's fields for its output line: bytes base64, no CRC32C fields."""
    import base64

    record: dict[str, Any] = {}
    for descriptor, value in response.ListFields():
        name = descriptor.name
        if name.endswith("_crc32c") or name.startswith("verified_"):
            continue
        if name in _BYTE_FIELDS:
            record[name] = base64.b64encode(value).decode("ascii")
        else:
            record[name] = value
    return record
