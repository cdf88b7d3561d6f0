"""The disk reserve: space set aside in the data directory, so that when its disk fills up the
vault can still commit the audit records of the reads it serves while it refuses changes.

The reserve is a file of store.disk_reserve_bytes, allocated in full (posix_fallocate), at
<data_dir>/run/disk-reserve. Whether it exists is the one state every worker process shares:

- present: normal service;
- absent: the disk filled up. The first write that failed for lack of space deleted it, which
  freed that much space for the audit records of reads; every state-changing call is refused
  with DiskFull until the supervisor finds enough space free again and makes it anew.

A file rather than a flag in shared memory, so the state needs no further coordination: any
process may look (one stat), exactly one process succeeds in deleting it (unlink), and one
makes it (rename of a fully allocated file into place).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still allocate on directory's file system."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class DiskReserve:
    """The reserve file at path, of size bytes; size 0 turns the mechanism off (the vault
    then never refuses changes in advance: each write finds the disk full by itself)."""

    def __init__(self, path: Path, size: int) -> None:
        self._path = path
        self._size = size

    def __repr__(self) -> str:
        return f"DiskReserve({str(self._path)!r}, {self._size})"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    def refusing_changes(self) -> bool:
        """True while the reserve is spent: the disk filled up and has not enough space yet."""
        return self._size > 0 and not self._path.exists()

    def release(self) -> bool:
        """Give the reserve's space back, after a write failed for lack of space; True for
        the one call (in any process) that did it."""
        if self._size <= 0:
            return False
        try:
            self._path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "the data directory's disk is full: released the %d-byte reserve %s for the audit "
            "records of reads; refusing changes until space is freed",
            self._size,
            self._path,
        )
        return True

    def restore(self, *, needed_free: int) -> bool:
        """Make the reserve if it is missing and at least needed_free bytes are free; True
        if this call made it."""
        if self._size <= 0 or self._path.exists():
            return False
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if free_bytes(self._path.parent) < needed_free:
            return False
        # Allocated in full before it appears under its name: while it is missing, workers
        # refuse changes; once present, all of its space is set aside.
        staging = self._path.with_name(f".{self._path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(descriptor, 0, self._size)
            os.replace(staging, self._path)
        except OSError as error:
            staging.unlink(missing_ok=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return False
            raise
        finally:
            os.close(descriptor)
        return True
