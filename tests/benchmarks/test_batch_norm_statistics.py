"""The BatchNorm-statistics benchmark: each variant normalises with the statistics it names."""

from __future__ import annotations

import copy
from types import ModuleType

import pytest
import torch
from torch import nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners import RelationNet

from ..conftest import import_benchmark


@pytest.fixture(scope="module")
def bn_stats() -> ModuleType:
    return import_benchmark("batch_norm_statistics")


def relation_net(batch_norm: bool) -> RelationNet:
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(6) if batch_norm else nn.Identity()
    backbone = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), norm, nn.ReLU())
    if batch_norm:  # the paper's relation module, with BatchNorm in both its conv blocks
        return RelationNet(backbone, input_shape=(1, 8, 8), relation_channels=6, relation_hidden=4)
    relation = nn.Sequential(nn.Conv2d(12, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    return RelationNet(backbone, relation_module=relation)


def episodes(tasks: int = 4, ways: int = 5, queries: int = 6) -> EpisodeBatch:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(ways)
    # classes that differ in brightness, so that the statistics of a call depend on which images are in it
    support_x = torch.randn(tasks, ways, 1, 8, 8, generator=generator) + 0.5 * labels.view(1, ways, 1, 1, 1)
    query_y = labels.repeat(queries)
    query_x = torch.randn(tasks, ways * queries, 1, 8, 8, generator=generator) + 0.5 * query_y.view(1, -1, 1, 1, 1)
    return EpisodeBatch(
        support_x=support_x, support_y=labels.expand(tasks, -1), query_x=query_x,
        query_y=query_y.expand(tasks, -1), classes=labels.expand(tasks, -1),
    )  # fmt: skip


def accuracies(logits: list[torch.Tensor], batch: EpisodeBatch) -> list[float]:
    pairs = zip(logits, batch, strict=True)
    return [(scores.argmax(-1) == episode.query_y).float().mean().item() for scores, episode in pairs]


def with_trained_statistics(model: RelationNet, batch: EpisodeBatch) -> RelationNet:
    """Running statistics far from any one call's: a few training-mode forwards on shifted images."""
    model.train()
    with torch.no_grad():
        for shift in (3.0, -2.0, 5.0):
            model(batch.support_x + shift, batch.support_y, batch.query_x * 2 + shift)
    return model


def test_each_variant_uses_the_statistics_it_names(bn_stats) -> None:
    batch = episodes()
    model = with_trained_statistics(relation_net(batch_norm=True), batch)
    scores = bn_stats.episode_scores(model, [batch])

    model.eval()
    with torch.no_grad():
        running = [model(e.support_x, e.support_y, e.query_x) for e in batch]
        in_training_mode = copy.deepcopy(model).train()  # BatchNorm on each call's own statistics
        joint = [in_training_mode(e.support_x, e.support_y, e.query_x) for e in batch]
        separate = [in_training_mode.adapt(e.support_x, e.support_y)(e.query_x) for e in batch]
    assert scores["running"] == accuracies(running, batch)
    assert scores["episode"] == accuracies(joint, batch)
    assert scores["separate"] == accuracies(separate, batch)
    # the three really are three normalisations here, not one computed thrice
    assert not torch.allclose(torch.stack(running), torch.stack(joint))
    assert not torch.allclose(torch.stack(joint), torch.stack(separate))
    assert not model.training  # the learner is left in eval()


def test_without_batch_norm_the_variants_agree(bn_stats) -> None:
    batch = episodes()
    scores = bn_stats.episode_scores(relation_net(batch_norm=False), [batch])
    assert scores["running"] == scores["episode"] == scores["separate"]
    assert len(scores["running"]) == len(batch)
