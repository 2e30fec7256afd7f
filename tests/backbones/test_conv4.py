"""Conv4: output shapes, embedding size and parameter counts."""

from __future__ import annotations

import pytest
import torch

from lit_meta.backbones import Conv4


@pytest.mark.parametrize(
    ("in_channels", "image_size", "embedding_dim"),
    [(1, 28, 64), (3, 84, 1600)],
    ids=["omniglot_28x28x1", "miniimagenet_84x84x3"],
)
@pytest.mark.parametrize("out_features", [5, None], ids=["head", "embedding"])
def test_output_shape(in_channels, image_size, embedding_dim, out_features):
    net = Conv4(in_channels=in_channels, out_features=out_features, image_size=image_size)
    out = net(torch.randn(2, in_channels, image_size, image_size))
    assert net.embedding_dim == embedding_dim
    assert out.shape == (2, out_features or embedding_dim)


def test_parameter_counts():
    # 4 convs (640 + 3 x 36,928) + 4 BatchNorms (4 x 128) + head (64 x 5 + 5)
    assert sum(p.numel() for p in Conv4(1, 5).parameters()) == 112_261
    # the MAML miniImageNet variant: 32 channels, 32 x 5 x 5 = 800 features
    assert sum(p.numel() for p in Conv4(3, 5, hidden_channels=32, image_size=84).parameters()) == 32_901


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match=r"image_size >= 16, got 8"):
        Conv4(image_size=8)


def test_pooling_before_relu_computes_the_papers_block_with_the_same_gradients():
    """Conv4 pools before its ReLU; the papers' order (ReLU, then pool) gives the same outputs and gradients."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = Conv4(in_channels=1, out_features=5).double()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)

    def papers_order(x: torch.Tensor) -> torch.Tensor:
        for block in net.features[:4]:
            conv, bn = block[0], block[1]
            x = F.max_pool2d(F.relu(bn(conv(x))), 2)
        return net.head(x.flatten(1))

    ours, reference = net(x), papers_order(x)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    g_ours = torch.autograd.grad(ours.square().sum(), list(net.parameters()))
    g_ref = torch.autograd.grad(papers_order(x).square().sum(), list(net.parameters()))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("image_size", "global_pool", "embedding_dim"),
    [(28, True, 64), (28, False, 64 * 2 * 2), (84, False, 64 * 6 * 6), (84, True, 64)],
)
def test_strided_blocks_round_up_and_the_global_pool_leaves_one_feature_per_channel(
    image_size, global_pool, embedding_dim
):
    net = Conv4(1, out_features=5, image_size=image_size, downsample="stride", global_pool=global_pool)
    assert net.embedding_dim == embedding_dim
    assert net(torch.randn(2, 1, image_size, image_size)).shape == (2, 5)
    assert net.init_config["init_args"]["downsample"] == "stride"  # checkpoints rebuild the same network


def test_the_strided_network_is_finn_et_al_s_omniglot_network():
    """Four [conv3x3 stride 2, BatchNorm, ReLU] blocks, the mean over the last 2x2 map, a linear head;
    the same parameters as the max-pooling Conv4 (only the strides differ)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = Conv4(1, 5, downsample="stride", global_pool=True).double()
    assert sum(p.numel() for p in net.parameters()) == 112_261
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    h = x
    for block in net.features[:4]:
        conv, bn = block[0], block[1]
        h = F.relu(bn(F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1)))
    assert h.shape[-2:] == (2, 2)
    torch.testing.assert_close(net(x), net.head(h.mean(dim=(2, 3))), rtol=0, atol=1e-12)


def test_an_unknown_downsampling_is_refused():
    with pytest.raises(ValueError, match="downsample must be 'max_pool' or 'stride', got 'avg'"):
        Conv4(downsample="avg")
