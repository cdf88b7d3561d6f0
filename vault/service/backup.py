"""Backup and restore: a signed bundle of the selected keys' and buckets' metadata and wrapped
blobs (vault.domain.backup), checked without restoring, and restored into a token that holds
the same root generations (received by the clone ceremony).

Keys move only as blobs wrapped under a root generation, so a bundle is useful only to a token
that holds that generation; token-resident keys cannot leave at all and are listed as skipped.
Revocation sticks: revoked and destroyed keys leave as tombstones, and a restore never brings
back a key (or version) the destination has a tombstone for, whatever older bundle holds it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.domain.backup import (
    BundleReader,
    BundleSummary,
    BundleWriter,
    ExportRecord,
    Selection,
    Skipped,
    SkipReason,
    Tombstone,
    bucket_entry,
    bucket_from_entry,
    canonical,
    check_bundle,
    fingerprint,
    key_entry,
    key_from_entry,
    read_lines,
    skipped_entry,
    tombstone_entry,
    tombstone_from_entry,
)
from vault.domain.buckets import Bucket
from vault.domain.errors import (
    AlreadyExists,
    BackupInvalid,
    DiskFull,
    InvalidArgument,
    NotFound,
    RootGenerationMissing,
    StoreUnavailable,
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
# Entries checked between two steps of a restore's first pass (each step lets the caller
# stop it, and shows how far the check is).
CHECK_STEP: Final = 1000
# A restore's report file: <bundle file name><REPORT_SUFFIX with the restore's time>, cut to
# the 255 bytes a file name may take.
REPORT_SUFFIX: Final = ".restore-{:%Y%m%dT%H%M%S%fZ}.jsonl"
_MAX_FILE_NAME: Final = 255
# A restore's report keeps the first restored names and the first skipped items whose text
# (name, reason, detail) takes up to this many bytes, per list, unless its caller gives
# another bound (the transport gives its message limit): in a message each item takes more
# than its text, so that is at least what a response can carry, and the report file lists
# every outcome.
NAMES_BYTES: Final = 1 << 20


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
    bundle: BundleSummary
    signer_fingerprint: str

    @property
    def export_id(self) -> str:
        return self.bundle.export_id


@dataclass(frozen=True, slots=True)
class RestoreReport:
    bundle: VerifiedBundle
    # The restored names and skipped items in bundle order: the first ones only when there are
    # more than the restore's names_bytes (restored_total and skipped_reasons count them all).
    restored: list[str]
    skipped: list[Skipped]
    tombstones_recorded: int
    # The file in the backup directory listing every outcome; "" if it could not be written.
    report_file: str = ""
    # Every restored key and bucket, and every skipped item by reason; None: the lists are
    # whole, so their lengths count them.
    restored_total: int | None = None
    skipped_reasons: dict[str, int] | None = None

    @property
    def restored_count(self) -> int:
        return len(self.restored) if self.restored_total is None else self.restored_total

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped_by_reason().values())

    @property
    def lists_cut(self) -> bool:
        """Whether the lists hold only the first outcomes."""
        return self.restored_count > len(self.restored) or self.skipped_count > len(self.skipped)

    def skipped_by_reason(self) -> dict[str, int]:
        if self.skipped_reasons is not None:
            return dict(self.skipped_reasons)
        counts: dict[str, int] = {}
        for item in self.skipped:
            counts[str(item.reason)] = counts.get(str(item.reason), 0) + 1
        return counts


@dataclass(frozen=True, slots=True)
class RestoreProgress:
    """How far a restore is: entries of the bundle done (keys, buckets, tombstones, skipped
    entries) of its total, and outcomes so far; the last step carries the report. While the
    bundle is checked, before any entry is restored, entries_total is 0 and the bytes say
    how far the check is (a million keys take tens of seconds to check)."""

    entries_done: int
    entries_total: int
    restored: int
    skipped: int
    report: RestoreReport | None = None
    bytes_checked: int = 0
    bytes_total: int = 0


def verify_bundle(lines: Iterable[bytes], expected_fingerprint: str = "") -> VerifiedBundle:
    """Check a bundle's completeness (vault.domain.backup.check_bundle: one pass over lines,
    keeping no entry) and its signature under the public key it carries, and, with
    expected_fingerprint, that this key is the one expected (the exporting vault's, as
    `vaultctl backup export` printed it). Works offline: no token or store is needed.
    BackupInvalid on any failure."""
    return _signed(check_bundle(lines), expected_fingerprint)


def _signed(bundle: BundleSummary, expected_fingerprint: str) -> VerifiedBundle:
    """bundle, whose completeness is checked, with its signature checked as verify_bundle
    does."""
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

    def lines(self, file_name: str) -> BundleLines:
        """The lines of bundle file_name, read one at a time (vault.domain.backup.read_lines).
        The file is opened here, so a bad or missing name fails before any line is asked
        for; use the result in a with statement, which closes it."""
        path = self._directory / self._checked(file_name)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise NotFound(
                "no such bundle in the vault's backup directory", metadata={"name": file_name}
            ) from None
        except OSError:
            raise _unreadable(file_name) from None
        return BundleLines(handle, file_name)

    def private_copy(self) -> BinaryIO:
        """A new file for a restore's own copy of its bundle: in the backup directory, where
        bundles fit (a temporary directory is often a small tmpfs, held in memory), of mode
        0600, and unlinked (O_TMPFILE where the system has it: it never has a name), so no
        other process opens it and it disappears when closed, also after a crash."""
        # Should the file need a name for a moment, a leading dot keeps lines() off it.
        return tempfile.TemporaryFile(dir=self._directory, prefix=".bundle-copy-")

    def open_report(self, bundle_name: str, when: datetime) -> ReportFile:
        """A restore's report, to write line by line as the restore goes: named after the
        bundle and when, a new file of mode 0600 once finished, absent until then."""
        suffix = REPORT_SUFFIX.format(when)
        return ReportFile(self._directory, bundle_name[: _MAX_FILE_NAME - len(suffix)] + suffix)

    def write_report(self, bundle_name: str, when: datetime, lines: Iterable[bytes]) -> str:
        """Write a restore's report next to its bundle: a new file of mode 0600, complete or
        absent (a temporary file renamed once written). Returns its file name."""
        report = self.open_report(bundle_name, when)
        try:
            for line in lines:
                report.write(line)
            return report.finish()
        except BaseException:
            report.discard()
            raise

    @staticmethod
    def _checked(file_name: str) -> str:
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
        return file_name


class ReportFile:
    """A report file being written: a temporary file of mode 0600 in the backup directory
    until finish() renames it to its name, whole; discard() removes it."""

    def __init__(self, directory: Path, name: str) -> None:
        self._directory = directory
        self.name = name
        # A leading dot: lines() refuses the name, so no call reads a half-written report.
        self._temporary = directory / f".report-{uuid.uuid4().hex}.tmp"
        descriptor = os.open(
            self._temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
        )
        self._handle = os.fdopen(descriptor, "wb")

    def write(self, line: bytes) -> None:
        self._handle.write(line)

    def finish(self) -> str:
        """Make the report whole on disk under its name, which it returns."""
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self._temporary, self._directory / self.name)
        except BaseException:
            self.discard()
            raise
        return self.name

    def discard(self) -> None:
        self._handle.close()
        self._temporary.unlink(missing_ok=True)


class BundleLines:
    """The lines of an open bundle file, for one pass; closed by its with statement."""

    def __init__(self, handle: BinaryIO, file_name: str) -> None:
        self._handle = handle
        self._file_name = file_name

    def __enter__(self) -> BundleLines:
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.close()

    @property
    def size(self) -> int:
        """The file's size in bytes when opened (what a restore's check will read)."""
        return os.fstat(self._handle.fileno()).st_size

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from read_lines(self._handle)
        except OSError:
            raise _unreadable(self._file_name) from None


def _unreadable(file_name: str) -> InvalidArgument:
    return InvalidArgument("the bundle cannot be read", metadata={"name": file_name})


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
        with self._files.lines(file_name) as lines:
            return verify_bundle(lines, expected_fingerprint)

    def restore(
        self, file_name: str, expected_fingerprint: str = "", names_bytes: int = NAMES_BYTES
    ) -> RestoreReport:
        """Restore what the bundle holds and this store and token can take; the report counts
        every outcome and lists the first ones (names_bytes each list), and a file written
        next to the bundle lists them all."""
        for step in self.restoring(file_name, expected_fingerprint, names_bytes):
            if step.report is not None:
                return step.report
        raise AssertionError("a restore ends with its report")

    def restoring(
        self, file_name: str, expected_fingerprint: str = "", names_bytes: int = NAMES_BYTES
    ) -> Generator[RestoreProgress, None, None]:
        """restore, step by step: a RestoreProgress once the bundle is verified, one after
        each batch of entries (its keys and buckets stored in one transaction), and a last
        one that carries the report. A caller that stops iterating (closes the generator)
        stops the restore between two batches: what was restored stays whole, and the
        report file lists what was done up to there.

        Two passes over the bundle, each holding one line at a time. The first checks it as
        verify does, and the form of every entry, while copying its bytes to a private file
        (BundleFiles.private_copy); the second restores the entries it reads from that copy.
        So only bytes that were checked are restored, whatever happens to the bundle's file
        in the meantime."""
        started = self._clock()
        with self._files.lines(file_name) as lines:
            copy = self._private_copy()
            try:
                verified, samples = yield from _first_pass(
                    lines, copy, expected_fingerprint, lines.size
                )
                self._require_some_root(samples)
                copy.seek(0)
            except BaseException:
                copy.close()
                raise
        bundle = verified.bundle
        total = bundle.entry_count
        recorded = 0
        # Accounts are never deleted: one look-up per account and restore.
        known_accounts: dict[str, bool] = {}
        done = 0
        with copy:
            supported = self._keystore.supported_algorithms()
            items = (_entry_item(entry) for entry in _checked_entries(copy))
            outcomes = _Outcomes(names_bytes, self._open_report(file_name, started))
            try:
                yield RestoreProgress(0, total, 0, 0)
                for batch in _batches(items, RESTORE_BATCH):
                    results = self._restore_batch(batch, supported, known_accounts)
                    for (kind, item), result in zip(batch, results, strict=True):
                        if kind == "skipped":
                            outcomes.skipped(item)
                        elif kind == "tombstone":
                            recorded += int(result)
                        else:
                            key, _, bucket = item
                            shown = str(bucket.name) if bucket is not None else str(key.name)
                            if isinstance(result, Skipped):
                                outcomes.skipped(replace(result, name=shown))
                                continue
                            outcomes.restored(shown)
                            for one in result:
                                outcomes.skipped(one)
                    done += len(batch)
                    # Only between batches: a batch is one transaction, so a caller that stops
                    # here leaves each of its keys whole and the report file complete.
                    if done < total:
                        yield RestoreProgress(
                            done, total, outcomes.restored_count, outcomes.skipped_count
                        )
            except GeneratorExit:
                # The caller went away: what was restored stays, and the report says how far
                # the restore got, so that running it again (which skips those as EXISTS) is
                # the way to complete it.
                outcomes.finish(bundle.export_id)
                log.info(
                    "restore of backup %s stopped after %d of %d entries: %d restored, "
                    "%d skipped, %d tombstones recorded",
                    bundle.export_id,
                    done,
                    total,
                    outcomes.restored_count,
                    outcomes.skipped_count,
                    recorded,
                )
                raise
            except BaseException:
                outcomes.discard()
                raise
        report_file = outcomes.finish(bundle.export_id)
        log.info(
            "restored backup %s: %d restored, %d skipped, %d tombstones recorded",
            bundle.export_id,
            outcomes.restored_count,
            outcomes.skipped_count,
            recorded,
        )
        report = RestoreReport(
            verified,
            outcomes.restored_names,
            outcomes.skipped_items,
            recorded,
            report_file,
            restored_total=outcomes.restored_count,
            skipped_reasons=dict(outcomes.by_reason),
        )
        yield RestoreProgress(total, total, outcomes.restored_count, outcomes.skipped_count, report)

    def _private_copy(self) -> BinaryIO:
        try:
            return self._files.private_copy()
        except OSError as error:
            raise _copy_failed(error) from None

    def _open_report(self, file_name: str, started: datetime) -> ReportFile | OSError:
        try:
            return self._files.open_report(file_name, started)
        except OSError as error:
            return error

    def _require_some_root(self, samples: dict[int, tuple[KeyVersion, Key]]) -> None:
        """RootGenerationMissing when the bundle has keys and the token holds none of the
        root generations they are wrapped under (it never received them): samples holds a
        version with its key of each generation the bundle's blobs are wrapped under."""
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


