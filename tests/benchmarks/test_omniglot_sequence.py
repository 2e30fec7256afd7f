"""The sequence learners' benchmark record: the split it names and the trend of its training curve."""

from __future__ import annotations

from types import ModuleType

import pytest

from ..conftest import import_benchmark


@pytest.fixture(scope="module")
def sequence() -> ModuleType:
    return import_benchmark("omniglot_sequence")


def test_a_record_names_the_split_of_its_config(sequence) -> None:
    assert sequence.split_text("snail/omniglot_5w1s.yaml") == "santoro (1,200 / 423 characters)"


def test_the_training_curve_says_whether_it_was_still_rising(sequence) -> None:
    rising = [{"step": 100 * i, "train/acc": 0.5 + 0.004 * i} for i in range(1, 101)]
    flat = [{"step": 100 * i, "train/acc": 0.9 + (0.01 if i % 2 else -0.01)} for i in range(1, 101)]
    assert sequence.training_status(rising).startswith("still rising: training query accuracy")
    assert sequence.training_status(flat).startswith("flat: ")
    assert sequence.training_status(rising[:7]) is None


def test_the_fit_model_arguments_reach_the_tests_of_its_checkpoint(sequence) -> None:
    """A fit with ``--model.*`` overrides builds another network than the config's; the tests of its
    checkpoint get the same overrides (both spellings), and nothing else of the fit command."""
    fit = [
        "lit-meta", "fit", "--config", "configs/mann/omniglot_5w10s.yaml", "--data.meta_batch_size", "4",
        "--model.init_args.write_gate", "controller", "--trainer.max_steps", "25000",
        "--model.init_args.write_content=add",
    ]  # fmt: skip
    assert sequence.model_arguments(fit) == [
        "--model.init_args.write_gate",
        "controller",
        "--model.init_args.write_content=add",
    ]
    assert sequence.model_arguments(fit[:5]) == []
    whole = ["--model", "lit_meta.SNAIL", "--model_checkpoint", "x", "--model=configs/m.yaml"]
    assert sequence.model_arguments(whole) == ["--model", "lit_meta.SNAIL", "--model=configs/m.yaml"]
