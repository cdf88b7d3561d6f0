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
