"""flock(2) for the locks every request takes (the audit append lock, the shared limits file),
without giving up the GIL when it need not wait.

fcntl.flock releases the GIL around the system call, as every blocking call in CPython does.
In a worker whose gRPC and request threads all want the GIL, each release is likely to hand
it to another thread and to cost a switch back, several times a microsecond-long flock. A
lock nobody holds is granted at once, so the first attempt here is LOCK_NB through a ctypes
function that keeps the GIL; only when another process holds the lock does the caller wait
in fcntl.flock, with the GIL released. Unlocking never waits.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import Final

_WOULD_BLOCK: Final = frozenset({errno.EWOULDBLOCK, errno.EAGAIN})


def _load_flock() -> ctypes._NamedFuncPointer | None:
    try:
        # PyDLL: calls keep the GIL (CDLL would release it, as fcntl.flock does).
        function = ctypes.PyDLL(None, use_errno=True).flock
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_flock = _load_flock()


def _call(fd: int, operation: int) -> int:
    """0, or the errno of a failed flock(fd, operation), made with the GIL held."""
    assert _flock is not None
    if _flock(fd, operation) == 0:
        return 0
    return ctypes.get_errno()


def lock_exclusive(fd: int) -> None:
    """flock(fd, LOCK_EX): at once when the lock is free, else waiting without the GIL."""
    if _flock is not None:
        error = _call(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if error == 0:
            return
        if error not in _WOULD_BLOCK and error != errno.EINTR:
            raise OSError(error, os.strerror(error))
    fcntl.flock(fd, fcntl.LOCK_EX)


def try_lock_exclusive(fd: int) -> bool:
    """flock(fd, LOCK_EX | LOCK_NB): whether the lock was had."""
    if _flock is not None:
        error = _call(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if error == 0:
            return True
        if error in _WOULD_BLOCK:
            return False
        if error != errno.EINTR:
            raise OSError(error, os.strerror(error))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # retries on EINTR
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    """flock(fd, LOCK_UN), which never waits."""
    if _flock is None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    error = _call(fd, fcntl.LOCK_UN)
    if error != 0:
        raise OSError(error, os.strerror(error))
