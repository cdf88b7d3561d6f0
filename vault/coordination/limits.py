"""Rate limits, daily quotas, replay protection and failed-authentication counts shared by
all worker processes of one server.

The state lives in a file mapped into every worker (mmap, MAP_SHARED): an operation reads and
writes a few records of the page cache under one lock, a few microseconds in CPython, with no
round trip to another process.

Across starts: prepare() keeps the file of the previous start when its header matches (same
version and table sizes) and the machine has not rebooted since it was written, so a request
signed shortly before a restart cannot be replayed after it. Within one boot the page cache
holds every write, even a SIGKILLed process's; after a reboot (a crash may have lost pages
that never reached the disk), or when the file is missing or unusable, a new one is made and
its header records when (replay_horizon): the nonces of requests stamped before that are
gone, so such requests are refused. Its full size is reserved on the disk when it is made
(posix_fallocate): a sparse file would get its pages allocated on first write, and a full
disk would turn that write into SIGBUS in a worker.

Layout: a 128-byte header (magic, version, table sizes, a random salt, the credential epoch,
the creation time, the boot id), then the counter table (fixed-size records for token
buckets, failure windows and quotas, one record per key and kind), then the nonce table.
Keys and nonces are hashed with BLAKE2b keyed by the salt, so a client cannot choose keys
that crowd one probe window. A key's records live in a window of _PROBE consecutive slots
chosen by its hash (open addressing, no wrap-around).

Locking: fcntl.flock on a descriptor this process opened itself. A flock lock belongs to the
open file description, so the kernel drops it when the holder dies, even by SIGKILL; but a
descriptor inherited across fork() shares its description with the parent and would not
exclude it, so a process that finds its pid changed opens its own. flock does not exclude
threads sharing one description either, hence a threading.Lock in front of it.

Torn records: a process killed in the middle of a write leaves a record that is part old,
part new. Every record carries a CRC-32 of its contents; a record that fails the check is
garbage, read as absent and overwritten when its slot is needed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import mmap
import os
import secrets
import struct
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Final

from vault.domain.errors import LimitExceeded

__all__ = ["LimitsFileSpaceError", "NonceCacheFull", "SharedLimits", "boot_id"]

_MAGIC: Final = b"VLTLIMIT"
_VERSION: Final = 2
# magic, version, reserved, counter slots, nonce slots, salt
_HEADER: Final = struct.Struct("<8sIIQQ16s")
_HEADER_SIZE: Final = 128
# After it: a counter bumped whenever any credential changes.
_EPOCH: Final = struct.Struct("<Q")
_EPOCH_OFFSET: Final = 48
# time.time() when the file was made, then the boot id of the machine that made it.
_ORIGIN: Final = struct.Struct("<d16s")
_ORIGIN_OFFSET: Final = 56
_BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")

# key hash, last touched (time.monotonic(), for eviction; comparable across starts because a
# file is kept only within one boot), x, y, n, crc32 of the 40 bytes before it. Token bucket:
# x = tokens, y = time of the last refill. Failures: x = window start, n = count. Quota:
# x = day, n = count.
_COUNTER: Final = struct.Struct("<QdddqI4x")
_COUNTER_BODY: Final = struct.Struct("<Qdddq")
# hash of the nonce, expiry, crc32 of the 24 bytes before it
_NONCE: Final = struct.Struct("<16sdI4x")
_NONCE_BODY: Final = struct.Struct("<16sd")
_CHECK: Final = struct.Struct("<I4x")

_PROBE: Final = 32
_MAX_COUNT: Final = 1 << 62
_OPEN_FLAGS: Final = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW

# One salted hash per kind of state, so "api:x" as a rate limit and "api:x" as a quota are
# different records.
_TOKEN: Final = b"token"
_FAILURE: Final = b"failure"
_QUOTA: Final = b"quota"
_NONCE_PERSON: Final = b"nonce"


class NonceCacheFull(LimitExceeded):
    """Every nonce slot a nonce may use holds an unexpired nonce: refuse the request (fail
    closed) rather than forget a nonce a replay could then reuse."""

    reason = "REPLAY_CACHE_FULL"

    def __init__(self) -> None:
        super().__init__(
            "too many signed requests within the timestamp window; retry shortly",
            retry_after=1.0,
        )


class LimitsFileSpaceError(OSError):
    """The disk cannot hold the shared limits file: the server must not start."""


def boot_id() -> bytes:
    """This boot of the machine (Linux), or b"" where unknown: then no file is ever kept."""
    try:
        return uuid.UUID(_BOOT_ID_FILE.read_text(encoding="ascii").strip()).bytes
    except (OSError, ValueError):
        return b""


def _reserve(descriptor: int, path: Path, size: int) -> None:
    try:
        os.posix_fallocate(descriptor, 0, size)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        stats = os.statvfs(path.parent)
        raise LimitsFileSpaceError(
            error.errno,
            f"cannot reserve {size} bytes on disk for the shared limits file {path}: "
            f"{stats.f_bavail * stats.f_frsize} bytes free",
        ) from None


def _file_size(slots: int, nonce_slots: int) -> int:
    return _HEADER_SIZE + slots * _COUNTER.size + nonce_slots * _NONCE.size


def _window_struct(field: str, record_size: int, field_offset: int, count: int) -> struct.Struct:
    """Reads one field of every record in a window in a single call."""
    after = record_size - field_offset - struct.calcsize("<" + field)
    return struct.Struct("<" + f"{field_offset}x{field}{after}x" * count)


class SharedLimits:
    """Cross-process limits in the file made by create(); attach() in every process."""

    def __init__(
        self, path: Path, descriptor: int, slots: int, nonce_slots: int, salt: bytes
    ) -> None:
        # Callers use create() or attach(), which validate the file first.
        self._path = path
        self.slots, self.nonce_slots = slots, nonce_slots
        status = os.fstat(descriptor)
        self._identity = (status.st_dev, status.st_ino)
        self._mm = mmap.mmap(descriptor, _file_size(slots, nonce_slots))
        self._created_at, self._boot_id = _ORIGIN.unpack_from(self._mm, _ORIGIN_OFFSET)
        self._thread_lock = threading.Lock()
        self._lock_fd = -1
        self._pid = -1
        self._closed = False

        self._counter_base = _HEADER_SIZE
        counter_probe = min(_PROBE, slots)
        self._counter_span = slots - counter_probe + 1
        self._counter_window = counter_probe * _COUNTER.size
        self._touched = _window_struct("d", _COUNTER.size, 8, counter_probe)

        self._nonce_base = _HEADER_SIZE + slots * _COUNTER.size
        nonce_probe = min(_PROBE, nonce_slots)
        self._nonce_span = nonce_slots - nonce_probe + 1
        self._nonce_window = nonce_probe * _NONCE.size
        self._expiries = _window_struct("d", _NONCE.size, 16, nonce_probe)

        self._hashers = {
            kind: hashlib.blake2b(digest_size=8, key=salt, person=kind)
            for kind in (_TOKEN, _FAILURE, _QUOTA)
        }
        self._nonce_hasher = hashlib.blake2b(digest_size=16, key=salt, person=_NONCE_PERSON)
        _forget_lock_in_forked_children(self)

    # -- files --------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, path: Path, *, slots: int = 65536, nonce_slots: int = 1 << 20) -> SharedLimits:
        """The file of the previous start, if it is still trustworthy (same version and table
        sizes, made during this boot of the machine), else a new one from create(); attached.

        Called once by the supervisor before it forks workers. LimitsFileSpaceError when the
        disk cannot hold a new file.
        """
        try:
            kept = cls.attach(path)
        except (OSError, ValueError):  # missing, unreadable, a symbolic link, not ours
            return cls.create(path, slots=slots, nonce_slots=nonce_slots)
        current = boot_id()
        if (
            (kept.slots, kept.nonce_slots) == (slots, nonce_slots)
            and current
            and (kept._boot_id == current)
        ):
            # Fully allocated when made; this also covers a copy that lost that (cp --sparse).
            descriptor = os.open(path, _OPEN_FLAGS)
            try:
                os.fchmod(descriptor, 0o600)
                _reserve(descriptor, path, _file_size(slots, nonce_slots))
            except BaseException:
                kept.close()
                raise
            finally:
                os.close(descriptor)
            return kept
        if current and kept._boot_id not in (current, bytes(16)):
            # Made before a reboot, so no process maps it any more: its space can go to the
            # new file, which a full disk could not otherwise hold beside it.
            path.unlink()
        kept.close()
        return cls.create(path, slots=slots, nonce_slots=nonce_slots)

    @classmethod
    def create(cls, path: Path, *, slots: int = 65536, nonce_slots: int = 1 << 20) -> SharedLimits:
        """Create (or replace with a zeroed one) the shared file at path with mode 0600
        (parent directory created 0700), sized for `slots` counter slots and `nonce_slots`
        nonce slots and reserved on disk in full, and return it attached.

        Its replay_horizon is now: it holds no nonce of any request stamped before.
        LimitsFileSpaceError when the disk cannot hold it.
        """
        if slots < 1 or nonce_slots < 1:
            raise ValueError("slots and nonce_slots must be at least 1")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        header = _HEADER.pack(_MAGIC, _VERSION, 0, slots, nonce_slots, secrets.token_bytes(16))
        # Signed timestamps are whole seconds: the next whole second, so a request stamped
        # with the second an earlier server stopped in is before the horizon.
        origin = _ORIGIN.pack(float(math.ceil(time.time())), boot_id().ljust(16, b"\0"))
        # A new inode renamed into place rather than truncating the old file: processes of a
        # previous server that still map the old file would get SIGBUS past its new end, or
        # write their stale state into the new table.
        staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(staging, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # The umask may have removed bits from 0o600; the file must be exactly that.
            os.fchmod(descriptor, 0o600)
            _reserve(descriptor, path, _file_size(slots, nonce_slots))
            os.pwrite(descriptor, header, 0)
            os.pwrite(descriptor, origin, _ORIGIN_OFFSET)
            os.replace(staging, path)
        except BaseException:
            os.close(descriptor)
            staging.unlink(missing_ok=True)
            raise
        os.close(descriptor)
        return cls.attach(path)

    @classmethod
    def attach(cls, path: Path) -> SharedLimits:
        """Attach to a file made by create(); ValueError if its header or size is wrong."""
        descriptor = os.open(path, _OPEN_FLAGS)
        try:
            raw = os.pread(descriptor, _HEADER.size, 0)
            if len(raw) < _HEADER.size:
                raise ValueError(f"{path}: not a shared limits file (too short)")
            magic, version, _, slots, nonce_slots, salt = _HEADER.unpack(raw)
            if magic != _MAGIC:
                raise ValueError(f"{path}: not a shared limits file (bad magic)")
            if version != _VERSION:
                raise ValueError(f"{path}: shared limits version {version}, expected {_VERSION}")
            if slots < 1 or nonce_slots < 1:
                raise ValueError(f"{path}: bad table sizes in header")
            # Mapping past the end of the file would turn the first access into SIGBUS.
            if os.fstat(descriptor).st_size < _file_size(slots, nonce_slots):
                raise ValueError(f"{path}: file is shorter than its header says")
            # The mapping keeps its own duplicate of the descriptor; ours is not needed after.
            return cls(path, descriptor, slots, nonce_slots, salt)
        finally:
            os.close(descriptor)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._thread_lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
            self._mm.close()

    # -- locking ------------------------------------------------------------------------------

    def _acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._closed:
                raise ValueError("SharedLimits is closed")
            if self._pid != os.getpid():
                self._open_lock()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def _release(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _open_lock(self) -> None:
        if self._lock_fd >= 0:
            # Inherited across fork(): closing our copy leaves the parent's lock alone, while
            # LOCK_UN on it would release the parent's lock.
            os.close(self._lock_fd)
            self._lock_fd = -1
        descriptor = os.open(self._path, _OPEN_FLAGS)
        status = os.fstat(descriptor)
        if (status.st_dev, status.st_ino) != self._identity:
            os.close(descriptor)
            raise RuntimeError(f"{self._path} was replaced after it was attached")
        self._lock_fd = descriptor
        self._pid = os.getpid()

    def _after_fork_in_child(self) -> None:
        # Runs before any other thread exists in the child. A thread of the parent may have
        # held the threading lock at fork() and will never release it here. The inherited
        # descriptor must go at once: if the parent dies holding the lock, our copy of its
        # open file description would keep that lock alive.
        self._thread_lock = threading.Lock()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- counter table ------------------------------------------------------------------------

    def _key_hash(self, kind: bytes, key: str) -> bytes:
        hasher = self._hashers[kind].copy()
        hasher.update(key.encode())
        return hasher.digest()

    def _find(self, digest: bytes) -> tuple[int, tuple[int, float, float, float, int, int] | None]:
        """The offset of the record holding digest's state and that record; if there is none,
        the offset where to write it and None. Writers call it with the lock held; a reader
        without the lock may see a torn record, which fails its CRC and reads as absent."""
        start = (
            self._counter_base
            + (int.from_bytes(digest, "little") % self._counter_span) * _COUNTER.size
        )
        window = self._mm[start : start + self._counter_window]
        position = window.find(digest)
        while position >= 0:
            if position % _COUNTER.size == 0:
                record = _COUNTER.unpack_from(window, position)
                body = window[position : position + _COUNTER_BODY.size]
                if zlib.crc32(body) == record[5]:
                    return start + position, record
            position = window.find(digest, position + 1)
        # Never-used slots have touched = 0.0, so they go first. When every slot of the window
        # is taken, the least recently touched record is evicted: that key's state is
        # forgotten and it starts afresh (a full bucket, no failures, a quota re-seeded from
        # the database), which can only make its limit more lenient, never refuse anyone.
        # Acceptable here: with salted hashes, 32 live keys must land in one window of a
        # table of tens of thousands of slots before anything is evicted, and LRU picks the
        # key idle the longest, whose bucket has refilled and whose window has likely passed
        # anyway; a client hammering a key keeps touching it, so it cannot push its own
        # record out. A torn record with a garbage timestamp lingers until it is the oldest.
        touched = self._touched.unpack(window)
        victim = touched.index(min(touched))
        return start + victim * _COUNTER.size, None

    def _write(self, offset: int, digest: bytes, x: float, y: float, n: int) -> None:
        body = _COUNTER_BODY.pack(int.from_bytes(digest, "little"), time.monotonic(), x, y, n)
        self._mm[offset : offset + _COUNTER.size] = body + _CHECK.pack(zlib.crc32(body))

    # -- operations ---------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    def replay_horizon(self) -> float:
        """When this file was made (time.time(), rounded up to a whole second): it holds no
        nonce of a request stamped before then, which an earlier server may have accepted, so
        such requests must be refused."""
        return float(self._created_at)

    def credential_epoch(self) -> int:
        """Read without the lock: an aligned 8-byte value, and any value other than the one
        a reader cached (even a torn one) only makes it drop its cache."""
        return int(_EPOCH.unpack_from(self._mm, _EPOCH_OFFSET)[0])

    def bump_credential_epoch(self) -> None:
        self._acquire()
        try:
            (epoch,) = _EPOCH.unpack_from(self._mm, _EPOCH_OFFSET)
            _EPOCH.pack_into(self._mm, _EPOCH_OFFSET, (epoch + 1) & 0xFFFFFFFFFFFFFFFF)
        finally:
            self._release()

    def take_token(self, key: str, *, rate_per_second: float, burst: int, now: float) -> float:
        """Token bucket for key (a string such as "api:<id>"). Returns 0.0 when a token was
        taken (request allowed), otherwise the seconds until one will be available (request
        refused, nothing taken). A key seen for the first time starts with a full bucket
        (burst tokens). now is a time.time()-style float."""
        if not (0.0 < rate_per_second < math.inf and burst >= 1 and math.isfinite(now)):
            raise ValueError("rate_per_second must be positive, burst >= 1 and now finite")
        digest = self._key_hash(_TOKEN, key)
        self._acquire()
        try:
            offset, record = self._find(digest)
            if record is None:
                tokens, stamp = float(burst), now
            else:
                tokens, stamp = record[2], record[3]
                # Workers read the clock before waiting for the lock, so now may run a little
                # behind the last refill: never refill backwards, nor twice for one interval.
                if now > stamp:
                    tokens += (now - stamp) * rate_per_second
                    stamp = now
                tokens = min(tokens, float(burst))
            if tokens >= 1.0:
                self._write(offset, digest, tokens - 1.0, stamp, 0)
                return 0.0
            self._write(offset, digest, tokens, stamp, 0)
        finally:
            self._release()
        return max((1.0 - tokens) / rate_per_second, 1e-9)

    def remember_nonce(self, nonce: bytes, *, expires_at: float, now: float) -> bool:
        """True if nonce was not seen (and is now remembered until expires_at); False if it
        was seen and has not expired (a replay). NonceCacheFull when no slot within the
        probe limit is free (expired slots are free). Only a salted 128-bit hash of the
        nonce is stored."""
        if not (math.isfinite(expires_at) and math.isfinite(now)):
            raise ValueError("expires_at and now must be finite")
        hasher = self._nonce_hasher.copy()
        hasher.update(nonce)
        digest = hasher.digest()
        start = (
            self._nonce_base
            + (int.from_bytes(digest[:8], "little") % self._nonce_span) * _NONCE.size
        )
        self._acquire()
        try:
            window = self._mm[start : start + self._nonce_window]
            position = window.find(digest)
            while position >= 0:
                if position % _NONCE.size == 0:
                    _, expiry, check = _NONCE.unpack_from(window, position)
                    body = window[position : position + _NONCE_BODY.size]
                    if zlib.crc32(body) == check:
                        if expiry > now:
                            return False
                        self._write_nonce(start + position, digest, expires_at)
                        return True
                position = window.find(digest, position + 1)
            if expires_at <= now:
                return True  # already expired: remembering it would change nothing
            for index, expiry in enumerate(self._expiries.unpack(window)):
                if not expiry > now:  # also true for NaN from a torn record
                    self._write_nonce(start + index * _NONCE.size, digest, expires_at)
                    return True
            # Only torn records with a garbage expiry in the future can still be reclaimed.
            for index in range(len(window) // _NONCE.size):
                position = index * _NONCE.size
                body = window[position : position + _NONCE_BODY.size]
                if zlib.crc32(body) != _NONCE.unpack_from(window, position)[2]:
                    self._write_nonce(start + position, digest, expires_at)
                    return True
        finally:
            self._release()
        raise NonceCacheFull()

    def _write_nonce(self, offset: int, digest: bytes, expires_at: float) -> None:
        body = _NONCE_BODY.pack(digest, expires_at)
        self._mm[offset : offset + _NONCE.size] = body + _CHECK.pack(zlib.crc32(body))

    def record_failure(self, key: str, *, window_seconds: float, now: float) -> int:
        """Count one failed authentication for key (e.g. "addr:10.0.0.1" or "akid:AK...");
        returns the number of failures in the current fixed window including this one (the
        window restarts when now >= window_start + window_seconds)."""
        if not (0.0 < window_seconds < math.inf and math.isfinite(now)):
            raise ValueError("window_seconds must be positive and now finite")
        digest = self._key_hash(_FAILURE, key)
        self._acquire()
        try:
            offset, record = self._find(digest)
            if record is not None and now < record[2] + window_seconds:
                window_start, count = record[2], min(record[4] + 1, _MAX_COUNT)
            else:
                window_start, count = now, 1
            self._write(offset, digest, window_start, 0.0, count)
        finally:
            self._release()
        return count

    def failures(self, key: str, *, window_seconds: float, now: float) -> int:
        """Failures counted for key in its current window (0 if the window has passed or the
        key is unknown). Read-only."""
        digest = self._key_hash(_FAILURE, key)
        # Without the lock: every authenticated call asks this twice, and a record read while
        # another process rewrites it fails its CRC and reads as 0, which costs at most one
        # extra attempt past the limit (the next write restores the count).
        if self._closed:
            raise ValueError("SharedLimits is closed")
        _, record = self._find(digest)
        if record is None or not now < record[2] + window_seconds:
            return 0
        return record[4]

    def consume_quota(self, key: str, *, day: int, limit: int, seed: Callable[[], int]) -> bool:
        """Daily quota; day is a day number (e.g. days since the epoch, UTC).

        If the key's counter is for another day (or the key is new in this table), the
        counter starts from seed(): the count already recorded elsewhere for that day (the
        table may be new, see prepare()). seed is called without the lock
        held, at most once per call. Then if count < limit, count += 1 and return True; else
        return False (nothing counted).
        """
        digest = self._key_hash(_QUOTA, key)
        consumed = self._consume_counted(digest, day, limit, None)
        if consumed is not None:
            return consumed
        # seed() may query a database: never with every worker waiting on the lock.
        seeded = min(max(int(seed()), 0), _MAX_COUNT)
        consumed = self._consume_counted(digest, day, limit, seeded)
        assert consumed is not None
        return consumed

    def _consume_counted(
        self, digest: bytes, day: int, limit: int, seeded: int | None
    ) -> bool | None:
        """Count against the key's counter for day. Without a seed, None when that counter
        does not exist yet; with one, a counter another process started meanwhile wins."""
        self._acquire()
        try:
            offset, record = self._find(digest)
            if record is not None and record[2] == day:
                count = record[4]
            elif seeded is None:
                return None
            else:
                count = seeded
            if count >= limit:
                if record is None or record[2] != day:
                    self._write(offset, digest, float(day), 0.0, count)
                return False
            self._write(offset, digest, float(day), 0.0, count + 1)
            return True
        finally:
            self._release()


def _forget_lock_in_forked_children(limits: SharedLimits) -> None:
    # A weak reference so the hook does not keep closed instances alive.
    ref = weakref.ref(limits)

    def _after_fork() -> None:
        forked = ref()
        if forked is not None:
            forked._after_fork_in_child()

    os.register_at_fork(after_in_child=_after_fork)
