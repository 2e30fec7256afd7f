"""Tiny networks and tasks for the inner-loop tests (float64 where gradients are checked)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.backbones import MLP, Conv4
from lit_meta.functional import ScoredTask, adapt_and_score, adaptable_parameters, functional_forward, task_buffers

Tasks = tuple[Tensor, Tensor, Tensor, Tensor]


def make_tasks(
    tasks: int,
    item_shape: tuple[int, ...],
    ways: int = 3,
    shots: int = 2,
    queries: int = 3,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> Tasks:
    """Random classification tasks: ``support_x [tasks, ways*shots, *item_shape]`` etc., labels class-major."""
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.randn(tasks, ways * shots, *item_shape, generator=generator, dtype=dtype)
    query_x = torch.randn(tasks, ways * queries, *item_shape, generator=generator, dtype=dtype)
    support_y = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    query_y = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return support_x, support_y, query_x, query_y


def run_task(net: nn.Module, task: Tasks, params: dict[str, Tensor] | None = None, **settings) -> ScoredTask:
    """``adapt_and_score`` on one unbatched task with cross-entropy, per-task BatchNorm statistics and,
    unless ``params`` are given, the network's own parameters; ``settings`` are its keyword arguments."""
    start = adaptable_parameters(net) if params is None else params
    return adapt_and_score(net, start, task_buffers(net), F.cross_entropy, *task, **settings)


def plain_gradients(net: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
    """Gradient of the cross-entropy on ``(x, y)`` at ``params`` held fixed (no meta-learning)."""
    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    loss = F.cross_entropy(functional_forward(net, leaves, task_buffers(net), x), y)
    return list(torch.autograd.grad(loss, list(leaves.values())))


def tiny_mlp(dtype: torch.dtype = torch.float64) -> nn.Module:
    """4 -> 5 -> 3."""
    torch.manual_seed(0)
    return MLP(4, (5,), 3).to(dtype)


def tiny_conv_bn(dtype: torch.dtype = torch.float64) -> nn.Module:
    """One ``conv -> BatchNorm -> ReLU -> maxpool`` block and a linear head on 1x4x4 images (42 parameters)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).to(dtype)


def tiny_conv4(dtype: torch.dtype = torch.float64) -> Conv4:
    """Conv4 with 4 channels on 1x16x16 images, 3 ways."""
    torch.manual_seed(0)
    return Conv4(in_channels=1, out_features=3, hidden_channels=4, image_size=16).to(dtype)


@pytest.fixture(params=["mlp", "conv_bn"])
def tiny_net_and_tasks(request: pytest.FixtureRequest) -> tuple[nn.Module, Tasks]:
    """A tiny float64 network and two matching tasks."""
    if request.param == "mlp":
        return tiny_mlp(), make_tasks(2, (4,))
    return tiny_conv_bn(), make_tasks(2, (1, 4, 4))
