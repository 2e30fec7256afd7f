"""Relation Networks: a learned comparison of feature maps."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.learners.embedding import embed
from lit_meta.learners.metric import MetricMetaLearner


def conv_bn_relu(
    in_channels: int, out_channels: int, padding: int, pool: bool, track_running_stats: bool = True
) -> nn.Sequential:
    """``conv3x3 -> BatchNorm2d -> ReLU``, then ``maxpool 2`` if ``pool``: the blocks of Sung et al.

    ``track_running_stats=False``: the BatchNorm layer keeps no running statistics and normalises
    every call with the statistics of its own batch, in evaluation as in training.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def relation_embedding(
    in_channels: int = 1, hidden_channels: int = 64, track_running_stats: bool = True
) -> nn.Sequential:
    """The embedding module of Sung et al. (2018, Figure 2): four conv blocks, feature maps out.

    The first two blocks are unpadded and max-pooled, the last two padded and
    not pooled, as in the authors' code: 28x28 images give ``64 x 5 x 5`` maps,
    84x84 images ``64 x 19 x 19``. ``Conv4(...).features[:-1]`` (Conv4 without
    its flatten) is another valid backbone, for images of 64x64 and more.

    ``track_running_stats=False`` tests as the authors' code does, which never calls
    ``eval()``: each call (a support set, a query set) is normalised with its own batch
    statistics at evaluation too, so a query's embedding depends on the other queries
    (transductive).
    """
    block = functools.partial(conv_bn_relu, track_running_stats=track_running_stats)
    return nn.Sequential(
        block(in_channels, hidden_channels, padding=0, pool=True),
        block(hidden_channels, hidden_channels, padding=0, pool=True),
        block(hidden_channels, hidden_channels, padding=1, pool=False),
        block(hidden_channels, hidden_channels, padding=1, pool=False),
    )


