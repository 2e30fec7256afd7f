"""The sequence family's base: episodes as sequences through a Trainer, checks before training, metrics;
the model-based learners (MANN, SNAIL, MetaNet) under bf16-mixed and DDP."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners.base import MetaLearner
from lit_meta.learners.mann import MANN
from lit_meta.learners.metanet import MetaNet
from lit_meta.learners.sequence import INSTANCES
from lit_meta.learners.snail import SNAIL

from ..conftest import TinyImages, two_spawned_cpu_processes


def tiny_mann(ways: int = 3) -> MANN:
    torch.manual_seed(0)
    return MANN(nn.Flatten(), ways=ways, embedding_dim=64, controller_size=16, memory_slots=8, memory_width=4)


def trainer(**kwargs: object) -> L.Trainer:
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**options, **kwargs})  # type: ignore[arg-type]


def datamodule(**kwargs: object) -> EpisodicDataModule:
    options = dict(ways=3, shots=4, queries=1, meta_batch_size=2, train_episodes=4, val_episodes=2, test_episodes=4)
    return EpisodicDataModule(TinyImages(), **{**options, **kwargs})  # type: ignore[arg-type]


def test_a_learner_that_scores_the_support_refuses_class_major_support_before_training() -> None:
    model = tiny_mann()
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(EpisodeConfigError, match="support_order='random'"):
        trainer(max_steps=1).fit(model, datamodule(support_order="by_class"))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_episodes_of_other_ways_are_refused_with_the_fix() -> None:
    with pytest.raises(EpisodeConfigError, match=r"ways=3.*set the learner's ways to 2"):
        trainer(max_steps=1).fit(tiny_mann(ways=3), datamodule(ways=2, support_order="random"))


def test_labels_beyond_the_ways_and_float_targets_are_errors() -> None:
    model = tiny_mann(ways=3)
    with pytest.raises(EpisodeConfigError, match=r"labels must lie in 0 \.\. 2"):
        model.adapt(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(EpisodeConfigError, match="regression"):
        model.adapt(torch.rand(4, 1, 8, 8), torch.rand(4))


def test_a_default_trainer_trains_validates_and_tests_with_accuracy_by_presentation() -> None:
    """Under Lightning's inference mode; the presentations an episode holds (shots = 4: the 1st to
    the 4th) are logged with their 95% CI, the others (5th, 10th) are not."""
    model = tiny_mann()
    dm = datamodule(support_order="random")
    trainer(max_steps=2, limit_val_batches=1).fit(model, dm)
    (results,) = trainer().test(model, dm)
    for k in INSTANCES:
        present = k <= 4
        assert (f"test/acc_instance_{k}" in results) is present
        assert (f"test/acc_instance_{k}_ci95" in results) is present
    assert results["test/episodes"] == 4
    assert 0.0 <= results["test/acc_instance_1"] <= 1.0


def test_adapt_reads_a_batch_of_tasks_like_single_tasks() -> None:
    model = tiny_mann().eval()
    support_x, query_x = torch.rand(2, 6, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    support_y = torch.tensor([[0, 1, 2, 2, 1, 0], [2, 2, 0, 1, 0, 1]])
    batched = model.adapt(support_x, support_y)(query_x)
    for task in range(2):
        single = model.adapt(support_x[task], support_y[task])(query_x[task])
        torch.testing.assert_close(batched[task], single)


def model_based(name: str) -> MetaLearner:
    """A tiny model-based learner for 3-way TinyImages (1x8x8) episodes, the same weights every call."""
    torch.manual_seed(0)
    if name == "MANN":
        return tiny_mann()
    if name == "SNAIL":
        return SNAIL(nn.Flatten(), ways=3, max_shots=4, embedding_dim=64, filters=4, attention_sizes=((5, 3), (6, 4)))
    return MetaNet(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)))


MODEL_BASED = ["MANN", "SNAIL", "MetaNet"]


@pytest.mark.parametrize("name", MODEL_BASED)
def test_bf16_mixed_precision_on_cpu(name: str) -> None:
    model = model_based(name)
    dm = datamodule(support_order="random")
    trainer(fast_dev_run=2, precision="bf16-mixed").fit(model, dm)
    (scores,) = trainer(precision="bf16-mixed").test(model, dm, verbose=False)
    assert math.isfinite(scores["test/loss"]) and all(torch.isfinite(p).all() for p in model.parameters())


class SaveWeightsAtEnd(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            torch.save([p.detach() for p in pl_module.parameters()], self.path)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n != "MANN" else []) for n in MODEL_BASED]
)
def test_ddp_step_equals_one_process_with_all_tasks(tmp_path, name: str) -> None:
    """Two CPU ranks with 2 tasks each take the same SGD step as one process with the 4 tasks: every
    parameter takes part in the loss (DDP would wait for any that does not) and ranks draw other tasks."""
    settings = dict(support_order="random", train_episodes=4)
    weights = {}
    for run in ("single", "ddp"):
        model = model_based(name)
        model.hparams.meta_optimizer, model.hparams.meta_lr = "sgd", 1.0
        save = SaveWeightsAtEnd(str(tmp_path / f"{run}.pt"))
        options = two_spawned_cpu_processes(save) if run == "ddp" else {"callbacks": [save]}
        t = trainer(max_steps=1, limit_val_batches=0, **options)
        t.fit(model, datamodule(meta_batch_size=4 if run == "single" else 2, **settings))
        weights[run] = torch.load(save.path)
    initial = [p.detach() for p in model_based(name).parameters()]
    for a, b in zip(weights["single"], weights["ddp"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p0, a) for p0, a in zip(initial, weights["single"], strict=True))
