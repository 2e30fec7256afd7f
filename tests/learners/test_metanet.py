"""MetaNet (Munkhdalai & Yu, 2017): fast weights from gradients, layer augmentation, functional networks, learning."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_meta.backbones import Conv4
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners.metanet import MetaNet, preprocess_gradients

from ..conftest import TinyImages

WAYS = 3


def mlp(outputs: int = WAYS) -> nn.Module:
    """1x4x4 items -> ``outputs`` scores: two hidden layers of 6, no BatchNorm."""
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, outputs))


def conv_net() -> nn.Module:
    """1x8x8 items -> WAYS scores: a conv layer, max-pool and a linear head, no BatchNorm."""
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, WAYS))


def random_generators(model: MetaNet, std: float = 0.3) -> MetaNet:
    """Gives m and d non-zero outputs (their output layers start at zero)."""
    for generator in [*model.example_weight_generators.values(), *model.task_weight_generators.values()]:
        nn.init.normal_(generator.out.weight, std=std)
        nn.init.normal_(generator.out.bias, std=std)
    return model


def task(item_shape: tuple[int, ...], shots: int = 2, queries: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.randn(WAYS * shots, *item_shape, generator=generator)
    query_x = torch.randn(queries, *item_shape, generator=generator)
    return support_x, torch.arange(WAYS).repeat_interleave(shots), query_x


def small_metanet(backbone: nn.Module) -> MetaNet:
    torch.manual_seed(0)
    return random_generators(MetaNet(backbone))


def test_gradient_preprocessing_by_hand() -> None:
    """(log|g| / p, sign g) for |g| >= e^-p, else (-1, e^p g), with p = 7."""
    g = torch.tensor([1.0, -math.exp(-3.0), 1e-5, 0.0])
    expected = torch.tensor([[0.0, 1.0], [-3.0 / 7.0, -1.0], [-1.0, 1e-5 * math.exp(7.0)], [-1.0, 0.0]])
    torch.testing.assert_close(preprocess_gradients(g, p=7.0), expected)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_layer_augmentation_matches_a_two_branch_network_written_out(network: str) -> None:
    """Each query's fast weights are the softmax(cosine)-weighted sum of the memory's (Eqs. 8-9); every hidden
    layer's output is relu(slow transform) + relu(fast transform), each stream max-pooled on its own before the
    sum, the output layer's the sum of the two transforms (Section 3.3); the keys are the representation's
    augmented input to its output layer."""
    model = small_metanet(mlp() if network == "mlp" else conv_net()).eval()
    support_x, support_y, query_x = task((1, 4, 4) if network == "mlp" else (1, 8, 8))
    memory = model.memorize(support_x, support_y)
    with torch.no_grad():
        logits = model.classify(memory, query_x)
        keys = model.represent(query_x, memory.task_weights)
    u, b, q_star, m = model.representation, model.backbone, memory.task_weights, memory.example_weights

    def fast(weights: dict[str, torch.Tensor], name: str, mixing: torch.Tensor) -> torch.Tensor:
        return torch.einsum("s,s...->...", mixing, weights[name])

    with torch.no_grad():
        if network == "mlp":
            flat = query_x.flatten(1)
            h = F.relu(F.linear(flat, u[1].weight, u[1].bias)) + F.relu(
                F.linear(flat, q_star["1.weight"][0], q_star["1.bias"][0])
            )
            expected_keys = F.relu(u[3](h)) + F.relu(F.linear(h, q_star["3.weight"][0], q_star["3.bias"][0]))
        else:
            slow = F.max_pool2d(F.relu(u[0](query_x)), 2)
            fast_stream = F.relu(F.conv2d(query_x, q_star["0.weight"][0], q_star["0.bias"][0], padding=1))
            expected_keys = (slow + F.max_pool2d(fast_stream, 2)).flatten(1)
        torch.testing.assert_close(keys, expected_keys)
        attention = (F.normalize(keys, dim=-1) @ F.normalize(memory.keys, dim=-1).T).softmax(-1)
        for q, a in enumerate(attention):
            x = query_x[q : q + 1]
            if network == "mlp":
                x = x.flatten(1)
                h = F.relu(b[1](x)) + F.relu(F.linear(x, fast(m, "1.weight", a), fast(m, "1.bias", a)))
                h = F.relu(b[3](h)) + F.relu(F.linear(h, fast(m, "3.weight", a), fast(m, "3.bias", a)))
                expected = b[5](h) + F.linear(h, fast(m, "5.weight", a), fast(m, "5.bias", a))
            else:
                fast_stream = F.relu(F.conv2d(x, fast(m, "0.weight", a), fast(m, "0.bias", a), padding=1))
                h = (F.max_pool2d(F.relu(b[0](x)), 2) + F.max_pool2d(fast_stream, 2)).flatten(1)
                expected = b[4](h) + F.linear(h, fast(m, "4.weight", a), fast(m, "4.bias", a))
            torch.testing.assert_close(logits[q : q + 1], expected)


def test_fast_weights_depend_on_the_support_set() -> None:
    """Relabelling one support example changes the example- and task-level fast weights and the query outputs."""
    model = small_metanet(mlp()).eval()
    support_x, support_y, query_x = task((1, 4, 4))
    relabelled = support_y.clone()
    relabelled[0] = (relabelled[0] + 1) % WAYS
    memory, other = model.memorize(support_x, support_y), model.memorize(support_x, relabelled)
    for name, weights in memory.example_weights.items():
        assert not torch.allclose(weights[0], other.example_weights[name][0]), name
    assert any(not torch.allclose(w, other.task_weights[n]) for n, w in memory.task_weights.items())
    outputs = model.adapt(support_x, support_y)(query_x)
    assert not torch.allclose(outputs, model.adapt(support_x, relabelled)(query_x))


@pytest.mark.parametrize("network", ["mlp", "conv4"])
def test_generators_with_zero_outputs_leave_the_slow_network(network: str) -> None:
    """With m's and d's output layers zeroed, every fast weight is 0 and the queries' outputs are the
    backbone's own forward pass with its slow weights (BatchNorm, in Conv4, on its running statistics)."""
    backbone = mlp() if network == "mlp" else Conv4(1, out_features=WAYS, hidden_channels=4, image_size=16)
    model = small_metanet(backbone).eval()
    for generator in [*model.example_weight_generators.values(), *model.task_weight_generators.values()]:
        nn.init.zeros_(generator.out.weight)
        nn.init.zeros_(generator.out.bias)
    support_x, support_y, query_x = task((1, 4, 4) if network == "mlp" else (1, 16, 16))
    memory = model.memorize(support_x, support_y)
    for weights in [*memory.example_weights.values(), *memory.task_weights.values()]:
        assert not weights.any()
    with torch.no_grad():
        torch.testing.assert_close(model.adapt(support_x, support_y)(query_x), backbone(query_x), rtol=0, atol=0)


