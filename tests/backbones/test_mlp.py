"""Fully connected backbones: the generic MLP and the MAML presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_meta.backbones import MLP, OmniglotMLP, SinusoidMLP


def test_sinusoid_mlp_is_1_40_40_1():
    net = SinusoidMLP()
    assert net(torch.randn(10, 1)).shape == (10, 1)
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [40, 40, 1]
    assert sum(p.numel() for p in net.parameters()) == 1_761


@pytest.mark.parametrize("out_features", [5, None], ids=["head", "embedding"])
def test_omniglot_mlp_flattens_28x28_images(out_features):
    net = OmniglotMLP(out_features)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, out_features or 64)
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [256, 128, 64, 64, 5][
        : 5 if out_features else 4
    ]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 4


def test_mlp_on_84x84x3_images():
    net = MLP(84 * 84 * 3, (32,), 5)
    assert net(torch.randn(2, 3, 84, 84)).shape == (2, 5)
    assert MLP(84 * 84 * 3, (32, 16), None).embedding_dim == 16
