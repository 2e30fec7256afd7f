"""Plain-torch copies of lit-meta's networks, and the weight files both sides of ``side_by_side.py`` share.

A peer process imports no lit-meta, so it rebuilds lit-meta's networks from ``torch.nn``
layers in lit-meta's parameter and buffer order; :func:`load_state` then copies the
weights lit-meta wrote (:func:`save_state`) position by position, shapes checked.
Torch and the standard library only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def conv4(out_features: int | None) -> nn.Sequential:
    """lit-meta's ``Conv4(1, out_features)``: 4 x [conv3x3 64 pad 1, BatchNorm, max-pool 2, ReLU], flatten, head."""
    blocks = [
        nn.Sequential(nn.Conv2d(c, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(2), nn.ReLU())
        for c in (1, 64, 64, 64)
    ]
    head = [] if out_features is None else [nn.Linear(64, out_features)]
    return nn.Sequential(*blocks, nn.Flatten(), *head)


def conv_bn_relu(in_channels: int, padding: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, 64, 3, padding=padding), nn.BatchNorm2d(64), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


def relation_embedding() -> nn.Sequential:
    """lit-meta's ``relation_embedding()``: 28x28 images -> 64 x 5 x 5 feature maps (Sung et al., Figure 2)."""
    return nn.Sequential(
        conv_bn_relu(1, 0, True), conv_bn_relu(64, 0, True), conv_bn_relu(64, 1, False), conv_bn_relu(64, 1, False)
    )


def relation_module() -> nn.Sequential:
    """lit-meta's ``default_relation_module((128, 5, 5))``: two padded pooled conv blocks, FC 8, FC 1, sigmoid."""
    return nn.Sequential(
        conv_bn_relu(128, 1, True), conv_bn_relu(64, 1, True), nn.Flatten(),
        nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid(),
    )  # fmt: skip


def save_state(modules: list[nn.Module], path: Path) -> None:
    """The parameters and buffers of ``modules``, in order, as plain tensor lists."""
    torch.save(
        {
            "params": [p.detach().clone() for m in modules for p in m.parameters()],
            "buffers": [b.clone() for m in modules for b in m.buffers()],
        },
        path,
    )


@torch.no_grad()
def load_state(modules: list[nn.Module], path: Path) -> None:
    """Copies what :func:`save_state` wrote into ``modules``, position by position; shapes must agree."""
    state = torch.load(path)
    mine = {
        "params": [p for m in modules for p in m.parameters()],
        "buffers": [b for m in modules for b in m.buffers()],
    }
    for kind, targets in mine.items():
        if [t.shape for t in targets] != [s.shape for s in state[kind]]:
            raise RuntimeError(f"the {kind} of the two networks differ in shape: the weights cannot be mapped")
        for target, source in zip(targets, state[kind], strict=True):
            target.copy_(source)


def gradients(modules: list[nn.Module]) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for m in modules for p in m.parameters()]


@torch.no_grad()
def outputs_in_eval_mode(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``network(x)`` in eval mode (running statistics untouched), training mode restored."""
    training = network.training
    network.eval()
    try:
        return network(x)
    finally:
        network.train(training)
