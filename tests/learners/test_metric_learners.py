"""ProtoNet, MatchingNet, RelationNet and SiameseNet as LightningModules."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_meta.backbones import Conv4
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners import (
    MatchingNet,
    MetaLearner,
    ProtoNet,
    RelationNet,
    SiameseNet,
    default_relation_module,
    relation_embedding,
)
from lit_meta.learners.embedding import embed, embed_episode

from ..conftest import TinyImages


def embedding_net() -> nn.Module:
    """1x8x8 images -> 64-d embeddings."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())


def feature_map_net() -> nn.Module:
    """1x8x8 images -> 4x4x4 feature maps."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))


LEARNERS: dict[str, Callable[[], MetaLearner]] = {
    "protonet": lambda: ProtoNet(embedding_net()),
    "protonet_cosine": lambda: ProtoNet(embedding_net(), distance="cosine", temperature=0.1, learn_temperature=True),
    "matching": lambda: MatchingNet(embedding_net()),
    "matching_fce": lambda: MatchingNet(embedding_net(), fce=True, fce_steps=3, embedding_dim=64),
    "relation": lambda: RelationNet(feature_map_net(), input_shape=(1, 8, 8), relation_channels=8),
    "siamese": lambda: SiameseNet(embedding_net(), embedding_dim=64),
}
ORDER_FREE = ["protonet", "protonet_cosine", "matching", "relation", "siamese"]
TRAINED = ["protonet", "matching_fce", "relation", "siamese"]


def learner(name: str) -> MetaLearner:
    torch.manual_seed(1)
    return LEARNERS[name]()


def datamodule(**kwargs) -> EpisodicDataModule:
    settings = dict(ways=3, shots=2, queries=2, meta_batch_size=4, train_episodes=8, val_episodes=4, test_episodes=8)
    return EpisodicDataModule(TinyImages(), **{**settings, **kwargs})


def a_batch(tasks: int = 3) -> EpisodeBatch:
    dm = datamodule(meta_batch_size=tasks)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def trainer(**kwargs) -> L.Trainer:
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**settings, **kwargs})


# -- hand-computed cases --------------------------------------------------------------------------
def test_prototype_logits_are_negative_squared_distances():
    """Prototypes of {(0,0),(2,0)} and {(0,4),(0,2)} are (1,0) and (0,3)."""
    support_x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]])
    support_y = torch.tensor([0, 0, 1, 1])
    query_x = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    expected = -torch.tensor([[1.0, 1.0 + 4.0], [1.0, 9.0]])
    torch.testing.assert_close(ProtoNet(nn.Identity())(support_x, support_y, query_x), expected)
    torch.testing.assert_close(
        ProtoNet(nn.Identity()).adapt(support_x, support_y).cache["prototypes"], torch.tensor([[1.0, 0], [0, 3]])
    )
    torch.testing.assert_close(ProtoNet(nn.Identity(), temperature=2.0)(support_x, support_y, query_x), expected / 2)
    cosine = ProtoNet(nn.Identity(), distance="cosine", temperature=0.5)(support_x, support_y, query_x)
    torch.testing.assert_close(cosine, torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 0.0]]) / 0.5)


def test_matching_attention_is_a_softmax_over_cosine_similarities():
    support_x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    support_y = torch.tensor([0, 1, 1])
    query_x = torch.tensor([[2.0, 0.0]])
    weights = [math.exp(1.0), math.exp(0.0), math.exp(1 / math.sqrt(2))]
    p0 = weights[0] / sum(weights)
    log_probs = MatchingNet(nn.Identity())(support_x, support_y, query_x)
    torch.testing.assert_close(log_probs, torch.tensor([[math.log(p0), math.log(1 - p0)]]))
    # Cross-entropy on these outputs is the negative log-likelihood of the attention-weighted labels.
    loss = MatchingNet(nn.Identity()).task_loss(log_probs, torch.tensor([1]))
    torch.testing.assert_close(loss, torch.tensor(-math.log(1 - p0)))


class RecordingRelation(nn.Module):
    """Scores a pair ``[class map, query map]`` by ``exp(-|class map - query map|^2)`` and records its input."""

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        self.pairs = pairs
        half = pairs.shape[1] // 2
        return torch.exp(-(pairs[:, :half] - pairs[:, half:]).pow(2).flatten(1).sum(1))


def test_relation_pairs_are_summed_class_maps_then_query_maps():
    """What is checked: the relation module receives ``[sum of the class's support maps, query map]`` along
    the channels, pair (query i, class j) at row ``i * ways + j``; so a module scoring identity gives exactly
    1 to a query whose features equal a class's summed (2-shot) features."""
    torch.manual_seed(0)
    support_x = torch.randn(4, 1, 2, 2)  # 2 ways x 2 shots of 1x2x2 "feature maps"
    support_y = torch.tensor([0, 0, 1, 1])
    sums = torch.stack([support_x[:2].sum(0), support_x[2:].sum(0)])
    query_x = torch.stack([sums[1], sums[0], torch.randn(1, 2, 2)])
    relation = RecordingRelation()
    learner = RelationNet(nn.Identity(), relation_module=relation)
    scores = learner(support_x, support_y, query_x)
    assert scores.shape == (3, 2)
    assert scores[0, 1] == 1 and scores[1, 0] == 1 and (scores[2] < 1).all()
    pairs = relation.pairs.reshape(3, 2, 2, 2, 2)
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(pairs[i, j], torch.cat([sums[j], query_x[i]]))
    # MSE against one-hot targets: only the third query is wrong.
    loss = learner.task_loss(scores, torch.tensor([1, 0, 0]))
    torch.testing.assert_close(loss, ((scores[2, 0] - 1) ** 2 + scores[2, 1] ** 2) / 6)


def test_default_relation_module_gives_scores_in_the_unit_interval():
    model = RelationNet(relation_embedding(1, 8), relation_channels=8).eval()
    assert model.relation_module[3].in_features == 8  # 5x5 maps of 28x28 images pool to 1x1, as in the paper
    x = torch.rand(2, 1, 28, 28)
    scores = model(x, torch.tensor([0, 1]), x[[1, 1, 0]])
    assert scores.shape == (3, 2) and ((scores > 0) & (scores < 1)).all()
    torch.testing.assert_close(scores[0], scores[1])


def test_relation_net_embeds_apart_in_training_only_when_asked():
    """``embed_apart``: the training forward pass embeds the support and the query sets of a meta-batch in two
    backbone calls, so BatchNorm normalises each with its own statistics (the authors' code); by default one call
    normalises them together. Evaluation (``adapt``) embeds them apart either way."""
    batch = a_batch()
    joint, apart = learner("relation"), learner("relation")
    apart.embed_apart = True
    assert not RelationNet(feature_map_net(), input_shape=(1, 8, 8), relation_channels=8).embed_apart
    one_hot = F.one_hot(batch.support_y, 3).float()
    sets = {
        "joint": embed_episode(joint.backbone, batch.support_x, batch.query_x, 2),
        "apart": (embed(apart.backbone, batch.support_x, 2), embed(apart.backbone, batch.query_x, 2)),
    }
    for model, (support, query) in ((joint, sets["joint"]), (apart, sets["apart"])):
        expected = model.compare(query, **model.summarize_support(support, one_hot))
        torch.testing.assert_close(model(batch.support_x, batch.support_y, batch.query_x), expected)
    outputs = [model(batch.support_x, batch.support_y, batch.query_x) for model in (joint, apart)]
    assert not torch.allclose(*outputs, atol=1e-4)  # training-mode BatchNorm: the statistics differ


def test_relation_net_without_running_statistics_tests_each_set_on_its_own_batch_statistics():
    """The authors' test: BatchNorm layers without running statistics (embedding and relation module) normalise
    each call with its own batch in evaluation too, so a task model's scores equal the training forward pass of
    ``embed_apart`` on that episode, and a query's scores depend on the other queries (transductive)."""
    torch.manual_seed(0)
    model = RelationNet(
        relation_embedding(1, 8, track_running_stats=False),
        relation_channels=8,
        relation_track_running_stats=False,
        embed_apart=True,
    )
    assert not [name for name, _ in model.named_buffers() if "running" in name]
    with pytest.raises(ValueError, match=r"relation_track_running_stats=False .* given relation_module"):
        RelationNet(nn.Identity(), relation_module=nn.Identity(), relation_track_running_stats=False)
    support_x, support_y = torch.rand(6, 1, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2])
    query_x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        trained_way = model.train()(support_x, support_y, query_x)
        tested = model.eval().adapt(support_x, support_y)(query_x)
        fewer_queries = model.adapt(support_x, support_y)(query_x[:2])
    torch.testing.assert_close(tested, trained_way)
    assert not torch.allclose(fewer_queries, tested[:2], atol=1e-4)
    # with running statistics (the default), evaluation scores a query whatever the others are
    running = RelationNet(relation_embedding(1, 8), relation_channels=8).eval()
    with torch.no_grad():
        task_model = running.adapt(support_x, support_y)
        torch.testing.assert_close(task_model(query_x[:2]), task_model(query_x)[:2])


