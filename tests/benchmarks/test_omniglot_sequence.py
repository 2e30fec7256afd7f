"""The sequence learners' benchmark record: the split it names and the trend of its training curve."""

from __future__ import annotations

import json
import os
import time
from types import ModuleType

import pytest
import torch

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


def earlier_fit(out, fit_command: str, step: int = 300):
    """A finished run of the SNAIL 5w1s config under ``out``: its result and two checkpoints, the newer at ``step``."""
    checkpoints = out / "logs" / "snail_omniglot_5w1s" / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"global_step": 100}, checkpoints / "epoch=0-step=100.ckpt")
    newest = checkpoints / f"epoch=1-step={step}.ckpt"
    torch.save({"global_step": step}, newest)
    os.utime(newest, (time.time() + 5, time.time() + 5))
    result = {"fit_command": fit_command, "steps": step, "fit_wall_s": 600.0}
    (out / "snail_omniglot_5w1s_result.json").write_text(json.dumps(result))
    return newest


def test_resume_continues_from_the_newest_checkpoint_with_only_the_budget_changed(sequence, tmp_path) -> None:
    newest = earlier_fit(
        tmp_path,
        "lit-meta fit --config /elsewhere/configs/snail/omniglot_5w1s.yaml --trainer.max_time 00:00:55:00 "
        "--data.meta_batch_size 8 --model.init_args.meta_lr=0.001",
    )
    now = ["lit-meta", "fit", "--config", "/here/configs/snail/omniglot_5w1s.yaml", "--trainer.max_time",
           "00:02:00:00", "--data.meta_batch_size=8", "--model.init_args.meta_lr", "0.001"]  # fmt: skip
    run_dir = tmp_path / "logs" / "snail_omniglot_5w1s"
    resumed = sequence.resume(now, run_dir, tmp_path / "snail_omniglot_5w1s_result.json")
    assert resumed["checkpoint"] == newest and resumed["step"] == 300
    assert resumed["earlier"]["fit_wall_s"] == 600.0


def test_resume_refuses_another_command_or_a_missing_run(sequence, tmp_path) -> None:
    run_dir, result = tmp_path / "logs" / "snail_omniglot_5w1s", tmp_path / "snail_omniglot_5w1s_result.json"
    command = ["lit-meta", "fit", "--config", "configs/snail/omniglot_5w1s.yaml", "--data.meta_batch_size", "8"]
    with pytest.raises(SystemExit, match="no finished run"):
        sequence.resume(command, run_dir, result)
    earlier_fit(tmp_path, "lit-meta fit --config configs/snail/omniglot_5w1s.yaml --data.meta_batch_size 32")
    with pytest.raises(SystemExit, match=r"data\.meta_batch_size"):
        sequence.resume(command, run_dir, result)
