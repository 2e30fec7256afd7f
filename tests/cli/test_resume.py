"""Resuming ``lit-meta fit`` from a checkpoint at any position replays the uninterrupted run bitwise,
validation included."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lit_meta.cli import main

STEPS = 10
EPISODES_PER_EPOCH = 8  # 4 steps of 2 tasks: checkpoints at steps 3 and 6 fall inside epochs 0 and 1


def write_config(
    root: Path, learner: dict, num_workers: int, every_n_train_steps: int = 3, val_check_interval: int | None = None
) -> Path:
    config: dict = {
        "model": learner,
        "data": {
            "dataset": "glyphs",
            "root": str(root / "glyphs"),
            "dataset_kwargs": {"num_classes": 60, "drawings_per_class": 6},
            "ways": 3,
            "shots": 1,
            "queries": 2,
            "meta_batch_size": 2,
            "train_episodes": EPISODES_PER_EPOCH,
            "val_episodes": 2,
            "test_episodes": 2,
            "num_workers": num_workers,
        },
        "trainer": {
            "max_steps": STEPS,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "every_n_train_steps": every_n_train_steps,
                        "save_top_k": -1,
                        "filename": "{step}",
                        "save_last": True,
                    },
                }
            ],
        },
    }
    if val_check_interval is not None:
        config["trainer"]["val_check_interval"] = val_check_interval
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, save_dir: Path, *extra: str) -> Path:
    assert main(["fit", "--config", str(config), "--trainer.logger.init_args.save_dir", str(save_dir), *extra]) == 0
    (version,) = (save_dir / "lightning_logs").iterdir()
    return version


def train_losses(version: Path) -> dict[int, str]:
    """``step -> train/loss`` exactly as logged (the CSV keeps every digit of the float)."""
    with open(version / "metrics.csv") as file:
        return {int(row["step"]): row["train/loss"] for row in csv.DictReader(file) if row.get("train/loss")}


def validation_points(version: Path) -> dict[int, dict[str, str]]:
    """``step -> {epoch, val/...}`` of every validation exactly as logged."""
    with open(version / "metrics.csv") as file:
        return {
            int(row["step"]): {k: v for k, v in row.items() if k == "epoch" or k.startswith("val/")}
            for row in csv.DictReader(file)
            if row.get("val/loss")
        }


def final_weights(version: Path) -> dict[str, torch.Tensor]:
    return torch.load(version / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


CONV4 = {"class_path": "lit_meta.backbones.Conv4", "init_args": {"in_channels": 1, "hidden_channels": 8}}
LEARNERS = {
    "protonet": {"class_path": "lit_meta.ProtoNet", "init_args": {"backbone": {**CONV4}}},
    "maml": {
        "class_path": "lit_meta.MAML",
        "init_args": {
            "backbone": {**CONV4, "init_args": {**CONV4["init_args"], "out_features": 3}},
            "inner_lr": 0.4,
            "learn_inner_lr": True,
        },
    },
    "reptile": {  # the inner Adam's moments carry over from task to task, and across the resume
        "class_path": "lit_meta.Reptile",
        "init_args": {
            "backbone": {**CONV4, "init_args": {**CONV4["init_args"], "out_features": 3}},
            "inner_lr": 0.01,
            "inner_steps": 2,
            "inner_optimizer": "adam",
            "carry_inner_state": True,
            "inner_batch_size": 4,
        },
    },
}
LEARNERS["protonet"]["init_args"]["backbone"]["init_args"] = {**CONV4["init_args"], "out_features": None}


@pytest.mark.parametrize(
    ("learner", "num_workers"),
    [("protonet", 0), ("protonet", 2), ("maml", 0), ("reptile", 0)],
    ids=["protonet", "workers", "maml", "reptile"],
)
def test_resume_from_mid_epoch_checkpoint_equals_uninterrupted_run(tmp_path, learner, num_workers):
    config = write_config(tmp_path, LEARNERS[learner], num_workers)
    uninterrupted = fit(config, tmp_path / "uninterrupted")
    checkpoint = uninterrupted / "checkpoints" / "step=6.ckpt"  # mid-way through epoch 1
    assert checkpoint.is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(config, tmp_path / "resumed", "--ckpt_path", str(checkpoint))
    # The datamodule keeps the position: Lightning must not call the loader unresumable (issue 17, case 16).
    assert not [w for w in caught if "not resumable" in str(w.message)]

    expected, replayed = train_losses(uninterrupted), train_losses(resumed)
    assert sorted(replayed) == [s for s in sorted(expected) if s >= 6]  # logged step = global_step - 1
    assert {s: expected[s] for s in replayed} == replayed  # same episodes, same losses, bit for bit
    before, after = final_weights(uninterrupted), final_weights(resumed)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_records_episodes_consumed_not_prefetched(tmp_path):
    """With DataLoader workers the sampler runs ahead of training; the checkpoint must not."""
    config = write_config(tmp_path, LEARNERS["protonet"], num_workers=2)
    version = fit(config, tmp_path / "run")
    state = torch.load(version / "checkpoints" / "step=3.ckpt", map_location="cpu", weights_only=True)
    train = state["EpisodicDataModule"]["samplers"]["train"]
    assert (train["epoch"], train["position"]) == (0, 3 * 2)


VAL_EVERY = 2  # validation after batches 2 and 4 of every 4-batch epoch: mid-epoch and at the epoch's end


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> tuple[Path, Path]:
    """One reference run with a checkpoint after every step, shared by every position.

    Single-threaded, as the resumed runs are (the autouse ``one_thread`` fixture is function-scoped,
    so it is not yet active here): another thread count sums in another order, in the last bits."""
    root = tmp_path_factory.mktemp("every_step")
    config = write_config(root, LEARNERS["protonet"], 0, every_n_train_steps=1, val_check_interval=VAL_EVERY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return config, fit(config, root / "uninterrupted")
    finally:
        torch.set_num_threads(threads)


def resume_at(uninterrupted_run: tuple[Path, Path], step: int, tmp_path: Path) -> None:
    config, uninterrupted = uninterrupted_run
    resumed = fit(config, tmp_path / "resumed", "--ckpt_path", str(uninterrupted / "checkpoints" / f"step={step}.ckpt"))
    expected_losses, losses = train_losses(uninterrupted), train_losses(resumed)
    assert sorted(losses) == [s for s in sorted(expected_losses) if s >= step]  # logged step = global_step - 1
    assert losses == {s: expected_losses[s] for s in losses}
    # A validation after the checkpoint's own batch is logged at that batch's step, step - 1.
    expected_points = {s: v for s, v in validation_points(uninterrupted).items() if s >= step - 1}
    assert validation_points(resumed) == expected_points  # same steps, epochs and values, bit for bit
    before, after = final_weights(uninterrupted), final_weights(resumed)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("step", range(1, STEPS))
def test_case_03_resume_at_every_position_equals_uninterrupted_run(uninterrupted_run, tmp_path, step):
    """Issue 17 case 3: a checkpoint after a batch followed by a validation (step 4: an epoch's last
    batch; step 2: mid-epoch) is saved before that validation, which the resumed run must still run.
    Every step of the run, each ~1.5 s."""
    resume_at(uninterrupted_run, step, tmp_path)


def test_resume_from_a_checkpoint_saved_after_an_epoch_end_validation_replays_the_next_epoch(tmp_path):
    """``ModelCheckpoint(monitor=...)`` and its ``last.ckpt`` save after the validation that ends an epoch.

    Lightning's ``set_epoch`` runs one epoch ahead for the rest of a run resumed from there; the
    training loader gives its sampler the Trainer's epoch instead, so the resumed run trains on the
    episodes the uninterrupted run does. (Lightning logs the resumed run's steps one higher; the
    losses are compared in order.)"""
    config = write_config(tmp_path, LEARNERS["protonet"], 0)
    setup = yaml.safe_load(config.read_text())
    setup["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"monitor": "val/acc", "mode": "max", "save_last": True, "save_top_k": -1},
        }
    ]
    config.write_text(yaml.safe_dump(setup))
    uninterrupted = fit(config, tmp_path / "uninterrupted")
    checkpoint = uninterrupted / "checkpoints" / "epoch=1-step=8.ckpt"  # after epoch 1's validation
    resumed = fit(config, tmp_path / "resumed", "--ckpt_path", str(checkpoint))
    expected, replayed = train_losses(uninterrupted), train_losses(resumed)
    assert [loss for _, loss in sorted(replayed.items())] == [expected[s] for s in sorted(expected) if s >= 8]
    assert [v for _, v in sorted(validation_points(resumed).items())] == [
        v for s, v in sorted(validation_points(uninterrupted).items()) if s > 8
    ]
    before, after = final_weights(uninterrupted), final_weights(resumed)
    assert all(torch.equal(before[k], after[k]) for k in before)