def test_siamese_score_is_weighted_l1_symmetric_and_averaged_per_class():
    learner = SiameseNet(nn.Identity(), embedding_dim=2)
    with torch.no_grad():
        learner.head.weight.copy_(torch.tensor([[1.0, 2.0]]))
        learner.head.bias.fill_(-1.0)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    assert learner.pair_logits(a, b) == learner.pair_logits(b, a) == 1 + 6 - 1
    torch.manual_seed(0)
    x, y = torch.randn(5, 7), torch.randn(5, 7)
    net = SiameseNet(nn.Identity(), embedding_dim=7)
    torch.testing.assert_close(net.pair_logits(x, y), net.pair_logits(y, x), rtol=0, atol=0)

    support_x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    logits = learner.adapt(support_x, torch.tensor([0, 0, 1]))(torch.tensor([[1.0, 1.0]]))
    # pair logits: (1 + 2 - 1), (1 + 2 - 1), (1 + 0 - 1); class 0 averages its two shots.
    torch.testing.assert_close(logits, torch.tensor([[2.0, 0.0]]))


def test_siamese_training_loss_weights_same_and_different_pairs_equally():
    torch.manual_seed(0)
    batch = EpisodeBatch(
        support_x=torch.randn(2, 4, 3), support_y=torch.tensor([[0, 0, 1, 1]] * 2),
        query_x=torch.randn(2, 2, 3), query_y=torch.tensor([[0, 1]] * 2), classes=torch.tensor([[5, 7]] * 2),
    )  # fmt: skip
    learner = SiameseNet(nn.Identity(), embedding_dim=3)
    same, different = [], []
    for episode in batch:
        x = torch.cat([episode.support_x, episode.query_x])
        y = torch.cat([episode.support_y, episode.query_y])
        for i in range(len(x)):
            for j in range(i + 1, len(x)):
                logit = learner.pair_logits(x[i], x[j])
                target = torch.tensor(float(y[i] == y[j]))
                (same if y[i] == y[j] else different).append(F.binary_cross_entropy_with_logits(logit, target))
    assert len(same) == 2 * 6 and len(different) == 2 * 9  # 3 examples per class, 2 classes, 2 tasks
    expected = (torch.stack(same).mean() + torch.stack(different).mean()) / 2
    torch.testing.assert_close(learner.meta_loss(batch), expected)


