"""ResNet-12, the residual embedding network of MetaOptNet and TADAM."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.backbones.config import RecordsConfig


def conv3x3_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels)]


class ResidualBlock(nn.Module):
    """Three ``conv3x3 -> BatchNorm`` layers (LeakyReLU 0.1 between them) plus a 1x1-conv
    shortcut, LeakyReLU after the sum, then maxpool 2 and optional dropout.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        drop_rate: dropout probability after pooling (0 for none).
    """

    def __init__(self, in_channels: int, out_channels: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            *conv3x3_bn(in_channels, out_channels),
            nn.LeakyReLU(0.1),
            *conv3x3_bn(out_channels, out_channels),
            nn.LeakyReLU(0.1),
            *conv3x3_bn(out_channels, out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.pool = nn.MaxPool2d(2)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.pool(F.leaky_relu(self.residual(x) + self.shortcut(x), 0.1))
        return F.dropout(out, self.drop_rate, self.training) if self.drop_rate > 0 else out


class ResNet12(RecordsConfig, nn.Module):
    """Four residual blocks (each halving the image), global average pooling, optional linear head.

    The backbone of MetaOptNet (Lee et al., 2019, "Meta-Learning with
    Differentiable Convex Optimization", CVPR) and TADAM (Oreshkin, Rodriguez &
    Lacoste, 2018, "TADAM: Task dependent adaptive metric for improved few-shot
    learning", NeurIPS), without DropBlock. With the default widths it has about
    12.4 million parameters and a 640-dimensional embedding for any input size
    of at least 16x16.

    Args:
        in_channels: channels of the input images.
        out_features: outputs of the linear head, or ``None`` (the default) to
            return the pooled embedding, as metric learners need.
        channels: output channels of the four blocks.
        drop_rate: dropout probability after each block.

    Attributes:
        embedding_dim: size of the pooled embedding (``channels[-1]``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: int | None = None,
        channels: Sequence[int] = (64, 160, 320, 640),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"ResNet12 has four blocks and needs four channel widths, got {list(channels)}")
        widths = [in_channels, *channels]
        self.features = nn.Sequential(
            *(ResidualBlock(widths[i], widths[i + 1], drop_rate) for i in range(4)),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embedding_dim = channels[-1]
        self.out_features = out_features
        self.head: nn.Module = nn.Identity() if out_features is None else nn.Linear(self.embedding_dim, out_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, in_channels, height, width] -> [batch, out_features or embedding_dim]``."""
        return self.head(self.features(x))
