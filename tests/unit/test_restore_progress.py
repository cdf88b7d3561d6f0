"""StreamRestoreBackup's pacing (ProgressPacer): the first step and the last (the result) are
always sent, the steps between at most once per interval, however many entries go by."""

from __future__ import annotations

from vault.service.backup import RestoreProgress, RestoreReport
from vault.transport.backup_servicer import ProgressPacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def step(done: int, report: RestoreReport | None = None) -> RestoreProgress:
    return RestoreProgress(done, 1000, done, 0, report)


def test_the_first_step_then_one_per_interval() -> None:
    clock = Clock()
    pacer = ProgressPacer(0.5, clock)
    assert pacer.due(step(0))
    sent = []
    for done in range(1, 1000):
        clock.now += 1 / 128  # a key every 7.8 ms (exact in binary): 64 per interval
        if pacer.due(step(done)):
            sent.append(done)
    assert sent == list(range(64, 1000, 64))


def test_the_last_step_is_always_sent() -> None:
    clock = Clock()
    pacer = ProgressPacer(0.5, clock)
    assert pacer.due(step(0))
    assert not pacer.due(step(1))
    report = object()
    assert pacer.due(step(2, report))  # type: ignore[arg-type]  # only its presence counts


def test_batches_keep_their_size_and_a_tombstone_after_its_key_starts_the_next() -> None:
    from datetime import UTC, datetime

    from tests.unit.test_key_listing import key
    from vault.domain.backup import Tombstone
    from vault.domain.models import KeyState
    from vault.service.backup import _batches

    def entry(key_id: str) -> tuple[str, object]:
        return ("key", (key(key_id), [], None))

    def tombstone(name: str) -> tuple[str, object]:
        return ("tombstone", Tombstone(name, KeyState.REVOKED, datetime.now(UTC)))

    parsed = [entry(f"k{index}") for index in range(7)]
    assert [len(batch) for batch in _batches(parsed, 3)] == [3, 3, 1]  # type: ignore[arg-type]
    # As a bundle has them: a revoked version's tombstone before its key, in one batch; a
    # tombstone of a key the batch restores already (not in an exported bundle) after it.
    parsed = [
        tombstone("accounts/acme/keys/a/versions/1"),
        entry("a"),
        entry("b"),
        tombstone("accounts/acme/keys/b"),
        entry("c"),
    ]
    batches = list(_batches(parsed, 10))  # type: ignore[arg-type]
    assert [[kind for kind, _ in batch] for batch in batches] == [
        ["tombstone", "key", "key"],
        ["tombstone", "key"],
    ]


def test_the_first_step_of_the_restore_after_the_check_is_sent_at_once() -> None:
    clock = Clock()
    pacer = ProgressPacer(0.5, clock)
    checking = RestoreProgress(0, 0, 0, 0, bytes_checked=0, bytes_total=10_000)
    assert pacer.due(checking)
    clock.now += 0.01
    assert not pacer.due(RestoreProgress(0, 0, 0, 0, bytes_checked=5_000, bytes_total=10_000))
    clock.now += 0.01
    assert pacer.due(step(0))  # the bundle's total, now known
    clock.now += 0.01
    assert not pacer.due(step(1))
