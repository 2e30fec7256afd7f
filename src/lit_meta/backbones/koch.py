"""The convolutional embedding network of Koch et al.'s Siamese Networks for Omniglot."""

from __future__ import annotations

from torch import Tensor, nn

from lit_meta.backbones.config import RecordsConfig

_CONVS = ((64, 10), (128, 7), (128, 4), (256, 4))  # (filters, kernel side) of the four convolutions
_CONV_WEIGHT_STD = 1e-2
_BIAS_MEAN, _BIAS_STD = 0.5, 1e-2
_LINEAR_WEIGHT_STD = 2e-1


def koch_feature_side(image_size: int) -> int:
    """Side of the last feature map for square ``image_size`` inputs (105 -> 6); below 1 the network does not fit.

    Each convolution is unpadded (``side - kernel + 1``) and the first three are followed by a 2x2
    max-pooling (``side // 2``): 105 -> 96 -> 48 -> 42 -> 21 -> 18 -> 9 -> 6.
    """
    side = image_size
    for index, (_, kernel) in enumerate(_CONVS):
        side = side - kernel + 1
        if side < 1:
            return 0
        if index < len(_CONVS) - 1:
            side //= 2
    return side


class KochSiameseNet(RecordsConfig, nn.Module):
    """The embedding network of Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image
    Recognition", ICML Deep Learning Workshop, Section 3.1 and Figure 4.

    ``conv 64@10x10 -> ReLU -> maxpool 2 -> conv 128@7x7 -> ReLU -> maxpool 2 -> conv 128@4x4 -> ReLU
    -> maxpool 2 -> conv 256@4x4 -> ReLU -> flatten -> linear 4096 -> sigmoid``: unpadded convolutions
    with stride 1, the flattened ``256 x 6 x 6 = 9216`` features of a 105x105 image mapped to the
    4096-unit sigmoid layer that is the embedding. The paper's comparison of two embeddings (the
    weighted L1 distance and its sigmoid) is :class:`~lit_meta.learners.siamese.SiameseNet`'s, not
    this network's: it returns the embedding, like ``Conv4(out_features=None)``. No batch
    normalisation (the paper has none).

    With ``paper_init=True`` (default) the weights are drawn as in Section 3.2 ("Weight
    initialization"): convolution weights from ``N(0, 1e-2)``, every bias from ``N(0.5, 1e-2)``, the
    fully connected weights from ``N(0, 2e-1)`` (standard deviations). ``paper_init=False`` keeps
    PyTorch's default initialisation.

    Args:
        in_channels: channels of the input images (1 for Omniglot).
        image_size: height and width of the (square) input; the paper's is 105, and the network
            needs at least 65 (the last feature map is then 1x1).
        embedding_dim: units of the sigmoid layer (the paper's 4096).
        paper_init: draw the weights as the paper (see above) instead of PyTorch's defaults.

    Attributes:
        embedding_dim: size of the embedding the network returns.

    Raises:
        ValueError: ``image_size`` too small for the four unpadded convolutions and three poolings.
    """

    def __init__(
        self, in_channels: int = 1, image_size: int = 105, embedding_dim: int = 4096, paper_init: bool = True
    ) -> None:
        super().__init__()
        side = koch_feature_side(image_size)
        if side < 1:
            raise ValueError(
                f"KochSiameseNet needs image_size >= 65 (its unpadded 10x10, 7x7, 4x4 and 4x4 convolutions and "
                f"three 2x2 poolings leave nothing of a smaller image), got {image_size}; the paper's is 105"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for index, (filters, kernel) in enumerate(_CONVS):
            layers += [nn.Conv2d(channels, filters, kernel_size=kernel), nn.ReLU()]
            if index < len(_CONVS) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = filters
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels * side * side, embedding_dim), nn.Sigmoid())
        self.embedding_dim = embedding_dim
        if paper_init:
            self.reset_parameters_as_paper()

    def reset_parameters_as_paper(self) -> None:
        """Draw every weight and bias as Section 3.2 of the paper (see the class)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                std = _CONV_WEIGHT_STD if isinstance(module, nn.Conv2d) else _LINEAR_WEIGHT_STD
                nn.init.normal_(module.weight, 0.0, std)
                nn.init.normal_(module.bias, _BIAS_MEAN, _BIAS_STD)

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, in_channels, image_size, image_size] -> [batch, embedding_dim]``, values in ``(0, 1)``."""
        return self.head(self.features(x))
