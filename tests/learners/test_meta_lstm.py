"""MetaLSTM as a LightningModule: its execution paths agree, it refuses the options it fixes,
adapts without touching its weights, and learns few-shot tasks."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lit_meta.backbones import Conv4
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.learners.meta_lstm import MetaLSTM
from tests.cli.test_configs import glyph_root

from .test_gradient_learners import a_batch, small_net, trainer

__all__ = ["glyph_root"]  # the session's glyph cache, a fixture shared with tests/cli/test_configs.py


def meta_lstm(dtype: torch.dtype = torch.float32, **kwargs) -> MetaLSTM:
    learner = MetaLSTM(small_net(dtype=dtype), inner_steps=3, **kwargs)
    torch.manual_seed(0)
    with torch.no_grad():  # gates that depend on their inputs, so every LSTM weight matters
        for weight in learner.meta_learner.parameters():
            weight.add_(torch.randn_like(weight) * 0.3)
    return learner.to(dtype)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_the_vmap_path_gives_the_loops_loss_and_meta_gradient(dtype, rtol):
    batch = a_batch(dtype)
    results = {}
    for execution in ("loop", "vmap"):
        learner = meta_lstm(dtype, execution=execution)
        loss = learner.meta_loss(batch)
        names, params = zip(*learner.named_parameters(), strict=True)
        results[execution] = (loss.detach(), dict(zip(names, torch.autograd.grad(loss, params), strict=True)))
    torch.testing.assert_close(results["loop"][0], results["vmap"][0], rtol=rtol, atol=0)
    loop_grads, vmap_grads = results["loop"][1], results["vmap"][1]
    scale = max(float(g.abs().max()) for g in loop_grads.values())
    for name, grad in loop_grads.items():
        torch.testing.assert_close(vmap_grads[name], grad, rtol=rtol, atol=rtol * scale, msg=name)
    assert all(bool(g.abs().sum() > 0) for n, g in loop_grads.items() if n.startswith("meta_learner."))
    assert bool(loop_grads["backbone.0.weight"].abs().sum() > 0)


def test_adapt_learns_without_an_outer_graph_and_leaves_every_weight_alone():
    learner = meta_lstm()
    episode = a_batch()[0]
    before = {n: p.detach().clone() for n, p in learner.state_dict().items()}
    adapted = learner.adapt(episode.support_x, episode.support_y)
    assert all(not p.requires_grad for p in adapted.params.values())
    assert not torch.equal(adapted.params["5.weight"], before["backbone.5.weight"])
    assert not adapted(episode.query_x).requires_grad
    for name, value in learner.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_with_support_running_statistics_a_querys_logits_do_not_depend_on_the_other_queries():
    episode = a_batch()[0]
    alone = {}
    for eval_batch_norm in ("support_running", "query_batch"):
        adapted = meta_lstm(eval_batch_norm=eval_batch_norm).adapt(episode.support_x, episode.support_y)
        alone[eval_batch_norm] = (adapted(episode.query_x)[:1], adapted(episode.query_x[:1]))
    torch.testing.assert_close(*alone["support_running"])
    assert not torch.allclose(*alone["query_batch"], atol=1e-3)


def test_the_running_statistics_are_the_momentum_weighted_support_statistics_of_the_inner_loop():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(256, 3))
    learner = MetaLSTM(backbone, inner_steps=3, batch_norm_momentum=0.7).double()
    with torch.no_grad():  # the module's own statistics, which the episode must not start from
        backbone[1].running_mean.fill_(5.0)
        backbone[1].running_var.fill_(9.0)
    episode = a_batch(torch.float64)[0]
    seen: list[torch.Tensor] = []
    hook = backbone[1].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    try:
        adapted = learner.adapt(episode.support_x, episode.support_y)
    finally:
        hook.remove()

    assert len(seen) == 3 and all(len(features) == len(episode.support_x) for features in seen)
    mean, var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for features in seen:  # running = (1 - momentum) * running + momentum * batch, from mean 0 and variance 1
        mean = 0.3 * mean + 0.7 * features.mean(dim=[0, 2, 3])
        var = 0.3 * var + 0.7 * features.var(dim=[0, 2, 3], correction=1)
    torch.testing.assert_close(adapted.buffers["1.running_mean"], mean)
    torch.testing.assert_close(adapted.buffers["1.running_var"], var)
    assert int(adapted.buffers["1.num_batches_tracked"]) == 3

    # the query set is normalised with them
    features = nn.functional.conv2d(episode.query_x, adapted.params["0.weight"], adapted.params["0.bias"], padding=1)
    normalised = nn.functional.batch_norm(
        features, mean, var, adapted.params["1.weight"], adapted.params["1.bias"], training=False
    )
    expected = nn.functional.linear(normalised.flatten(1), adapted.params["3.weight"], adapted.params["3.bias"])
    torch.testing.assert_close(adapted(episode.query_x), expected)


@pytest.mark.parametrize("training", [False, True])
def test_adapt_leaves_the_backbones_buffers_and_mode_alone(training):
    learner = meta_lstm()
    learner.backbone.train(training)
    with torch.no_grad():
        learner.backbone[1].running_mean.normal_()
    before = {n: b.clone() for n, b in learner.backbone.named_buffers()}
    episode = a_batch()[0]
    adapted = learner.adapt(episode.support_x, episode.support_y)
    adapted(episode.query_x)
    assert all(m.training is training for m in learner.backbone.modules())
    for name, buffer in learner.backbone.named_buffers():
        assert torch.equal(buffer, before[name]), name
        assert adapted.buffers[name] is not buffer, name


def test_meta_training_normalises_the_query_set_with_its_own_statistics_whatever_eval_batch_norm():
    batch = a_batch()
    losses = [meta_lstm(eval_batch_norm=choice).meta_loss(batch) for choice in ("support_running", "query_batch")]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"inner_lr": 0.1}, "MetaLSTM takes no inner_lr"),
        ({"inner_optimizer": "adam"}, "MetaLSTM takes no inner_optimizer"),
        ({"first_order": False}, "MetaLSTM takes only first_order=True, got False"),
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"eval_batch_norm": "running"}, "eval_batch_norm='running': use 'support_running' or 'query_batch'"),
        ({"batch_norm_momentum": 0.0}, r"batch_norm_momentum=0.0: use a value in \(0, 1\]"),
    ],
)
def test_options_the_meta_learner_fixes_are_refused_with_the_fix(option, message):
    with pytest.raises(ValueError, match=message):
        MetaLSTM(small_net(), **option)


@pytest.mark.slow  # 20-30 s on 2 cores; the contract test runs this learner by default
def test_meta_lstm_meta_trained_briefly_on_glyphs_beats_chance_by_a_wide_margin(glyph_root):
    """40 steps of 4 tasks, 5 learner updates each, the authors' initialisation and
    clipping (about 20-30 s on one thread); chance is 20%."""
    L.seed_everything(0, verbose=False)
    dm = EpisodicDataModule(
        "glyphs", root=str(glyph_root), ways=5, shots=1, queries=5, eval_queries=15, meta_batch_size=4,
        train_episodes=4 * 40, test_episodes=50,
    )  # fmt: skip
    learner = MetaLSTM(Conv4(1, 5, hidden_channels=16), inner_steps=5, meta_lr=1e-2, execution="loop")
    t = trainer(max_epochs=1, limit_val_batches=0, gradient_clip_val=0.25)
    t.fit(learner, dm)
    (scores,) = t.test(learner, dm, verbose=False)
    assert scores["test/acc"] - scores["test/acc_ci95"] > 0.4, scores
