"""LEO: latent adaptation, decoded weights, determinism, a pure adapt, gradient clipping, and learning."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_meta.backbones import Conv4
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import MetaDataset, TensorClassDataset
from lit_meta.data.datasets.base import SplitName
from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners.leo import LEO, clip_by_value_then_norm

DIM = 16


class GaussianFeatures(MetaDataset):
    """Pre-computed "embeddings": ``DIM``-d points whose class centres differ only in their first 4 dimensions,
    the other 12 pure noise, so a few support points hardly tell the classes apart until meta-training
    teaches the decoder which dimensions matter. Classes split 18/6/6."""

    def __init__(self, items_per_class: int = 10, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        classes, informative = 30, 4
        points = rng.normal(size=(classes, items_per_class, DIM))
        points[:, :, :informative] = 0.3 * points[:, :, :informative] + rng.normal(size=(classes, 1, informative))
        labels = np.repeat(np.arange(classes), items_per_class)
        data = torch.from_numpy(points.reshape(-1, DIM)).float()
        self.family = TensorClassDataset(data, labels, [f"class{c}" for c in range(classes)])
        self.classes = {"train": np.arange(18), "val": np.arange(18, 24), "test": np.arange(24, 30)}

    def split(self, name: SplitName) -> TensorClassDataset:
        return self.family.subset(self.classes[name])


def features_datamodule(**kwargs) -> EpisodicDataModule:
    settings = dict(ways=5, shots=1, queries=3, meta_batch_size=4, train_episodes=8, val_episodes=4, test_episodes=100)
    return EpisodicDataModule(GaussianFeatures(), **{**settings, **kwargs})


def a_batch(tasks: int = 2, **kwargs) -> EpisodeBatch:
    dm = features_datamodule(meta_batch_size=tasks, **kwargs)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def leo(**kwargs) -> LEO:
    torch.manual_seed(0)
    settings = dict(embedding_dim=DIM, num_latents=8, inner_steps=3, finetuning_steps=2)
    return LEO(nn.Identity(), **{**settings, **kwargs})


def trainer(**kwargs) -> L.Trainer:
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**settings, **kwargs})


def support_loss(model: LEO, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> float:
    return F.cross_entropy(model.adapt(support_x, support_y, steps=steps)(support_x), support_y).item()


# -- adaptation -------------------------------------------------------------------------------------
def test_latent_adaptation_lowers_the_support_loss():
    """Fine-tuning off, so every change comes from the steps on the latent codes and their decoding."""
    model = leo(finetuning_steps=0).eval()
    episode = a_batch()[0]
    losses = [support_loss(model, episode.support_x, episode.support_y, steps) for steps in (0, 1, 5)]
    assert losses[0] > losses[1] > losses[2], losses


def test_finetuning_lowers_the_support_loss_further():
    episode = a_batch()[0]
    without, with_finetuning = (
        support_loss(
            leo(finetuning_steps=steps, finetuning_lr_init=0.1).eval(), episode.support_x, episode.support_y, 3
        )
        for steps in (0, 3)
    )
    assert with_finetuning < without


@pytest.mark.parametrize("ways", [3, 5, 7])
def test_decoded_weights_have_one_row_per_class(ways):
    model = leo().eval()
    support_y = torch.arange(ways).repeat(2)
    task_model = model.adapt(torch.randn(2 * ways, DIM), support_y)
    assert task_model.weights.shape == (ways, DIM)
    assert task_model(torch.randn(4, DIM)).shape == (4, ways)


def test_adapt_leaves_the_learner_unchanged():
    """A Conv4 backbone with BatchNorm: adapting in eval mode touches no weight, statistic or gradient."""
    torch.manual_seed(0)
    model = LEO(Conv4(1, out_features=None, hidden_channels=8), embedding_dim=8, num_latents=4).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    task_model = model.adapt(torch.rand(5, 1, 28, 28), torch.arange(5))
    task_model(torch.rand(3, 1, 28, 28))
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(p.grad is None for p in model.parameters())
    assert not task_model.weights.requires_grad


# -- determinism ------------------------------------------------------------------------------------
def test_evaluation_uses_the_means_so_adapt_and_meta_loss_repeat_bitwise():
    """Eval mode: means instead of samples and no dropout, as the authors' code at meta-test."""
    model = leo(kl_weight=0.0).eval()
    batch = a_batch()
    episode = batch[0]
    first, second = (model.adapt(episode.support_x, episode.support_y)(episode.query_x) for _ in range(2))
    assert torch.equal(first, second)
    assert torch.equal(model.meta_loss(batch), model.meta_loss(batch))


def test_training_samples_and_repeats_bitwise_under_the_same_seed():
    model = leo(kl_weight=0.0).train()
    batch = a_batch()

    def loss(seed: int) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return model.meta_loss(batch).detach()

    assert torch.equal(loss(1), loss(1))
    assert not torch.equal(loss(1), loss(2))  # codes, weights and dropout masks are sampled in training


