"""Plain ``nn.Module`` networks for few-shot learning; no meta-learning code inside them.

Each has a ``features`` part and a ``head`` (``nn.Linear``, or ``nn.Identity``
when ``out_features=None``), and an ``embedding_dim`` attribute. :class:`KochSiameseNet`
is an embedding network only: its ``head`` is the paper's sigmoid layer, the embedding.
"""

from lit_meta.backbones.conv4 import Conv4
from lit_meta.backbones.koch import KochSiameseNet
from lit_meta.backbones.mlp import MLP, OmniglotMLP, SinusoidMLP
from lit_meta.backbones.resnet12 import ResNet12

__all__ = ["MLP", "Conv4", "KochSiameseNet", "OmniglotMLP", "ResNet12", "SinusoidMLP"]
