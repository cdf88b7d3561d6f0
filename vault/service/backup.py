"""Backup and restore: a signed bundle of the selected keys' and buckets' metadata and wrapped
blobs (vault.domain.backup), checked without restoring, and restored into a token that holds
the same root generations (received by the clone ceremony).

Keys move only as blobs wrapped under a root generation, so a bundle is useful only to a token
that holds that generation; token-resident keys cannot leave at all and are listed as skipped.
Revocation sticks: revoked and destroyed keys leave as tombstones, and a restore never brings
back a key (or version) the destination has a tombstone for, whatever older bundle holds it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.domain.backup import (
    BundleWriter,
    ExportRecord,
    ParsedBundle,
    Selection,
    Skipped,
    SkipReason,
    Tombstone,
    bucket_entry,
    bucket_from_entry,
    canonical,
    fingerprint,
    key_entry,
    key_from_entry,
    read_bundle,
    skipped_entry,
    tombstone_entry,
    tombstone_from_entry,
)
from vault.domain.buckets import Bucket
from vault.domain.errors import (
    AlreadyExists,
    BackupInvalid,
    InvalidArgument,
    NotFound,
    RootGenerationMissing,
)
from vault.domain.models import Key, KeyState, KeyVersion, Page, VersionState
from vault.domain.names import (
    BucketName,
    KeyName,
    KeyVersionName,
    check_id,
    parse_key_or_version,
)
from vault.domain.ports import AccountDirectory, BackupSigner, BackupStore, KeyStore
from vault.service.keys import Clock, utc_now

log = logging.getLogger(__name__)

MAX_SELECTION_ITEMS: Final = 1000
# Lines sent per chunk of ExportBackup's stream, unless the caller asks for smaller chunks (the
# transport does, to stay within its message limit).
CHUNK_BYTES: Final = 256 * 1024
# Keys and buckets a restore writes per store transaction: one statement per table for all
# of them, rather than one transaction per key.
RESTORE_BATCH: Final = 50
# A restore's report file: <bundle file name><REPORT_SUFFIX with the restore's time>, cut to
# the 255 bytes a file name may take.
REPORT_SUFFIX: Final = ".restore-{:%Y%m%dT%H%M%S%fZ}.jsonl"
_MAX_FILE_NAME: Final = 255


@dataclass(frozen=True, slots=True)
class ExportChunk:
    data: bytes = field(repr=False)
    entries_done: int
    # An upper bound known before the first entry (every key and bucket of the selected
    # accounts), for a progress bar; the last chunk's is entries_done.
    entries_estimate: int
    export_id: str


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    bundle: ParsedBundle
    signer_fingerprint: str

    @property
    def export_id(self) -> str:
        return self.bundle.export_id


@dataclass(frozen=True, slots=True)
class RestoreReport:
    bundle: VerifiedBundle
    restored: list[str]
    skipped: list[Skipped]
    tombstones_recorded: int
    # The file in the backup directory listing every outcome; "" if it could not be written.
    report_file: str = ""

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.skipped:
            counts[str(item.reason)] = counts.get(str(item.reason), 0) + 1
        return counts


@dataclass(frozen=True, slots=True)
class RestoreProgress:
    """How far a restore is: entries of the bundle done (keys, buckets, tombstones, skipped
    entries) of its total, and outcomes so far; the last step carries the report."""

    entries_done: int
    entries_total: int
    restored: int
    skipped: int
    report: RestoreReport | None = None


def verify_bundle(lines: Iterable[bytes], expected_fingerprint: str = "") -> VerifiedBundle:
    """Check a bundle's completeness (vault.domain.backup.read_bundle) and its signature under
    the public key it carries, and, with expected_fingerprint, that this key is the one
    expected (the exporting vault's, as `vaultctl backup export` printed it). Works offline:
    no token or store is needed. BackupInvalid on any failure."""
    bundle = read_bundle(lines)
    public_der = bundle.public_key_der
    signer = fingerprint(public_der)
    if expected_fingerprint and expected_fingerprint.lower() != signer:
        raise BackupInvalid(
            "the bundle is signed by another key than the one expected",
            metadata={"signer_fingerprint": signer},
        )
    try:
        public = serialization.load_der_public_key(public_der)
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
            public.curve, ec.SECP256R1
        ):
            raise BackupInvalid("the bundle's signing key is not an EC P-256 key")
        public.verify(bundle.signature, bundle.signed_payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise BackupInvalid("the bundle's signature does not verify") from None
    return VerifiedBundle(bundle, signer)


class BundleFiles:
    """Bundles on the vault host, in one directory: RestoreBackup and VerifyBackup name a file
    there (a plain file name), never a path, so no caller reads another file of the host."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @property
    def directory(self) -> Path:
        return self._directory

    def lines(self, file_name: str) -> list[bytes]:
        if (
            not file_name
            or "/" in file_name
            or "\\" in file_name
            or file_name.startswith(".")
            or len(file_name) > 255
        ):
            raise InvalidArgument(
                "file_name must be the name of a file in the vault's backup directory",
                metadata={"field": "file_name"},
            )
        path = self._directory / file_name
        try:
            with path.open("rb") as handle:
                return list(handle)
        except FileNotFoundError:
            raise NotFound(
                "no such bundle in the vault's backup directory", metadata={"name": file_name}
            ) from None
        except OSError:
            raise InvalidArgument(
                "the bundle cannot be read", metadata={"name": file_name}
            ) from None

    def write_report(self, bundle_name: str, when: datetime, lines: Iterable[bytes]) -> str:
        """Write a restore's report next to its bundle: a new file of mode 0600, complete or
        absent (a temporary file renamed once written). Returns its file name."""
        suffix = REPORT_SUFFIX.format(when)
        name = bundle_name[: _MAX_FILE_NAME - len(suffix)] + suffix
        # A leading dot: lines() refuses the name, so no call reads a half-written report.
        temporary = self._directory / f".report-{uuid.uuid4().hex}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                for line in lines:
                    handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self._directory / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return name


class BackupManagement:
    def __init__(
        self,
        store: BackupStore,
        keystore: KeyStore,
        signer: BackupSigner,
        files: BundleFiles,
        accounts: AccountDirectory,
        clock: Clock = utc_now,
    ) -> None:
        self._accounts = accounts
        self._store = store
        self._keystore = keystore
        self._signer = signer
        self._files = files
        self._clock = clock

    # -- export ---------------------------------------------------------------------------

    def export(self, selection: Selection, chunk_bytes: int = CHUNK_BYTES) -> Iterator[ExportChunk]:
        """The bundle of selection, in chunks of at most chunk_bytes. A chunk ends at the end
        of a line, except that a line longer than chunk_bytes (a key with many large
        versions, a long selection in the header) is split over consecutive chunks: the
        chunks only ever need concatenating. The export is logged (export id, time,
        selection, key versions whose blobs it holds) once its trailer is signed."""
        _check_selection(selection)
        created = self._clock()
        export_id = uuid.uuid4().hex
        public_der = self._signer.backup_public_key_der()
        writer = BundleWriter(
            export_id, created, selection, self._keystore.token_identity(), public_der
        )
        accounts = self._store.selected_accounts(selection)
        estimate = self._store.count_keys(accounts)
        held: list[KeyVersionName] = []
        buffer = bytearray()
        done = 0

        def add(line: bytes) -> Iterator[ExportChunk]:
            """Put line in the buffer, sending what must go first to keep chunks in bounds."""
            if buffer and len(buffer) + len(line) > chunk_bytes:
                yield ExportChunk(bytes(buffer), done, estimate, export_id)
                buffer.clear()
            buffer.extend(line)
            while len(buffer) > chunk_bytes:
                yield ExportChunk(bytes(buffer[:chunk_bytes]), done, estimate, export_id)
                del buffer[:chunk_bytes]

        yield from add(writer.header_line())
        for account in accounts:
            for key, versions in self._store.keys_of(account):
                if not _selects(selection, str(key.name), account, selection.keys):
                    continue
                for entry in _key_entries(key, versions, held):
                    yield from add(writer.entry_line(entry))
                done += 1
            for bucket, master, versions in self._store.buckets_of(account):
                if not _selects(selection, str(bucket.name), account, selection.buckets):
                    continue
                yield from add(writer.entry_line(_bucket_entry(bucket, master, versions, held)))
                done += 1
        payload, summary = writer.signed_payload()
        signature = self._signer.sign_backup(payload)
        self._store.record_export(
            ExportRecord(
                export_id=export_id,
                create_time=created,
                selection=selection.as_json(),
                entry_count=sum(writer.counts.values()),
                signer_fingerprint=fingerprint(public_der),
            ),
            held,
        )
        yield from add(writer.trailer_line(summary, signature))
        log.info("exported backup %s: %s", export_id, writer.counts)
        yield ExportChunk(bytes(buffer), done, done, export_id)

    def exports_holding(
        self, name: str, page_size: int = 0, page_token: str = ""
    ) -> Page[ExportRecord]:
        """A page of the logged exports whose bundles hold key version name's blob, oldest
        first."""
        return self._store.exports_holding(KeyVersionName.parse(name), page_size, page_token)

    # -- verify and restore ---------------------------------------------------------------

    def verify(self, file_name: str, expected_fingerprint: str = "") -> VerifiedBundle:
        return verify_bundle(self._files.lines(file_name), expected_fingerprint)

    def restore(self, file_name: str, expected_fingerprint: str = "") -> RestoreReport:
        """Restore what the bundle holds and this store and token can take; the report lists
        every outcome, and so does a file written next to the bundle (a response may not
        carry them all)."""
        for step in self.restoring(file_name, expected_fingerprint):
            if step.report is not None:
                return step.report
        raise AssertionError("a restore ends with its report")

    def restoring(
        self, file_name: str, expected_fingerprint: str = ""
    ) -> Generator[RestoreProgress, None, None]:
        """restore, step by step: a RestoreProgress once the bundle is verified, one after
        each batch of entries (its keys and buckets stored in one transaction), and a last
        one that carries the report. A caller that stops iterating (closes the generator)
        stops the restore between two batches: what was restored stays whole, and the
        report file lists what was done up to there."""
        started = self._clock()
        verified = verify_bundle(self._files.lines(file_name), expected_fingerprint)
        bundle = verified.bundle
        parsed: list[tuple[str, Any]] = []
        for entry in bundle.entries:
            kind = entry["kind"]
            if kind == "key":
                key, versions = key_from_entry(entry)
                parsed.append((kind, (key, versions, None)))
            elif kind == "bucket":
                bucket, key, versions = bucket_from_entry(entry)
                parsed.append((kind, (key, versions, bucket)))
            elif kind == "tombstone":
                parsed.append((kind, tombstone_from_entry(entry)))
            else:
                parsed.append((kind, _skipped_from_entry(entry)))
        self._require_some_root(parsed)

        total = len(parsed)
        restored: list[str] = []
        skipped: list[Skipped] = []
        # Every outcome in bundle order, restored and skipped interleaved, for the report file.
        outcomes: list[bytes] = []
        recorded = 0
        supported = self._keystore.supported_algorithms()
        # Accounts are never deleted: one look-up per account and restore.
        known_accounts: dict[str, bool] = {}
        done = 0
        try:
            yield RestoreProgress(0, total, 0, 0)
            for batch in _batches(parsed, RESTORE_BATCH):
                results = self._restore_batch(batch, supported, known_accounts)
                for (kind, item), result in zip(batch, results, strict=True):
                    if kind == "skipped":
                        skipped.append(item)
                        outcomes.append(_outcome_line(item))
                    elif kind == "tombstone":
                        recorded += int(result)
                    else:
                        key, _, bucket = item
                        shown = str(bucket.name) if bucket is not None else str(key.name)
                        if isinstance(result, Skipped):
                            left_out = [replace(result, name=shown)]
                        else:
                            restored.append(shown)
                            outcomes.append(_outcome_line(shown))
                            left_out = result
                        skipped.extend(left_out)
                        outcomes.extend(_outcome_line(one) for one in left_out)
                done += len(batch)
                # Only between batches: a batch is one transaction, so a caller that stops
                # here leaves each of its keys whole and the report file complete.
                if done < total:
                    yield RestoreProgress(done, total, len(restored), len(skipped))
        except GeneratorExit:
            # The caller went away: what was restored stays, and the report says how far
            # the restore got, so that running it again (which skips those as EXISTS) is
            # the way to complete it.
            self._write_report(file_name, started, outcomes, bundle.export_id)
            log.info(
                "restore of backup %s stopped after %d of %d entries: %d restored, "
                "%d skipped, %d tombstones recorded",
                bundle.export_id,
                done,
                total,
                len(restored),
                len(skipped),
                recorded,
            )
            raise
        report_file = self._write_report(file_name, started, outcomes, bundle.export_id)
        log.info(
            "restored backup %s: %d restored, %d skipped, %d tombstones recorded",
            bundle.export_id,
            len(restored),
            len(skipped),
            recorded,
        )
        report = RestoreReport(verified, restored, skipped, recorded, report_file)
        yield RestoreProgress(total, total, len(restored), len(skipped), report)

    def _write_report(
        self, file_name: str, started: datetime, outcomes: list[bytes], export_id: str
    ) -> str:
        try:
            return self._files.write_report(file_name, started, outcomes)
        except OSError as error:
            # What was restored stays restored: the response still counts every outcome.
            log.warning(
                "the report of restoring backup %s was not written: %s",
                export_id,
                error.strerror,
            )
            return ""

    def _require_some_root(self, parsed: list[tuple[str, Any]]) -> None:
        """RootGenerationMissing when the bundle has keys and the token holds none of the
        root generations they are wrapped under (it never received them)."""
        samples: dict[int, tuple[KeyVersion, Key]] = {}
        for kind, item in parsed:
            if kind not in ("key", "bucket"):
                continue
            key, versions, _ = item
            for version in versions:
                if version.root_generation is not None and version.wrapped_blob is not None:
                    samples.setdefault(version.root_generation, (version, key))
        if not samples:
            return
        # Searches the token afresh: the roots may have arrived since the vault started.
        self._keystore.root_generations_present()
        if any(self._keystore.opens(version, key.algorithm) for version, key in samples.values()):
            return
        generations = ", ".join(str(generation) for generation in sorted(samples))
        raise RootGenerationMissing(
            f"this token does not hold root generation {generations} the bundle's keys are "
            "wrapped under: it must receive the roots by the clone ceremony first",
            metadata={"root_generations": generations},
        )

    def _record_tombstone(self, tombstone: Tombstone) -> int:
        name, version = _tombstone_target(tombstone.name)
        return int(self._store.add_tombstone(name, version, tombstone))

    def _restore_batch(
        self,
        batch: list[tuple[str, Any]],
        supported: frozenset[Any],
        known_accounts: dict[str, bool],
    ) -> list[Any]:
        """The outcome of each entry of batch, in order: for a tombstone whether it was new,
        for a skipped entry itself, for a key or bucket a Skipped or the versions it left
        out. Its keys and buckets are stored in one transaction."""
        results: list[Any] = [None] * len(batch)
        # Tombstones first: a bundle holds a revoked version's tombstone before its key, and
        # _batches starts a new batch rather than put one after its key.
        for index, (kind, item) in enumerate(batch):
            if kind == "tombstone":
                results[index] = self._record_tombstone(item)
            elif kind == "skipped":
                results[index] = item
        entries = [index for index, (kind, _) in enumerate(batch) if kind in ("key", "bucket")]
        tombstones = self._store.tombstones_of([batch[index][1][0].name for index in entries])
        ready: dict[int, list[Skipped]] = {}
        for index in entries:
            key, versions, _ = batch[index][1]
            checked = self._check_one(
                key, versions, supported, tombstones[key.name], known_accounts
            )
            if isinstance(checked, Skipped):
                results[index] = checked
            else:
                ready[index] = checked
        if not ready:
            return results
        items = [
            (
                replace(batch[index][1][0], etag=0, request_id=""),
                _kept(batch[index][1][1], left_out),
                batch[index][1][2],
            )
            for index, left_out in ready.items()
        ]
        try:
            taken = self._store.restore_keys(items)
        except AlreadyExists:
            # Two entries of one name, or a key created meanwhile: one transaction per key
            # tells which.
            taken = set()
            for key, kept, bucket in items:
                try:
                    self._store.restore_key(key, kept, bucket)
                except AlreadyExists:
                    taken.add(key.name)
        for index, left_out in ready.items():
            name = batch[index][1][0].name
            results[index] = Skipped(str(name), SkipReason.EXISTS) if name in taken else left_out
        return results

    def _check_one(
        self,
        key: Key,
        versions: list[KeyVersion],
        supported: frozenset[Any],
        tombstones: list[Tombstone],
        known_accounts: dict[str, bool],
    ) -> Skipped | list[Skipped]:
        """Whether key (or a bucket's master key) may be restored: a Skipped for it, or the
        versions its tombstones leave out. Every blob it keeps is trial-unwrapped here."""
        name = str(key.name)
        left_out: list[Skipped] = []
        dropped: set[int] = set()
        for tombstone in tombstones:
            if tombstone.name == name:
                reason = (
                    SkipReason.DESTROYED_LATER
                    if tombstone.state is KeyState.DESTROYED
                    else SkipReason.REVOKED_LATER
                )
                return Skipped(name, reason, f"{tombstone.state} at {tombstone.time.isoformat()}")
            number = KeyVersionName.parse(tombstone.name).version
            if number not in dropped:
                dropped.add(number)
                left_out.append(
                    Skipped(
                        tombstone.name,
                        SkipReason.REVOKED_LATER,
                        f"{tombstone.state} at {tombstone.time.isoformat()}",
                    )
                )
        if key.algorithm not in supported:
            return Skipped(name, SkipReason.UNSUPPORTED_ALGORITHM, str(key.algorithm))
        account = key.name.account
        if account not in known_accounts:
            known_accounts[account] = self._accounts.get_account(account) is not None
        if not known_accounts[account]:
            return Skipped(
                name,
                SkipReason.UNKNOWN_ACCOUNT,
                f"create accounts/{key.name.account} here first (vaultctl accounts create)",
            )
        for version in _kept(versions, left_out):
            if version.state is VersionState.DESTROYED:
                continue
            if not self._keystore.opens(version, key.algorithm):
                return Skipped(
                    name,
                    SkipReason.UNKNOWN_ROOT_GENERATION,
                    f"root generation {version.root_generation} is not this token's, or "
                    "missing from it",
                )
        return left_out


def _kept(versions: list[KeyVersion], left_out: list[Skipped]) -> list[KeyVersion]:
    """versions less those left_out names (the revoked ones)."""
    dropped = {KeyVersionName.parse(item.name).version for item in left_out}
    return [version for version in versions if version.number not in dropped]


def _batches(parsed: list[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    """parsed in consecutive batches of at most size entries. A batch records its tombstones
    before it restores its keys, so a tombstone of a key already in the batch starts the next
    one: each key then meets exactly the tombstones it would meet one entry at a time."""
    batch: list[tuple[str, Any]] = []
    keys_in_batch: set[KeyName] = set()
    for kind, item in parsed:
        if kind == "tombstone" and _tombstone_target(item.name)[0] in keys_in_batch:
            yield batch
            batch, keys_in_batch = [], set()
        batch.append((kind, item))
        if kind in ("key", "bucket"):
            keys_in_batch.add(item[0].name)
        if len(batch) >= size:
            yield batch
            batch, keys_in_batch = [], set()
    if batch:
        yield batch


def _check_selection(selection: Selection) -> None:
    items = (*selection.accounts, *selection.keys, *selection.buckets)
    if len(items) > MAX_SELECTION_ITEMS:
        raise InvalidArgument(f"a selection names at most {MAX_SELECTION_ITEMS} items")
    for account in selection.accounts:
        check_id("account", account)
    for name in (*selection.keys, *selection.buckets):
        if not name.startswith("accounts/") or len(name) > 256:
            raise InvalidArgument(
                "selected keys and buckets are names or prefixes of names (accounts/...)",
                metadata={"field": "selection"},
            )


def _selects(selection: Selection, name: str, account: str, names: tuple[str, ...]) -> bool:
    if selection.everything or account in selection.accounts:
        return True
    return any(name.startswith(prefix) for prefix in names)


def _key_entries(
    key: Key, versions: list[KeyVersion], held: list[KeyVersionName]
) -> Iterator[dict[str, Any]]:
    """The entries of one key: skipped (token-resident), a tombstone (revoked or destroyed),
    or the key with its versions, and a tombstone per revoked version."""
    name = str(key.name)
    if key.token_resident:
        yield skipped_entry(
            Skipped(name, SkipReason.TOKEN_RESIDENT, "token-resident keys never leave the token")
        )
        return
    if key.state is KeyState.REVOKED:
        yield tombstone_entry(
            name,
            KeyState.REVOKED,
            key.revoke_time or key.update_time,
            key.revocation_reason_code,
            key.revocation_reason,
        )
        return
    if key.state is KeyState.DESTROYED:
        yield tombstone_entry(name, KeyState.DESTROYED, key.update_time)
        return
    exported: list[KeyVersion] = []
    for version in versions:
        if version.state is VersionState.PENDING:
            continue
        if version.revoked:
            assert version.revoke_time is not None
            yield tombstone_entry(
                str(version.name),
                KeyState.REVOKED,
                version.revoke_time,
                version.revocation_reason_code,
                version.revocation_reason,
            )
            continue
        exported.append(version)
        if version.wrapped_blob is not None:
            held.append(version.name)
    yield key_entry(key, exported)


def _bucket_entry(
    bucket: Bucket, master: Key, versions: list[KeyVersion], held: list[KeyVersionName]
) -> dict[str, Any]:
    if master.state is KeyState.DESTROYED:
        return tombstone_entry(str(bucket.name), KeyState.DESTROYED, master.update_time)
    exported = [version for version in versions if version.state is not VersionState.PENDING]
    held.extend(version.name for version in exported if version.wrapped_blob is not None)
    return bucket_entry(bucket, master, exported)


def _outcome_line(item: str | Skipped) -> bytes:
    """A report file's line: a restored name, or a Skipped (names and reasons, no material)."""
    if isinstance(item, str):
        line = {"name": item, "outcome": "restored", "reason": "", "detail": ""}
    else:
        line = {
            "name": item.name,
            "outcome": "skipped",
            "reason": str(item.reason),
            "detail": item.detail,
        }
    return canonical(line) + b"\n"


def _skipped_from_entry(entry: dict[str, Any]) -> Skipped:
    try:
        return Skipped(str(entry["name"]), SkipReason(entry["reason"]), str(entry["detail"]))
    except (KeyError, ValueError):
        raise BackupInvalid("the bundle holds a malformed skipped entry") from None


def _tombstone_target(name: str) -> tuple[KeyName, int]:
    """The key and version (0: the key itself) a tombstone names; a bucket's is its master
    key's."""
    try:
        if "/buckets/" in name:
            return BucketName.parse(name).master_key, 0
        key_name, number = parse_key_or_version(name)
    except InvalidArgument:
        raise BackupInvalid("the bundle holds a tombstone with a malformed name") from None
    return key_name, number or 0