def _first_pass(
    lines: Iterable[bytes], copy: BinaryIO, expected_fingerprint: str, size: int
) -> Generator[RestoreProgress, None, tuple[VerifiedBundle, dict[int, tuple[KeyVersion, Key]]]]:
    """Verify the bundle of lines (size bytes) as verify_bundle does, writing each line to
    copy as it is read, and check every entry's form (BackupInvalid for the first malformed
    one, once the bundle is found whole and signed, as before any key is restored). Yields a
    step at the start and every CHECK_STEP entries (the bytes copied so far are the bytes
    checked); returns the verified bundle and, per root generation its blobs are wrapped
    under, one version with its key."""
    reader = BundleReader(_copying(lines, copy))
    samples: dict[int, tuple[KeyVersion, Key]] = {}
    malformed: BackupInvalid | None = None
    yield RestoreProgress(0, 0, 0, 0, bytes_checked=0, bytes_total=size)
    for index, entry in enumerate(reader.entries(), 1):
        if index % CHECK_STEP == 0:
            yield RestoreProgress(0, 0, 0, 0, bytes_checked=copy.tell(), bytes_total=size)
        if malformed is not None:
            continue
        try:
            kind, item = _entry_item(entry)
        except BackupInvalid as error:
            malformed = error
            continue
        if kind in ("key", "bucket"):
            key, versions, _ = item
            for version in versions:
                if version.root_generation is not None and version.wrapped_blob is not None:
                    samples.setdefault(version.root_generation, (version, key))
    verified = _signed(reader.summary, expected_fingerprint)
    if malformed is not None:
        raise malformed
    return verified, samples


