"""Baseline and Baseline++ (Chen et al., 2019): pre-training over all meta-training classes, then a
new head fitted on frozen features for every task."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_meta.backbones import Conv4
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners.base import MetaLearner
from lit_meta.learners.baseline import Baseline, BaselinePlusPlus, CosineHead
from lit_meta.learners.finetuning import HeadFitting

from ..conftest import TinyImages

LEARNERS = [Baseline, BaselinePlusPlus]


def trainer(**kwargs) -> L.Trainer:
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**settings, **kwargs})


def bn_net() -> nn.Module:
    """1x8x8 images -> 16 features, with BatchNorm (whose running statistics adaptation must leave alone)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten())


def shuffled_ids_images() -> TinyImages:
    """TinyImages whose train classes have the ids 11, 2, 7, 4, 9, 0 (not 0 .. 5)."""
    images = TinyImages()
    images.classes = {"train": np.array([11, 2, 7, 4, 9, 0]), "val": np.array([1, 3, 5]), "test": np.array([6, 8, 10])}
    return images


def tiny_datamodule(**kwargs) -> EpisodicDataModule:
    settings = dict(ways=3, shots=2, queries=2, meta_batch_size=2, train_episodes=4, val_episodes=2, test_episodes=2)
    return EpisodicDataModule(shuffled_ids_images(), **{**settings, **kwargs})


# -- adaptation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("learner_class", LEARNERS)
def test_adapt_leaves_the_learner_unchanged_and_the_backbone_without_gradients(learner_class) -> None:
    torch.manual_seed(0)
    learner = learner_class(bn_net(), embedding_dim=16, num_classes=6).train()  # train mode: BN would update
    before = {name: value.clone() for name, value in learner.state_dict().items()}
    support_x, support_y = torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    outputs = learner.adapt(support_x, support_y)(torch.rand(4, 1, 8, 8))
    assert outputs.shape == (4, 3) and not outputs.requires_grad
    after = learner.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), "adapt changed the learner"
    assert all(p.grad is None for p in learner.parameters()), "the head fitting reached the learner's weights"
    assert learner.training and all(m.training for m in learner.backbone.modules()), "modes not given back"


@pytest.mark.parametrize("learner_class", LEARNERS)
def test_the_fitted_head_learns_the_support_and_is_reproducible(learner_class) -> None:
    """Three well-separated classes of 4-d points, 2 shots each; the identity is the frozen feature extractor."""
    learner = learner_class(nn.Identity(), embedding_dim=4)
    generator = torch.Generator().manual_seed(0)
    means = 3 * torch.eye(4)[:3]
    support_x = means.repeat_interleave(2, 0) + 0.3 * torch.randn(6, 4, generator=generator)
    support_y = torch.tensor([0, 0, 1, 1, 2, 2])
    queries = means + 0.3 * torch.randn(3, 4, generator=generator)
    rng_state = torch.get_rng_state()
    task_model = learner.adapt(support_x, support_y)
    assert torch.equal(torch.get_rng_state(), rng_state), "adapt used the global random state"
    assert torch.equal(task_model(support_x).argmax(-1), support_y)
    assert torch.equal(task_model(queries).argmax(-1), torch.tensor([0, 1, 2]))
    torch.testing.assert_close(learner.adapt(support_x, support_y)(queries), task_model(queries), rtol=0, atol=0)
    other = learner.adapt(support_x, support_y, generator=torch.Generator().manual_seed(1))(queries)
    assert not torch.equal(other, task_model(queries)), "the generator does not seed the fit"


