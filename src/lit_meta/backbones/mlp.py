"""Fully connected networks: the generic MLP and the presets of the MAML paper."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lit_meta.backbones.config import RecordsConfig


class MLP(RecordsConfig, nn.Module):
    """``flatten -> [Linear -> (BatchNorm1d) -> ReLU] x len(hidden) -> Linear head``.

    Args:
        in_features: size of the flattened input.
        hidden: widths of the hidden layers, in order.
        out_features: outputs of the linear head, or ``None`` for no head (the
            network then returns the last hidden layer, ``embedding_dim`` wide).
        batch_norm: put a ``BatchNorm1d`` between each hidden ``Linear`` and its ReLU.

    Attributes:
        embedding_dim: width of the last hidden layer (the input size when
            ``hidden`` is empty), which feeds the head.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int | None,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            width = size
        self.features = nn.Sequential(*layers)
        self.embedding_dim = width
        self.out_features = out_features
        self.head: nn.Module = nn.Identity() if out_features is None else nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, *input_shape] -> [batch, out_features or embedding_dim]``; the input is flattened first."""
        return self.head(self.features(x))


class SinusoidMLP(MLP):
    """The 1-40-40-1 ReLU regressor of MAML's sinusoid experiment.

    Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks", ICML, Section 5.1.

    Args:
        hidden: widths of the hidden layers.
    """

    def __init__(self, hidden: Sequence[int] = (40, 40)) -> None:
        super().__init__(1, hidden, 1)


class OmniglotMLP(MLP):
    """The fully connected Omniglot classifier: 784-256-128-64-64-out with BatchNorm and ReLU.

    Santoro et al. (2016), "Meta-Learning with Memory-Augmented Neural
    Networks", ICML, as used by Finn, Abbeel & Levine (2017), "Model-Agnostic
    Meta-Learning for Fast Adaptation of Deep Networks", ICML, Section 5.2.

    Args:
        out_features: outputs of the linear head (the number of ways), or ``None`` for no head.
        in_features: size of the flattened image (28 x 28 = 784 for Omniglot).
    """

    def __init__(self, out_features: int | None = 5, in_features: int = 784) -> None:
        super().__init__(in_features, (256, 128, 64, 64), out_features, batch_norm=True)