def _checked_entries(copy: BinaryIO) -> Iterator[dict[str, Any]]:
    """The entries of the private copy the first pass wrote and checked: its lines between
    the header and the trailer, parsed. No one else writes the copy, so they are the lines
    checked, and are not checked again."""
    lines = read_lines(copy)
    next(lines, None)
    for line in lines:
        entry = json.loads(line)
        if entry["kind"] == "trailer":
            return
        yield entry


def _copying(lines: Iterable[bytes], copy: BinaryIO) -> Iterator[bytes]:
    for line in lines:
        try:
            copy.write(line)
        except OSError as error:
            raise _copy_failed(error) from None
        yield line


def _copy_failed(error: OSError) -> StoreUnavailable:
    if error.errno == errno.ENOSPC:
        return DiskFull()
    return StoreUnavailable(
        "the backup directory cannot hold the restore's copy of the bundle",
        metadata={"error": error.strerror or ""},
    )


def _entry_item(entry: dict[str, Any]) -> tuple[str, Any]:
    """A bundle entry as the restore takes it: key and bucket entries as (key, versions,
    bucket or None), tombstones and skipped entries as such. BackupInvalid if malformed."""
    kind = entry["kind"]
    if kind == "key":
        key, versions = key_from_entry(entry)
        return kind, (key, versions, None)
    if kind == "bucket":
        bucket, key, versions = bucket_from_entry(entry)
        return kind, (key, versions, bucket)
    if kind == "tombstone":
        tombstone = tombstone_from_entry(entry)
        _tombstone_target(tombstone.name)
        return kind, tombstone
    return kind, _skipped_from_entry(entry)