@pytest.mark.parametrize("learner_class", LEARNERS)
def test_a_meta_batch_is_fitted_at_once_as_each_task_alone(learner_class) -> None:
    """Evaluation fits the heads of all the tasks together (stacked); each task's query logits equal those of
    ``adapt`` on that task alone, under Lightning's inference mode, and the learner is left as it was."""
    torch.manual_seed(0)
    learner = learner_class(bn_net(), embedding_dim=16, num_classes=6).train()  # train mode: BN would update
    tasks, ways, shots, queries = 4, 5, 2, 3
    labels = torch.stack([torch.randperm(ways * shots) % ways for _ in range(tasks)])  # a support order per task
    batch = EpisodeBatch(
        support_x=torch.rand(tasks, ways * shots, 1, 8, 8),
        support_y=labels,
        query_x=torch.rand(tasks, ways * queries, 1, 8, 8),
        query_y=torch.arange(ways).repeat_interleave(queries).expand(tasks, -1),
        classes=torch.arange(ways).expand(tasks, -1),
    )
    before = {name: value.clone() for name, value in learner.state_dict().items()}
    with torch.inference_mode():
        outputs = learner.evaluate_outputs(batch)
    assert outputs.shape == (tasks, ways * queries, ways) and not outputs.requires_grad
    after = learner.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), "evaluation changed the learner"
    assert all(p.grad is None for p in learner.parameters()), "the head fitting reached the learner's weights"
    assert learner.training and all(m.training for m in learner.backbone.modules()), "modes not given back"
    alone = torch.stack([learner.adapt(e.support_x, e.support_y)(e.query_x) for e in batch])
    torch.testing.assert_close(outputs, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs[0], outputs[1]), "the tasks did not get heads of their own"


def test_the_head_takes_the_papers_number_of_steps() -> None:
    """100 passes in batches of 4: 2 steps per pass for 5 examples, the last of 1 example."""
    calls: list[int] = []

    class Counting(Baseline):
        def task_head(self, ways, generator, tasks=None):
            head = super().task_head(ways, generator, tasks)
            head.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
            return head

    learner = Counting(nn.Identity(), embedding_dim=3)
    assert learner.head_fitting == HeadFitting(100, 4, 0.01, 0.9, 0.9, 1e-3)
    learner.adapt(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 4]))
    assert calls == [4, 1] * 100


