"""KochSiameseNet: output shape, the paper's parameter count, its initialisation, the smallest image."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_meta.backbones import KochSiameseNet
from lit_meta.backbones.config import build_from_config


def test_embeds_105x105_images_in_4096_sigmoid_units():
    net = KochSiameseNet()
    out = net(torch.rand(2, 1, 105, 105))
    assert net.embedding_dim == 4096 and out.shape == (2, 4096)
    assert ((out >= 0) & (out <= 1)).all()  # the paper's init saturates many units (exact 0 or 1 in float32)


def test_parameter_count_of_the_papers_network():
    # convs 64@10x10 (6,464), 128@7x7 (401,536), 128@4x4 (262,272), 256@4x4 (524,544);
    # linear 256 x 6 x 6 = 9,216 -> 4,096 (37,748,736 + 4,096)
    assert sum(p.numel() for p in KochSiameseNet().parameters()) == 38_947_648


def test_paper_initialisation_statistics():
    torch.manual_seed(0)
    net = KochSiameseNet().requires_grad_(False)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    (linear,) = [m for m in net.modules() if isinstance(m, nn.Linear)]
    conv_weights = torch.cat([m.weight.flatten() for m in convs])
    biases = torch.cat([m.bias for m in [*convs, linear]])
    assert abs(conv_weights.mean()) < 1e-3 and conv_weights.std() == pytest.approx(1e-2, rel=0.02)
    assert biases.mean() == pytest.approx(0.5, abs=1e-3) and biases.std() == pytest.approx(1e-2, rel=0.1)
    assert abs(linear.weight.mean()) < 1e-3 and linear.weight.std() == pytest.approx(0.2, rel=0.01)


def test_pytorch_initialisation_on_request():
    torch.manual_seed(0)
    (linear,) = [m for m in KochSiameseNet(paper_init=False).modules() if isinstance(m, nn.Linear)]
    assert linear.weight.abs().max() <= 9216**-0.5  # PyTorch's uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))


def test_smallest_image_and_too_small_images():
    assert KochSiameseNet(image_size=65, embedding_dim=8)(torch.rand(1, 1, 65, 65)).shape == (1, 8)
    with pytest.raises(ValueError, match=r"image_size >= 65 .*got 64"):
        KochSiameseNet(image_size=64)


def test_rebuilds_from_its_recorded_config():
    net = KochSiameseNet(image_size=70, embedding_dim=16, paper_init=False)
    assert net.init_config["init_args"] == {
        "in_channels": 1,
        "image_size": 70,
        "embedding_dim": 16,
        "paper_init": False,
    }
    assert build_from_config(net.init_config).embedding_dim == 16
