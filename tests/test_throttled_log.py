"""ThrottledLog: one line per kind per interval, and a count of what it left out."""

from __future__ import annotations

import logging

import pytest

from vault.throttled_log import ThrottledLog


def test_repeated_lines_are_written_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttled = ThrottledLog(logging.getLogger("throttle-test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="throttle-test"):
        written = [throttled.warning("a", "failed (%s)", "X") for _ in range(1000)]
        assert throttled.warning("b", "another kind")
        now[0] += 9.9
        assert not throttled.warning("a", "failed (%s)", "X")
        now[0] += 0.1
        assert throttled.warning("a", "failed (%s)", "X")
        now[0] += 10.0
        assert throttled.warning("a", "failed (%s)", "X")
    assert written == [True] + [False] * 999
    assert [record.getMessage() for record in caplog.records] == [
        "failed (X)",
        "another kind",
        "failed (X) (1000 more like it left out)",
        "failed (X)",
    ]
