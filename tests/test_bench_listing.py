"""bench/listing.py at a tiny size: both paths give the same page, and every step has a
figure."""

from __future__ import annotations

import pytest

from bench import listing


def test_listing_bench_measures_every_step_of_both_paths() -> None:
    figures = listing.measure(key_count=60, page_size=25, rounds=2)

    steps = {
        *listing.LISTING_STEPS,
        *listing.KEY_STEPS,
        listing.KEPT_STEP,
        listing.MADE_STEP,
        "listing path",
        "listing path, parts kept",
        "Key path",
    }
    assert set(figures) == steps
    assert all(value > 0 for value in figures.values())


def test_listing_bench_refuses_a_page_over_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        listing.main(["--page", "1001"])
    assert "--page 1 to 1000" in capsys.readouterr().err