def default_relation_module(
    map_shape: tuple[int, int, int] | torch.Size,
    hidden_channels: int = 64,
    hidden_features: int = 8,
    track_running_stats: bool = True,
) -> nn.Sequential:
    """The relation module of Sung et al. (2018, Figure 2) for concatenated pairs of ``map_shape`` maps.

    Two padded conv blocks with max-pooling, then ``FC hidden_features -> ReLU
    -> FC 1 -> sigmoid``: a relation score in ``(0, 1)`` per pair. The first
    fully connected layer is sized for the pooled maps (``64 x 1 x 1`` from the
    ``5 x 5`` maps of 28x28 Omniglot images, the paper's Omniglot network).

    Args:
        map_shape: ``(C, H, W)`` of the pairs, i.e. twice the embedding's channels.
        hidden_channels: channels of the two conv blocks.
        hidden_features: size of the hidden fully connected layer.
        track_running_stats: whether its BatchNorm layers keep running statistics for
            evaluation; ``False`` normalises every call (all the pairs of a task) with its own.
    """
    channels, height, width = map_shape
    if height < 4 or width < 4:
        raise ValueError(
            f"the default relation module pools twice and needs feature maps of at least 4x4, got {height}x{width}; "
            "use a backbone with less pooling (e.g. relation_embedding()) or pass relation_module=..."
        )
    pooled = (height // 4) * (width // 4)
    block = functools.partial(conv_bn_relu, padding=1, pool=True, track_running_stats=track_running_stats)
    return nn.Sequential(
        block(channels, hidden_channels),
        block(hidden_channels, hidden_channels),
        nn.Flatten(),
        nn.Linear(hidden_channels * pooled, hidden_features),
        nn.ReLU(),
        nn.Linear(hidden_features, 1),
        nn.Sigmoid(),
    )


class RelationNet(MetricMetaLearner):
    """Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, 2018, "Learning to Compare", CVPR,
    arXiv:1711.06025).

    The backbone turns images into feature maps. A class's map is the SUM of
    its support examples' maps (the paper's K-shot rule); each query map is
    concatenated after each class map along the channels,
    ``[class map, query map]``, and the relation module scores the pair in
    ``(0, 1)``. Training regresses the scores on the one-hot query labels with
    mean squared error (the paper's loss), so :meth:`task_loss` is MSE and the
    logged ``val/loss`` and ``test/loss`` are MSEs; accuracy takes the class of
    highest relation score. Adapting to a task computes the class maps once
    (a :class:`~lit_meta.learners.metric.MetricClassifier`).

    Backbone contract: ``[N, *item_shape] -> [N, C, H, W]`` feature maps, e.g.
    :func:`relation_embedding` (the paper's) or ``Conv4(...).features[:-1]``.
    With ``relation_module=None`` the paper's relation module is built for the
    backbone's maps, whose shape is read by running the backbone once (in eval
    mode, without gradients) on a zero input of ``input_shape``. A custom
    ``relation_module`` takes ``[pairs, 2C, H, W]`` and returns one score per
    pair (``[pairs]`` or ``[pairs, 1]``); it is kept in the checkpoint's
    hyperparameters like the backbone.

    Paper setups (Section 4): Adam ``meta_lr=1e-3``, halved every 100,000
    episodes (a step schedule: override ``configure_optimizers``); Omniglot
    28x28 with 19 (5-way 1-shot) or 15 (5-way 5-shot) queries per class:
    5-way 99.6% (1-shot) and 99.8% (5-shot); miniImageNet 84x84 with 15 or 10
    queries: 50.4% and 65.3%. The paper's miniImageNet relation module has
    unpadded convolutions (a ``64 x 3 x 3`` input to its FC layer); the default
    here pads as on Omniglot (``64 x 4 x 4`` for 19x19 maps).

    BatchNorm, by default: support and query sets are embedded in one call, so
    BatchNorm in training normalises them together, and evaluation uses BatchNorm's
    running statistics (``eval()``). The authors' code (floodsung/LearningToCompare_FSL)
    differs: it never calls ``eval()`` and embeds support and query in two calls, each
    normalised with its own batch statistics, in training and at test alike. Their
    protocol is available: ``embed_apart=True`` embeds the two sets in two calls in
    training, and BatchNorm layers without running statistics
    (``relation_embedding(track_running_stats=False)``,
    ``relation_track_running_stats=False``) normalise every call with its own batch
    at evaluation too; evaluation embeds support and query apart in any case
    (:meth:`adapt`). ``configs/relation_net/omniglot_5w1s_authors.yaml`` sets all three.

    Args:
        backbone: a feature-map network (see the contract above).
        relation_module: scores pairs of concatenated maps; ``None`` builds
            :func:`default_relation_module` for the backbone's maps.
        input_shape: shape of one input item, to size the default relation module.
        relation_channels: channels of the default relation module's conv blocks.
        relation_hidden: hidden units of its fully connected layer (8 in the paper).
        relation_track_running_stats: whether the default relation module's BatchNorm
            layers keep running statistics (see above); with a ``relation_module`` it must
            stay ``True`` (build that module's BatchNorm as wanted).
        embed_apart: in training, embed the support and the query sets in two backbone
            calls (as the authors' code), each with its own BatchNorm statistics, rather than one.
        **kwargs: the outer-loop options of :class:`MetaLearner` (``meta_lr``,
            ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    def __init__(
        self,
        backbone: nn.Module,
        relation_module: nn.Module | None = None,
        input_shape: tuple[int, ...] = (1, 28, 28),
        relation_channels: int = 64,
        relation_hidden: int = 8,
        relation_track_running_stats: bool = True,
        embed_apart: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if relation_module is not None and not relation_track_running_stats:
            raise ValueError(
                "relation_track_running_stats=False sizes the default relation module and cannot change the given "
                "relation_module; build its BatchNorm layers with track_running_stats=False instead"
            )
        if relation_module is None:
            channels, height, width = feature_map_shape(backbone, input_shape)
            relation_module = default_relation_module(
                (2 * channels, height, width), relation_channels, relation_hidden, relation_track_running_stats
            )
        self.relation_module = relation_module
        self.embed_apart = embed_apart

    def embed_sets(self, support_x: Tensor, query_x: Tensor, batch_dims: int) -> tuple[Tensor, Tensor]:
        """Support and query feature maps: in one backbone call, or in two with ``embed_apart``."""
        if not self.embed_apart:
            return super().embed_sets(support_x, query_x, batch_dims)
        return embed(self.backbone, support_x, batch_dims), embed(self.backbone, query_x, batch_dims)

    def summarize_support(self, support: Tensor, one_hot: Tensor) -> dict[str, Tensor]:
        """The class maps ``[*, ways, C, H, W]``: the sum of each class's support feature maps."""
        return {"class_maps": class_maps(support, one_hot)}

    def compare(self, query: Tensor, class_maps: Tensor) -> Tensor:  # type: ignore[override]
        """``[*, queries, C, H, W]`` query maps and ``[*, ways, C, H, W]`` class maps -> ``[*, queries, ways]``."""
        classes = class_maps.unsqueeze(-5)
        queries = query.unsqueeze(-4)
        lead = torch.broadcast_shapes(classes.shape[:-3], queries.shape[:-3])
        pairs = torch.cat([classes.expand(*lead, -1, -1, -1), queries.expand(*lead, -1, -1, -1)], dim=-3)
        scores = self.relation_module(pairs.reshape(-1, *pairs.shape[-3:]))
        if scores.numel() != math.prod(lead):
            raise ValueError(
                f"the relation module must give one score per pair; it gave {tuple(scores.shape)} "
                f"for {math.prod(lead)} pairs"
            )
        return scores.reshape(lead)

    def task_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean squared error between the relation scores and the one-hot labels (Sung et al., Eq. 2)."""
        if targets.is_floating_point():
            return super().task_loss(outputs, targets)
        return F.mse_loss(outputs, F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype))


def class_maps(support: Tensor, one_hot: Tensor) -> Tensor:
    """Sum of the support feature maps per class: ``[*, shots*ways, C, H, W]`` maps and
    ``[*, shots*ways, ways]`` one-hot labels -> ``[*, ways, C, H, W]``."""
    summed = one_hot.to(support.dtype).transpose(-1, -2) @ support.flatten(-3)
    return summed.reshape(*summed.shape[:-1], *support.shape[-3:])


@torch.no_grad()
def feature_map_shape(backbone: nn.Module, input_shape: tuple[int, ...]) -> torch.Size:
    """``(C, H, W)`` of the backbone's output for one ``input_shape`` item (run in eval mode, then restored)."""
    reference = next(backbone.parameters(), None)
    x = torch.zeros(1, *input_shape) if reference is None else reference.new_zeros(1, *input_shape)
    training = backbone.training
    backbone.eval()
    try:
        maps = backbone(x)
    finally:
        backbone.train(training)
    if maps.dim() != 4:
        raise ValueError(
            f"RelationNet needs a backbone that outputs feature maps [N, C, H, W]; it gave {tuple(maps.shape)} "
            f"for input_shape={tuple(input_shape)}. Drop the flatten and head (e.g. Conv4(...).features[:-1]) "
            "or use relation_embedding()"
        )
    return maps.shape[1:]
