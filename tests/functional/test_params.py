"""Parameter selection, task buffers and the functional forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_meta.backbones import MLP, Conv4, OmniglotMLP, ResNet12
from lit_meta.functional import adaptable_parameters, functional_forward, head_parameter_names, task_buffers
from tests.functional.conftest import tiny_conv4


@pytest.mark.parametrize(
    "module",
    [
        Conv4(hidden_channels=4),
        OmniglotMLP(),
        ResNet12(out_features=5, channels=(2, 2, 2, 2)),
        nn.Linear(2, 3),
    ],
    ids=["conv4", "omniglot_mlp", "resnet12", "bare_linear"],
)
def test_the_head_is_the_last_linear_layer(module):
    names = head_parameter_names(module)
    assert names[0].endswith("weight")
    assert names[-1].endswith("bias")
    params = dict(module.named_parameters())
    last_linear = next(m for m in reversed(list(module.modules())) if isinstance(m, nn.Linear))
    assert [params[n] for n in names] == list(last_linear.parameters())


def test_a_network_without_linear_layer_has_no_head():
    with pytest.raises(ValueError, match=r"Conv4 has no nn\.Linear layer"):
        head_parameter_names(Conv4(hidden_channels=4, out_features=None))


def test_adaptable_parameters_are_the_modules_own_tensors_selected_by_name():
    net = MLP(4, (5, 6), 3)
    everything = adaptable_parameters(net)
    assert list(everything) == [n for n, _ in net.named_parameters()]
    assert all(everything[n] is p for n, p in net.named_parameters())
    assert list(adaptable_parameters(net, ["head", "features.1.bias"])) == [
        "features.1.bias",
        "head.weight",
        "head.bias",
    ]
    assert list(adaptable_parameters(net, lambda name: name.endswith("bias"))) == [
        "features.1.bias",
        "features.3.bias",
        "head.bias",
    ]
    with pytest.raises(ValueError, match="\\['heads'\\] name no parameter"):
        adaptable_parameters(net, ["heads"])


def test_task_buffers_hide_batch_norm_statistics_only():
    net = nn.Sequential(tiny_conv4(), nn.Module())
    net[1].register_buffer("scale", torch.ones(1))
    buffers = task_buffers(net)
    assert buffers["1.scale"] is net[1].scale
    norm_buffers = [n for n in buffers if n != "1.scale"]
    assert len(norm_buffers) == 4 * 3
    assert all(buffers[n] is None for n in norm_buffers)
    assert all(task_buffers(net, "running")[n] is b for n, b in net.named_buffers())
    with pytest.raises(ValueError, match="'task', 'running' or 'fresh', got 'batch'"):
        task_buffers(net, "batch")  # type: ignore[arg-type]


@pytest.mark.parametrize("training", [False, True])
def test_task_buffers_normalise_with_batch_statistics_and_keep_running_ones(training):
    net = tiny_conv4()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    state = {n: t.clone() for n, t in net.state_dict().items()}
    x = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    net.train(training)
    out = functional_forward(net, adaptable_parameters(net), task_buffers(net), x)
    assert all(torch.equal(t, state[n]) for n, t in net.state_dict().items())

    net.train()
    batch_statistics = net(x)
    net.load_state_dict(state)
    net.eval()
    running_statistics = net(x)
    torch.testing.assert_close(out, batch_statistics, rtol=0, atol=0)
    assert not torch.allclose(out, running_statistics)


def test_fresh_buffers_are_new_running_statistics_for_batch_norm_only():
    net = nn.Sequential(tiny_conv4(), nn.Module())
    net[1].register_buffer("scale", torch.ones(1))
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.num_batches_tracked.fill_(7)
    own = dict(net.named_buffers())
    buffers = task_buffers(net, "fresh")
    assert list(buffers) == list(own)
    assert buffers["1.scale"] is net[1].scale
    for name, buffer in buffers.items():
        if name == "1.scale":
            continue
        assert buffer is not own[name] and buffer.dtype == own[name].dtype, name
        expected = 1 if name.endswith("running_var") else 0
        assert torch.equal(buffer, torch.full_like(own[name], expected)), name


@pytest.mark.parametrize("training", [False, True])
def test_forced_train_batch_norm_updates_the_given_running_statistics_whatever_the_mode(training):
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=0.5)).double().train(training)
    state = {n: t.clone() for n, t in net.state_dict().items()}
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    buffers = task_buffers(net, "fresh")
    out = functional_forward(net, {}, buffers, x, batch_norm="train", batch_norm_momentum=0.25)

    features = net[0](x).detach()
    var, mean = torch.var_mean(features, dim=[0, 2, 3], correction=0)
    expected = (features - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    expected = expected * net[1].weight[:, None, None] + net[1].bias[:, None, None]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(buffers["1.running_mean"], 0.25 * mean)
    unbiased = features.var(dim=[0, 2, 3], correction=1)
    torch.testing.assert_close(buffers["1.running_var"], 0.75 + 0.25 * unbiased)
    assert int(buffers["1.num_batches_tracked"]) == 1
    assert net.training is training and net[1].training is training
    assert all(torch.equal(t, state[n]) for n, t in net.state_dict().items())


@pytest.mark.parametrize("training", [False, True])
def test_forced_eval_batch_norm_normalises_with_the_given_running_statistics_whatever_the_mode(training):
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).double()
    buffers = task_buffers(net, "fresh")
    buffers["1.running_mean"].normal_()
    buffers["1.running_var"].uniform_(0.5, 2.0)
    given = {n: t.clone() for n, t in buffers.items()}
    state = {n: t.clone() for n, t in net.state_dict().items()}
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    out = functional_forward(net.train(training), {}, buffers, x, batch_norm="eval")
    assert net.training is training
    assert all(torch.equal(t, state[n]) for n, t in net.state_dict().items())
    assert all(torch.equal(t, given[n]) for n, t in buffers.items())

    net.load_state_dict(given, strict=False)
    torch.testing.assert_close(out, net.eval()(x), rtol=0, atol=0)
    # without running statistics a layer keeps the batch's, as an eval-mode layer does
    batch = functional_forward(net, {}, task_buffers(net), x, batch_norm="eval")
    torch.testing.assert_close(batch, net.train()(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_norm": "train"}, "batch_norm_momentum=None with batch_norm='train'"),
        ({"batch_norm": "eval", "batch_norm_momentum": 0.1}, "batch_norm_momentum=0.1 with batch_norm='eval'"),
        ({"batch_norm_momentum": 0.1}, "batch_norm_momentum=0.1 with batch_norm='module'"),
        ({"batch_norm": "train", "batch_norm_momentum": 1.5}, r"batch_norm_momentum=1.5: use a value in \(0, 1\]"),
        ({"batch_norm": "running"}, "batch_norm must be 'module', 'train' or 'eval', got 'running'"),
    ],
)
def test_forced_batch_norm_refuses_inconsistent_options(options, message):
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=message):
        functional_forward(net, {}, task_buffers(net, "fresh"), torch.randn(2, 1, 5, 5), **options)