# -- support order, FCE, cached task models --------------------------------------------------------
@pytest.mark.parametrize("name", ORDER_FREE)
def test_predictions_do_not_depend_on_support_order(name):
    model = learner(name).eval()
    episode = a_batch()[0]
    permutation = torch.randperm(len(episode.support_y), generator=torch.Generator().manual_seed(0))
    expected = model.adapt(episode.support_x, episode.support_y)(episode.query_x)
    shuffled = model.adapt(episode.support_x[permutation], episode.support_y[permutation])(episode.query_x)
    torch.testing.assert_close(shuffled, expected, rtol=1e-5, atol=1e-6)


def test_full_context_embeddings_depend_on_support_order_and_change_the_embeddings():
    episode = a_batch()[0]
    fce = learner("matching_fce").eval()
    plain = MatchingNet(fce.backbone).eval()
    within_class = torch.tensor([1, 0, 2, 3, 4, 5])
    across_classes = torch.tensor([2, 3, 0, 1, 4, 5])
    outputs = fce.adapt(episode.support_x, episode.support_y)(episode.query_x)
    for permutation in (within_class, across_classes):
        shuffled = fce.adapt(episode.support_x[permutation], episode.support_y[permutation])(episode.query_x)
        assert not torch.allclose(shuffled, outputs, atol=1e-4)
    with_context = fce.adapt(episode.support_x, episode.support_y)
    without = plain.adapt(episode.support_x, episode.support_y)
    assert not torch.allclose(with_context.cache["support"], without.cache["support"], atol=1e-3)
    assert not torch.allclose(outputs, without(episode.query_x), atol=1e-4)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_cached_task_model_matches_the_full_forward_pass(name):
    """``adapt`` (what validation, test and predict use) caches the support side; the full forward pass
    embeds support and query together, for a whole meta-batch, as training does. In eval mode they agree."""
    model = learner(name).eval()
    batch = a_batch()
    with torch.no_grad():
        full = model(batch.support_x, batch.support_y, batch.query_x)
    assert full.shape == (3, 6, 3)
    for task, episode in enumerate(batch):
        task_model = model.adapt(episode.support_x, episode.support_y)
        torch.testing.assert_close(task_model(episode.query_x), full[task], rtol=1e-5, atol=1e-6)
        one_at_a_time = torch.cat([task_model(x[None]) for x in episode.query_x])
        torch.testing.assert_close(one_at_a_time, full[task], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.predict_step(batch, 0).labels, full.argmax(-1))
    if name != "siamese":  # Siamese trains on pairs; the others score the queries as evaluation does
        expected = torch.stack([model.task_loss(full[t], batch.query_y[t]) for t in range(len(batch))]).mean()
        torch.testing.assert_close(model.meta_loss(batch), expected)