# -- the heads ---------------------------------------------------------------------------------------
def test_cosine_head_scores_are_the_scaled_cosines_and_the_scale_is_learned() -> None:
    head = CosineHead(2, 2, scale=5.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    features = torch.tensor([[3.0, 0.0], [0.0, -1.0]])
    expected = 5.0 * torch.tensor([[1.0, 1 / math.sqrt(2)], [0.0, -1 / math.sqrt(2)]])
    torch.testing.assert_close(head(features), expected)
    torch.testing.assert_close(head.scale, torch.tensor(5.0))
    F.cross_entropy(head(features), torch.tensor([1, 0])).backward()
    assert head.temperature.log_value.grad is not None and head.temperature.log_value.grad.abs() > 0


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="scale=0"):
        BaselinePlusPlus(nn.Identity(), embedding_dim=2, scale=0.0)
    with pytest.raises(ValueError, match="finetune_batch_size=0"):
        Baseline(nn.Identity(), embedding_dim=2, finetune_batch_size=0)
    with pytest.raises(EpisodeConfigError, match="set embedding_dim=16"):
        Baseline(bn_net(), embedding_dim=64).adapt(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(EpisodeConfigError, match=r"got shape \(2, 2\)"):
        Baseline(nn.Identity(), embedding_dim=2).adapt(torch.rand(2, 2, 2), torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="learn_scale=True with tasks=3"):
        CosineHead(2, 2, tasks=3)


# -- pre-training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("learner_class", LEARNERS)
def test_num_classes_is_read_from_the_train_split(learner_class) -> None:
    learner = learner_class(bn_net(), embedding_dim=16)
    trainer(max_steps=2, limit_val_batches=0).fit(learner, tiny_datamodule())
    assert learner.hparams.num_classes == 6 and learner.classifier.weight.shape == (6, 16)
    if learner_class is BaselinePlusPlus:
        scale = learner.classifier.scale
        assert scale != 10.0, "the pre-training scale was not learned"
        task_head = learner.task_head(3, torch.Generator())
        assert task_head.scale == scale and not any(p.ndim == 0 for p in task_head.parameters())


def test_a_num_classes_other_than_the_train_splits_is_refused() -> None:
    with pytest.raises(EpisodeConfigError, match=r"num_classes=7 but the train split .* has 6 classes"):
        trainer(max_steps=1).fit(Baseline(bn_net(), embedding_dim=16, num_classes=7), tiny_datamodule())


def test_pre_training_labels_every_item_with_its_original_class() -> None:
    """Train class ids 11, 2, 7, 4, 9, 0 are rows 5, 1, 3, 2, 4, 0 of the classifier (sorted ids)."""
    learner = Baseline(bn_net(), embedding_dim=16, num_classes=6)
    datamodule = tiny_datamodule()
    trainer(max_steps=1, limit_val_batches=0).fit(learner, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    row = {11: 5, 2: 1, 7: 3, 4: 2, 9: 4, 0: 0}
    ids = torch.cat(
        [batch.classes.gather(1, batch.support_y).flatten(), batch.classes.gather(1, batch.query_y).flatten()]
    )
    targets = torch.tensor([row[int(i)] for i in ids])
    items = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    learner.eval()  # the same BatchNorm statistics in both computations
    expected = F.cross_entropy(learner.classifier(learner.backbone(items)), targets)
    torch.testing.assert_close(learner.meta_loss(batch), expected)


def test_checkpoints_rebuild_the_classifier_for_loading_resuming_and_testing(tmp_path: Path) -> None:
    def glyphs(**kwargs) -> EpisodicDataModule:
        settings = dict(dataset_kwargs={"image_size": 16, "num_classes": 40}, ways=3, queries=2, test_episodes=2)
        return EpisodicDataModule("glyphs", root=str(tmp_path), meta_batch_size=1, train_episodes=4, **settings)

    def learner() -> BaselinePlusPlus:
        return BaselinePlusPlus(Conv4(1, None, hidden_channels=8, image_size=16), embedding_dim=8)

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(max_steps=2, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint]).fit(
        learner(), glyphs()
    )
    last = str(tmp_path / "last.ckpt")
    loaded = MetaLearner.load_from_checkpoint(last, weights_only=True)
    assert type(loaded) is BaselinePlusPlus and loaded.hparams.num_classes == 32  # 80% of 40 classes
    resumed = trainer(max_steps=4, limit_val_batches=0)
    resumed.fit(learner(), glyphs(), ckpt_path=last)  # the classifier exists before the optimiser is restored
    assert resumed.global_step == 4
    (scores,) = trainer().test(learner(), glyphs(), ckpt_path=last, verbose=False)
    assert 0.0 <= scores["test/acc"] <= 1.0


# -- it learns -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("learner_class", LEARNERS)
def test_pre_trained_briefly_on_glyphs_it_beats_chance_by_a_wide_margin(learner_class, tmp_path: Path) -> None:
    """100 steps of 16-way episodes (64 images) over 200 meta-training glyph classes at 16x16, then 30
    5-way 1-shot meta-test episodes on unseen classes (about 10-15 s on one thread); chance is 20%,
    measured 65-67% after 150 steps."""
    L.seed_everything(0, verbose=False)
    dm = EpisodicDataModule(
        "glyphs", root=str(tmp_path), dataset_kwargs={"image_size": 16, "num_classes": 250}, ways=5, shots=1,
        queries=10, train_ways=16, train_queries=3, meta_batch_size=1, train_episodes=100, test_episodes=30,
        eval_meta_batch_size=10,
    )  # fmt: skip
    learner = learner_class(Conv4(1, None, hidden_channels=32, image_size=16), embedding_dim=32, meta_lr=3e-3)
    t = trainer(max_steps=100, limit_val_batches=0)
    t.fit(learner, dm)
    (scores,) = t.test(learner, dm, verbose=False)
    assert scores["test/acc"] > 0.45, scores
