"""The vault server as the benchmark starts it: `python -m bench.serve`.

Exactly `vault.app.serve(Settings())`, as `make run` and tests/support/harness.py start it,
plus two things for the benchmark only:
- the supervisor asks the kernel for SIGTERM when the benchmark process dies, even by SIGKILL,
  so no server outlives the run (its workers already follow the supervisor);
- with BENCH_PROFILE_DIR set, every worker runs under cProfile (one profiler per thread,
  since cProfile hooks only the thread that enables it) and writes
  BENCH_PROFILE_DIR/worker-<pid>.prof when it stops, timed in per-thread CPU time.
  Nothing in vault/ is changed: the worker entry point is wrapped from here before the
  supervisor forks.
"""

from __future__ import annotations

import cProfile
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

PROFILE_ENV = "BENCH_PROFILE_DIR"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class _ThreadProfiles:
    """One cProfile.Profile per thread, started on the thread's first profiled event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.profiles: list[cProfile.Profile] = []

    def start_here(self) -> None:
        # Per-thread CPU time, not wall time: a thread waiting for the GIL or for a request
        # would otherwise look busy. Each call costs a clock_gettime system call, so the
        # profiled server is slower; read the profile for proportions, not absolute speed.
        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self.profiles.append(profile)
        profile.enable()  # replaces the threading.setprofile hook in this thread

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        self.start_here()

    def dump(self, path: Path) -> None:
        import pstats

        with self._lock:
            profiles = list(self.profiles)
        stats: pstats.Stats | None = None
        for profile in profiles:
            profile.create_stats()
            if not getattr(profile, "stats", None):
                continue
            if stats is None:
                stats = pstats.Stats(profile)
            else:
                stats.add(profile)
        if stats is not None:
            stats.dump_stats(str(path))


def _profiled(worker_main: Callable[..., None], directory: Path) -> Callable[..., None]:
    def run(*args: Any, **kwargs: Any) -> None:
        profiles = _ThreadProfiles()
        threading.setprofile(profiles.hook)
        profiles.start_here()
        try:
            worker_main(*args, **kwargs)
        finally:
            threading.setprofile(None)
            profiles.dump(directory / f"worker-{os.getpid()}.prof")

    return run


def main() -> None:
    _die_with_parent()
    from vault.app import serve
    from vault.config import Settings
    from vault.transport import supervisor

    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        directory = Path(profile_dir)
        directory.mkdir(parents=True, exist_ok=True)
        supervisor._worker_main = _profiled(supervisor._worker_main, directory)
    serve(Settings())  # type: ignore[call-arg]  # from the environment


if __name__ == "__main__":
    main()