# -- meta-gradient ----------------------------------------------------------------------------------
def test_meta_gradient_reaches_every_parameter_through_both_inner_loops():
    """Second order: the learned step sizes get gradients only through the inner updates."""
    model = leo(dropout_rate=0.0).train()
    model.meta_loss(a_batch()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


# -- gradient clipping ------------------------------------------------------------------------------
def test_clipping_by_value_then_by_the_norm_of_each_tensor():
    big, small = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    big.grad = torch.tensor([0.5, -0.05, 0.02])
    small.grad = torch.tensor([0.06, 0.06])  # norm 0.085: kept, though the global norm exceeds 0.1
    clip_by_value_then_norm([big, small], value=0.1, norm=0.1)
    by_value = torch.tensor([0.1, -0.05, 0.02])
    torch.testing.assert_close(big.grad, by_value * 0.1 / by_value.norm())
    torch.testing.assert_close(small.grad, torch.tensor([0.06, 0.06]))


def test_zero_thresholds_turn_clipping_off():
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([3.0, -4.0])
    clip_by_value_then_norm([p], value=0.0, norm=0.0)
    assert torch.equal(p.grad, torch.tensor([3.0, -4.0]))


def test_a_training_step_applies_both_clippings():
    """Plain SGD with rate 1 moves each weight by its clipped meta-gradient."""
    model = leo(meta_optimizer="sgd", meta_lr=1.0, gradient_threshold=0.01, gradient_norm_threshold=0.02)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer(max_steps=1, limit_val_batches=0).fit(model, features_datamodule())
    for name, p in model.named_parameters():
        step = p.detach() - before[name]
        assert step.abs().max() <= 0.01 + 1e-6, name
        assert step.norm() <= 0.02 + 1e-6, name
    assert any((p.detach() - before[n]).norm() > 0.015 for n, p in model.named_parameters())


# -- errors -----------------------------------------------------------------------------------------
def test_an_embedding_size_other_than_embedding_dim_is_named():
    model = leo(embedding_dim=DIM + 1).eval()
    with pytest.raises(ValueError, match=rf"embedding_dim={DIM + 1}; set embedding_dim={DIM}"):
        model.adapt(torch.randn(5, DIM), torch.arange(5))
    with pytest.raises(ValueError, match=rf"embedding_dim={DIM + 1}"):
        model.meta_loss(a_batch())


def test_unflattened_backbone_outputs_are_refused():
    model = LEO(nn.Conv2d(1, 2, 3), embedding_dim=DIM).eval()
    with pytest.raises(ValueError, match="flat embeddings"):
        model.adapt(torch.rand(5, 1, 8, 8), torch.arange(5))


@pytest.mark.parametrize(
    "bad",
    [dict(inner_steps=-1), dict(kl_weight=-1.0), dict(gradient_threshold=-0.1), dict(dropout_rate=1.0),
     dict(num_latents=0)],
)  # fmt: skip
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        leo(**bad)


# -- learning ---------------------------------------------------------------------------------------
def test_meta_learns_pre_computed_features_with_an_identity_backbone():
    """The paper's setting: fixed embeddings served by the dataset, ``backbone=nn.Identity()``. Meta-training
    lifts 5-way 1-shot accuracy on new classes from about 31% to about 88% (100 steps, ~5 s). Validation and
    test run under a default Trainer (inference mode)."""
    model = leo(meta_lr=1e-2)
    t = trainer(max_epochs=1, limit_val_batches=1)
    (untrained,) = t.test(model, features_datamodule(), verbose=False)
    t.fit(model, features_datamodule(train_episodes=4 * 100))
    (trained,) = t.test(model, features_datamodule(), verbose=False)
    assert untrained["test/acc"] < 0.45 and trained["test/acc"] > 0.7, (untrained, trained)


@pytest.mark.slow  # 20-30 s on 2 cores; the contract test runs this learner by default
def test_learns_glyphs_end_to_end_well_above_chance(tmp_path):
    """5-way 1-shot on procedural glyphs with a small Conv4 meta-trained through LEO: chance is 20%.
    100 steps of 4 tasks, about 20 s on one thread."""
    torch.manual_seed(0)
    dm = EpisodicDataModule(
        "glyphs", root=str(tmp_path), dataset_kwargs=dict(num_classes=200), ways=5, shots=1, queries=5,
        meta_batch_size=4, train_episodes=4 * 100, val_episodes=4, test_episodes=100,
    )  # fmt: skip
    model = LEO(
        Conv4(1, out_features=None, hidden_channels=32),
        embedding_dim=32,
        num_latents=16,
        inner_steps=2,
        finetuning_steps=1,
        dropout_rate=0.1,
        meta_lr=1e-3,
    )
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(model, dm)
    (scores,) = t.test(model, dm, verbose=False)
    assert scores["test/acc"] > 0.45, scores
