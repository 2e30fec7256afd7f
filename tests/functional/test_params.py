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
    with pytest.raises(ValueError, match="'task' or 'running', got 'batch'"):
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
