"""The accuracy benchmark's record: whether the validation curve was still rising, and which split it trained on."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest

from ..conftest import REPO_ROOT

PUBLISHED = "vinyals, rotations 0, 90, 180, 270"


@pytest.fixture(scope="module")
def budget() -> ModuleType:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        return importlib.import_module("omniglot_budget")
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))


def test_a_curve_whose_best_point_is_in_its_last_fifth_is_still_rising(budget) -> None:
    assert budget.curve_status([(100 * i, 90 + i) for i in range(1, 11)]) == "still rising"


def test_a_flattened_curve_has_no_status(budget) -> None:
    assert budget.curve_status([(100 * i, 97.0 if i == 5 else 96.0) for i in range(1, 11)]) is None


def test_a_short_curve_ending_on_its_best_point_is_still_rising(budget) -> None:
    assert budget.curve_status([(99, 89.35), (100, 89.43)]) == "still rising"
    assert budget.curve_status([(99, 89.35), (100, 88.0)]) is None


def test_a_single_point_says_it_cannot_tell(budget) -> None:
    assert "too short to tell" in budget.curve_status([(78, 65.49)])
    assert budget.curve_status([]) is None


def test_a_result_names_the_split_its_config_trains_on(budget) -> None:
    configs = REPO_ROOT / "configs"
    assert budget.split_text(configs / "protonet" / "omniglot_5w1s.yaml") == PUBLISHED
    assert budget.split_text(configs / "siamese" / "omniglot_5w1s.yaml") == PUBLISHED
    assert budget.split_text(configs / "siamese" / "omniglot_koch_5w1s.yaml") == "lake, no rotations"