def test_adaptation_never_changes_the_networks_and_meta_training_only_through_the_optimiser() -> None:
    """adapt (in evaluation and in training mode) leaves every weight and BatchNorm statistic as it was;
    a meta-training forward and backward leave the weights as they were, with gradients for the slow weights."""
    model = small_metanet(Conv4(1, out_features=WAYS, hidden_channels=4, image_size=16))
    networks = {"backbone": model.backbone, "representation": model.representation}
    before = {key: {n: t.clone() for n, t in net.state_dict().items()} for key, net in networks.items()}
    support_x, support_y, query_x = task((1, 16, 16))
    for mode in (model.eval, model.train):
        mode()
        model.adapt(support_x, support_y)(query_x).sum().backward()
        for key, net in networks.items():
            for name, value in net.state_dict().items():
                assert torch.equal(value, before[key][name]), (mode.__name__, key, name)
    model.zero_grad()
    batch = EpisodeBatch(
        support_x[None], support_y[None], query_x[None], torch.tensor([[0, 1, 2, 0]]), torch.arange(WAYS)[None]
    )
    model.meta_loss(batch).backward()
    for key, net in networks.items():
        for name, value in net.named_parameters():
            assert torch.equal(value, before[key][name]), (key, name)
    assert all(p.grad is not None and p.grad.any() for p in model.backbone.parameters())


def test_adapt_works_under_inference_mode() -> None:
    """As in Lightning's validation: the support-set gradients are taken inside torch.inference_mode()."""
    model = small_metanet(Conv4(1, out_features=WAYS, hidden_channels=4, image_size=16)).eval()
    support_x, support_y, query_x = task((1, 16, 16))
    expected = model.adapt(support_x, support_y)(query_x)
    with torch.inference_mode():
        outputs = model.adapt(support_x, support_y)(query_x)
    assert outputs.shape == (4, WAYS) and torch.isfinite(outputs).all()
    torch.testing.assert_close(outputs, expected)