class _Outcomes:
    """A restore's outcomes as they come: each counted and written to the report file (if it
    could be opened, and until a write fails), and the first ones kept in two lists of at
    most names_bytes each, so that a restore of any size keeps what a response may carry."""

    def __init__(self, names_bytes: int, report: ReportFile | OSError) -> None:
        self.restored_names: list[str] = []
        self.skipped_items: list[Skipped] = []
        self.restored_count = 0
        self.by_reason: dict[str, int] = {}
        self._room = {"restored": names_bytes, "skipped": names_bytes}
        self._report = report

    @property
    def skipped_count(self) -> int:
        return sum(self.by_reason.values())

    def restored(self, name: str) -> None:
        self.restored_count += 1
        if self._keeps("restored", len(name.encode())):
            self.restored_names.append(name)
        self._write(_outcome_line(name))

    def skipped(self, item: Skipped) -> None:
        reason = str(item.reason)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        size = len(item.name.encode()) + len(reason) + len(item.detail.encode())
        if self._keeps("skipped", size):
            self.skipped_items.append(item)
        self._write(_outcome_line(item))

    def _keeps(self, which: str, size: int) -> bool:
        """Whether an item of size bytes fits the room left in list which; once one does not,
        none does, so that each list is the first outcomes."""
        room = self._room[which] - size
        self._room[which] = room if room >= 0 else -1
        return room >= 0

    def _write(self, line: bytes) -> None:
        if isinstance(self._report, ReportFile):
            try:
                self._report.write(line)
            except OSError as error:
                self._report.discard()
                self._report = error

    def finish(self, export_id: str) -> str:
        """The report file's name once it is whole on disk; "" if it could not be written
        (what was restored stays restored: the response still counts every outcome)."""
        if isinstance(self._report, ReportFile):
            try:
                return self._report.finish()
            except OSError as error:
                self._report = error
        log.warning(
            "the report of restoring backup %s was not written: %s",
            export_id,
            self._report.strerror,
        )
        return ""

    def discard(self) -> None:
        if isinstance(self._report, ReportFile):
            self._report.discard()


def _kept(versions: list[KeyVersion], left_out: list[Skipped]) -> list[KeyVersion]:
    """versions less those left_out names (the revoked ones)."""
    dropped = {KeyVersionName.parse(item.name).version for item in left_out}
    return [version for version in versions if version.number not in dropped]


def _batches(parsed: Iterable[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
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
