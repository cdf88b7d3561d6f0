"""The benchmark's entry points run as `make bench` runs them: a child Python in the checkout,
its output captured, its exit status checked by the caller (with the output in the message)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.harness import ROOT


def run_module(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`python -m module args...` in the checkout; never raises for a failed run."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