def test_meta_loss_is_the_mean_query_cross_entropy_of_the_adapted_task_models() -> None:
    """Without BatchNorm, training and evaluation compute the same function: the meta-loss of a meta-batch is
    the mean over its tasks of the cross-entropy of adapt(support)(query)."""
    model = small_metanet(mlp())
    tasks = [task((1, 4, 4), seed=seed) for seed in range(3)]
    query_y = torch.tensor([0, 1, 2, 1])
    batch = EpisodeBatch(
        torch.stack([t[0] for t in tasks]),
        torch.stack([t[1] for t in tasks]),
        torch.stack([t[2] for t in tasks]),
        query_y.expand(3, -1),
        torch.arange(WAYS).expand(3, -1),
    )
    expected = torch.stack([F.cross_entropy(model.adapt(sx, sy)(qx), query_y) for sx, sy, qx in tasks]).mean()
    torch.testing.assert_close(model.meta_loss(batch), expected)


def test_bf16_mixed_precision_on_cpu() -> None:
    """The generators run in float32 under autocast (oneDNN has no bfloat16 LSTM); the rest in bfloat16."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, WAYS)
    )
    model = MetaNet(backbone)
    dm = EpisodicDataModule(TinyImages(), ways=WAYS, shots=2, queries=2, meta_batch_size=2, test_episodes=4)
    trainer = L.Trainer(fast_dev_run=2, precision="bf16-mixed", logger=False, enable_progress_bar=False)
    trainer.fit(model, dm)
    (scores,) = trainer.test(model, dm, verbose=False)
    assert math.isfinite(scores["test/loss"]) and all(torch.isfinite(p).all() for p in model.parameters())


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="LayerNorm with parameters"):
        MetaNet(nn.Sequential(nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, WAYS)))
    with pytest.raises(ValueError, match="affine=False"):
        MetaNet(nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6, affine=False), nn.Linear(6, WAYS)))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        MetaNet(nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten()))
    with pytest.raises(ValueError, match=r"representation's last nn\.Linear has 4 outputs"):
        MetaNet(mlp(), representation=mlp(outputs=4))
    backbone = mlp()
    with pytest.raises(ValueError, match="representation is the backbone itself"):
        MetaNet(backbone, representation=backbone)
    model = MetaNet(backbone)
    assert not any(p.requires_grad for p in model.representation[-1].parameters())  # no loss reaches u's output layer
    support_x, support_y, _ = task((1, 4, 4))
    with pytest.raises(EpisodeConfigError, match="regression"):
        model.adapt(support_x, support_y.float())
    with pytest.raises(EpisodeConfigError, match="3 outputs but the support set has 5 classes"):
        model.adapt(support_x, support_y + 2)


# -- learning ---------------------------------------------------------------------------------------------
def glyph_test_accuracy(steps: int, root: Path) -> float:
    """5-way 1-shot on procedural glyphs (200 classes), one task of 5 queries per class per step, Adam 1e-3,
    a Conv4 of 8 channels; the mean test accuracy over 100 episodes."""
    torch.manual_seed(0)
    dm = EpisodicDataModule(
        "glyphs", root=str(root), dataset_kwargs=dict(num_classes=200), ways=5, shots=1, queries=5,
        meta_batch_size=1, train_episodes=steps, val_episodes=4, test_episodes=100,
    )  # fmt: skip
    model = MetaNet(Conv4(1, out_features=5, hidden_channels=8))
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, **settings)
    trainer.fit(model, dm)
    (scores,) = trainer.test(model, dm, verbose=False)
    return scores["test/acc"]


@pytest.mark.slow  # 20-30 s on 2 cores; the contract test runs this learner by default
def test_learns_glyphs_above_chance_in_100_steps(tmp_path: Path) -> None:
    """Chance is 20%; measured 45.0% after 100 steps (~17 s on 2 CPU cores): asserted 35%."""
    assert glyph_test_accuracy(100, tmp_path) > 0.35


@pytest.mark.slow
def test_learns_glyphs_well_above_chance_in_500_steps(tmp_path: Path) -> None:
    """Chance is 20%; measured 65.5% after 500 steps (~60 s on 2 CPU cores): asserted 50%."""
    assert glyph_test_accuracy(500, tmp_path) > 0.5
