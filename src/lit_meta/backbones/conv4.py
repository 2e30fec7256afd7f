"""Conv-4, the four-block convolutional network of the few-shot literature."""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from lit_meta.backbones.config import RecordsConfig

Downsample = Literal["max_pool", "stride"]


def conv_block(in_channels: int, out_channels: int, downsample: Downsample = "max_pool") -> nn.Sequential:
    """One block that halves height and width.

    ``"max_pool"``: ``conv3x3 (padding 1) -> BatchNorm2d -> maxpool 2 -> ReLU`` (flooring: 7 -> 3).
    The same function as the papers' ``... -> ReLU -> maxpool``: ReLU is monotone, so it
    commutes with max-pooling, and the gradients agree too (a window's gradient goes to
    its maximum either way). Pooling first runs ReLU on a quarter of the elements; on a
    2-core CPU this makes a first-order MAML step ~10% faster (``benchmarks/maml_profile.py``).

    ``"stride"``: ``conv3x3 (stride 2, padding 1) -> BatchNorm2d -> ReLU`` (rounding up: 7 -> 4),
    the block of Finn et al.'s code for Omniglot ("strided convolutions instead of max-pooling").
    Their TensorFlow ``'SAME'`` padding puts an even input's one padding row and column at the
    bottom and right; here they are on all four sides, which shifts the sampled grid by a pixel.
    """
    if downsample == "stride":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
    if downsample != "max_pool":
        raise ValueError(f"downsample must be 'max_pool' or 'stride', got {downsample!r}")
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )


class Conv4(RecordsConfig, nn.Module):
    """Four blocks that halve the image (conv3x3, BatchNorm, ReLU, max-pool 2 or a stride of 2), then a linear head.

    The embedding network of Matching Networks (Vinyals et al., 2016, "Matching
    Networks for One Shot Learning", NeurIPS) and the classifier of MAML (Finn,
    Abbeel & Levine, 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks", ICML), which uses ``hidden_channels=32`` on miniImageNet to
    limit overfitting and, on Omniglot, ``downsample="stride", global_pool=True``.
    With max-pooling each block halves the image flooring, so 28x28 inputs give
    ``64 x 1 x 1 = 64`` features and 84x84 inputs ``64 x 5 x 5 = 1600``; strided blocks
    round up (28 -> 14 -> 7 -> 4 -> 2).

    Args:
        in_channels: channels of the input images (1 for Omniglot, 3 for RGB).
        out_features: outputs of the linear head (the number of ways), or ``None``
            for no head: the network then returns the flattened embedding, as
            metric learners (Prototypical, Matching Networks) need.
        hidden_channels: channels of every convolution.
        image_size: height and width of the (square) input, used to size the head.
        downsample: how each block halves the image: ``"max_pool"`` (Vinyals et al.; the
            default) or ``"stride"``, a stride-2 convolution (Finn et al.'s Omniglot network,
            Section 5.2: "strided convolutions instead of max-pooling"); see :func:`conv_block`.
        global_pool: average the last feature map over height and width before the head, so the
            embedding has ``hidden_channels`` features whatever the image size (Finn et al.'s
            code for Omniglot, where the strided blocks leave ``2 x 2``). ``False`` flattens it.

    Attributes:
        embedding_dim: size of the flattened embedding that feeds the head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int | None = 5,
        hidden_channels: int = 64,
        image_size: int = 28,
        downsample: Downsample = "max_pool",
        global_pool: bool = False,
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"Conv4 halves the image four times and needs image_size >= 16, got {image_size}")
        self.features = nn.Sequential(
            conv_block(in_channels, hidden_channels, downsample),
            *(conv_block(hidden_channels, hidden_channels, downsample) for _ in range(3)),
            *([nn.AdaptiveAvgPool2d(1)] if global_pool else []),
            nn.Flatten(),
        )
        # Four halvings, flooring (max-pooling) or rounding up (stride 2): the image side over 16, floored or ceiled.
        side = 1 if global_pool else image_size // 16 if downsample == "max_pool" else math.ceil(image_size / 16)
        self.embedding_dim = hidden_channels * side * side
        self.out_features = out_features
        self.head: nn.Module = nn.Identity() if out_features is None else nn.Linear(self.embedding_dim, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, in_channels, image_size, image_size] -> [batch, out_features or embedding_dim]``."""
        return self.head(self.features(x))
