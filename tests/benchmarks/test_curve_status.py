"""The accuracy benchmark's curve status: a run's row says whether its validation curve was still rising."""

from __future__ import annotations

import sys

import pytest

from ..conftest import REPO_ROOT


@pytest.fixture(scope="module")
def curve_status():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from omniglot_budget import curve_status
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return curve_status


def test_a_curve_whose_best_point_is_in_its_last_fifth_is_still_rising(curve_status) -> None:
    assert curve_status([(100 * i, 90 + i) for i in range(1, 11)]) == "still rising"


def test_a_flattened_curve_has_no_status(curve_status) -> None:
    assert curve_status([(100 * i, 97.0 if i == 5 else 96.0) for i in range(1, 11)]) is None


def test_a_short_curve_ending_on_its_best_point_is_still_rising(curve_status) -> None:
    assert curve_status([(99, 89.35), (100, 89.43)]) == "still rising"
    assert curve_status([(99, 89.35), (100, 88.0)]) is None


def test_a_single_point_says_it_cannot_tell(curve_status) -> None:
    assert "too short to tell" in curve_status([(78, 65.49)])
    assert curve_status([]) is None
