"""`python -m bench.ab` at its smallest: two trees (here both the checkout) measured in turn,
each on a server and token of its own, with every measurement and the summary printed."""

from __future__ import annotations

import re

from tests.support.bench_runs import run_module
from tests.support.harness import ROOT


def test_two_trees_are_measured_in_turn() -> None:
    done = run_module(
        "bench.ab",
        *("--trees", f"base={ROOT},same={ROOT}", "--ops", "p256_ecdsa_sign"),
        *("--rounds", "2", "--seconds", "0.3", "--warmup", "0"),
        *("--clients", "1", "--client-procs", "1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    measured = re.findall(
        r"^round (\d) p256_ecdsa_sign +(\w+) +(\d+)/s +server CPU +(\d+) us/req +switches .*"
        r"errors (\d+)",
        done.stdout,
        re.MULTILINE,
    )
    # Each round measures both, the order alternating.
    assert [(r, tree) for r, tree, *_ in measured] == [
        ("0", "base"),
        ("0", "same"),
        ("1", "same"),
        ("1", "base"),
    ]
    assert all(
        int(rate) > 0 and int(cpu) > 0 and errors == "0" for *_, rate, cpu, errors in measured
    )
    assert re.search(r"^p256_ecdsa_sign +same +x[0-9.]+ +x[0-9.]+ +x", done.stdout, re.MULTILINE)


def test_a_tree_that_is_not_a_directory_is_refused() -> None:
    done = run_module("bench.ab", "--trees", "base=/nonexistent", "--ops", "p256_ecdsa_sign")
    assert done.returncode == 2 and "--trees" in done.stderr
