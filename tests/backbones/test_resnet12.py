"""ResNet-12: output shapes, embedding size and parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_meta.backbones import ResNet12


def test_default_widths_have_the_published_size():
    net = ResNet12()
    assert net.embedding_dim == 640
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(12.4e6, rel=0.01)
    assert isinstance(net.head, nn.Identity)


def test_output_shape_on_84x84x3():
    net = ResNet12(out_features=5).eval()
    assert net(torch.randn(2, 3, 84, 84)).shape == (2, 5)


@pytest.mark.parametrize(
    ("in_channels", "image_size"), [(1, 28), (3, 84)], ids=["omniglot_28x28x1", "miniimagenet_84x84x3"]
)
@pytest.mark.parametrize("out_features", [5, None], ids=["head", "embedding"])
def test_output_shape_of_narrow_networks(in_channels, image_size, out_features):
    net = ResNet12(in_channels, out_features, channels=(8, 8, 16, 16), drop_rate=0.1)
    assert net(torch.randn(2, in_channels, image_size, image_size)).shape == (2, out_features or 16)


def test_dropout_is_off_in_eval_mode():
    net = ResNet12(1, 5, channels=(4, 4, 4, 4), drop_rate=0.5).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(net(x), net(x))


def test_four_widths_are_required():
    with pytest.raises(ValueError, match=r"four channel widths, got \[64, 128\]"):
        ResNet12(channels=(64, 128))