# -- Lightning ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TRAINED)
def test_fit_with_more_training_ways_then_test_and_predict_under_a_default_trainer(name):
    dm = datamodule(train_ways=5)  # 5-way training, 3-way validation and test
    model = learner(name)
    before = [p.detach().clone() for p in model.parameters()]
    t = trainer(max_epochs=1)
    t.fit(model, dm)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    (scores,) = t.test(model, dm)
    assert set(scores) == {"test/loss", "test/loss_ci95", "test/acc", "test/acc_ci95", "test/episodes"}
    assert scores["test/episodes"] == dm.num_episodes["test"]
    assert 0 <= scores["test/acc"] <= 1 and scores["test/acc_ci95"] >= 0 and math.isfinite(scores["test/loss"])
    predictions = t.predict(model, dm)
    assert predictions[0].labels.shape == (4, 6) and predictions[0].labels.max() < 3


@pytest.mark.parametrize("name", ["protonet_cosine", "matching_fce"])
def test_checkpoint_restores_without_user_code(tmp_path, name):
    model = learner(name)
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(model, datamodule())
    t.save_checkpoint(tmp_path / "last.ckpt")
    restored = type(model).load_from_checkpoint(tmp_path / "last.ckpt").eval()
    model.eval()
    ep = a_batch()[0]
    torch.testing.assert_close(
        restored.adapt(ep.support_x, ep.support_y)(ep.query_x), model.adapt(ep.support_x, ep.support_y)(ep.query_x)
    )


def test_custom_relation_module_is_restored_from_the_checkpoint(tmp_path, recwarn):
    relation = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4 * 4, 1), nn.Sigmoid())
    model = RelationNet(feature_map_net(), relation_module=relation)
    assert not [w for w in recwarn if "relation_module" in str(w.message)]
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(model, datamodule())
    t.save_checkpoint(tmp_path / "last.ckpt")
    restored = RelationNet.load_from_checkpoint(tmp_path / "last.ckpt")
    assert isinstance(restored.relation_module[1], nn.Linear)
    torch.testing.assert_close(restored.relation_module[1].weight, model.relation_module[1].weight)


# -- errors at the boundary ---------------------------------------------------------------------------
def test_clear_errors():
    protonet = ProtoNet(nn.Identity())
    with pytest.raises(EpisodeConfigError, match="regression"):
        protonet(torch.randn(3, 1), torch.randn(3, 1), torch.randn(2, 1))
    with pytest.raises(EpisodeConfigError, match="label 1 has none"):
        protonet.adapt(torch.randn(3, 2), torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError, match=r"feature maps \[N, C, H, W\]"):
        RelationNet(embedding_net(), input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="at least 4x4, got 1x1"):
        RelationNet(Conv4(1, out_features=None).features[:-1])
    with pytest.raises(ValueError, match="embedding_dim"):
        SiameseNet(embedding_net())
    with pytest.raises(ValueError, match="embedding_dim"):
        MatchingNet(embedding_net(), fce=True)
    with pytest.raises(ValueError, match="distance"):
        ProtoNet(nn.Identity(), distance="manhattan")  # type: ignore[arg-type]
    assert default_relation_module((8, 19, 19))[3].in_features == 64 * 4 * 4


# -- learning ---------------------------------------------------------------------------------------------
GLYPH_LEARNERS: dict[str, Callable[[], MetaLearner]] = {
    "protonet": lambda: ProtoNet(Conv4(1, out_features=None, hidden_channels=32)),
    "matching": lambda: MatchingNet(Conv4(1, out_features=None, hidden_channels=32), temperature=0.1),
    "relation": lambda: RelationNet(relation_embedding(1, 32), relation_channels=32),
    "siamese": lambda: SiameseNet(Conv4(1, out_features=None, hidden_channels=32)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GLYPH_LEARNERS))
def test_learns_glyphs_well_above_chance(name):
    """5-way 1-shot on procedural glyphs, briefly trained: chance is 20%."""
    torch.manual_seed(0)
    dm = EpisodicDataModule(
        "glyphs", dataset_kwargs=dict(num_classes=200), ways=5, shots=1, queries=5,
        meta_batch_size=4, train_episodes=4 * 150, val_episodes=4, test_episodes=100,
    )  # fmt: skip
    model = GLYPH_LEARNERS[name]()
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(model, dm)
    (scores,) = t.test(model, dm)
    assert scores["test/acc"] > 0.5, scores


@pytest.mark.parametrize("name", TRAINED)
def test_bf16_mixed_precision_on_cpu(name):
    model = learner(name)
    t = trainer(fast_dev_run=2, precision="bf16-mixed")
    t.fit(model, datamodule())
    (scores,) = t.test(model, datamodule(), verbose=False)
    assert math.isfinite(scores["test/loss"]) and all(torch.isfinite(p).all() for p in model.parameters())
