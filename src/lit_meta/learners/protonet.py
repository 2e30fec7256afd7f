"""Prototypical Networks, and the episode plumbing the metric-based learners share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners.base import MetaLearner

Distance = Literal["euclidean", "cosine"]


# -- shared by the metric-based learners (ProtoNet, MatchingNet, RelationNet, SiameseNet) ---------
def embed(network: nn.Module, x: Tensor, batch_dims: int) -> Tensor:
    """``network`` applied to items with ``batch_dims`` leading dimensions, in one call.

    ``[*lead, *item_shape] -> [*lead, *output_shape]``: ``lead`` is ``[examples]``
    for one episode and ``[tasks, examples]`` for a meta-batch.
    """
    lead = x.shape[:batch_dims]
    out = network(x.reshape(-1, *x.shape[batch_dims:]))
    return out.reshape(*lead, *out.shape[1:])


def embed_episode(network: nn.Module, support_x: Tensor, query_x: Tensor, batch_dims: int) -> tuple[Tensor, Tensor]:
    """Support and query embeddings from a single call of ``network``.

    One call means BatchNorm in training mode normalises support and query
    (and, for a meta-batch, all its tasks) with the same statistics, as the
    reference implementations that concatenate support and query do.
    """
    dim = batch_dims - 1
    both = embed(network, torch.cat([support_x, query_x], dim=dim), batch_dims)
    return both.split([support_x.shape[dim], query_x.shape[dim]], dim=dim)


def class_one_hot(labels: Tensor, dtype: torch.dtype) -> Tensor:
    """``[*, examples] -> [*, examples, ways]`` one-hot labels; every label ``0 .. ways-1`` must occur.

    Raises:
        EpisodeConfigError: float targets (a regression episode) or a label with no example.
    """
    if labels.is_floating_point():
        raise EpisodeConfigError(
            f"metric-based learners classify, but the support targets are {labels.dtype} (a regression task); "
            "use integer labels 0 .. ways-1 or a gradient-based learner"
        )
    one_hot = F.one_hot(labels, int(labels.max()) + 1)
    missing = (one_hot.sum(-2) == 0).nonzero()
    if len(missing):
        raise EpisodeConfigError(
            f"labels must be 0 .. ways-1 with at least one support example each; label {int(missing[0, -1])} has none"
        )
    return one_hot.to(dtype)


class MetricClassifier:
    """The task model of a metric-based learner: what it keeps of a support set is computed once.

    ``adapt`` embeds the support set and reduces it (prototypes, support
    embeddings, class feature maps) into ``cache``; classifying queries then
    costs one embedding and ``compare(query_embeddings, **cache)``. The cache
    is a snapshot; the backbone is the learner's own, as it is when called.

    Args:
        backbone: the learner's embedding network.
        compare: the learner's comparison, embedded queries and the cache -> outputs.
        batch_dims: leading dimensions of the query items (1 for one task, 2 for a batch of tasks).
        cache: the support-side tensors, by the name ``compare`` takes them.
    """

    def __init__(self, backbone: nn.Module, compare: Callable[..., Tensor], batch_dims: int, **cache: Tensor) -> None:
        self.backbone = backbone
        self.compare = compare
        self.batch_dims = batch_dims
        self.cache = cache

    def __call__(self, query_x: Tensor) -> Tensor:
        return self.compare(embed(self.backbone, query_x, self.batch_dims), **self.cache)


class Temperature(nn.Module):
    """Divides scores by a temperature, fixed or learned.

    A learned temperature is stored as its logarithm so it stays positive.

    Args:
        value: the (initial) temperature.
        learnable: learn it with the other parameters.
    """

    def __init__(self, value: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if value <= 0:
            raise ValueError(f"temperature={value}: it must be positive")
        log_value = torch.tensor(math.log(value))
        if learnable:
            self.log_value = nn.Parameter(log_value)
        else:
            self.register_buffer("log_value", log_value)

    @property
    def value(self) -> Tensor:
        return self.log_value.exp()

    def forward(self, scores: Tensor) -> Tensor:
        return scores * torch.exp(-self.log_value)


# -- Prototypical Networks ------------------------------------------------------------------------
class ProtoNet(MetaLearner):
    """Prototypical Networks (Snell, Swersky & Zemel, 2017, NeurIPS, arXiv:1703.05175).

    The prototype of a class is the mean embedding of its support examples; a
    query's logit for a class is minus its squared Euclidean distance to the
    prototype (``distance="euclidean"``, which the paper found better than cosine), or
    the cosine similarity (``distance="cosine"``), divided by ``temperature``.
    Training minimises the cross-entropy of the query logits. Adapting to a
    task computes the prototypes once (a :class:`MetricClassifier`).

    Cosine similarities lie in ``[-1, 1]``, so cosine needs a small temperature
    (about 0.1) or ``learn_temperature=True`` (the learned scale of Oreshkin et
    al., 2018, TADAM) to give confident predictions.

    The ways may differ between training and evaluation: the paper trains with
    more ways than it tests (``EpisodicDataModule(train_ways=60, ways=5)``).

    Paper setups (Section 3):

    * Omniglot: Conv4 with 64 filters (``Conv4(1, out_features=None)``, a
      64-d embedding of 28x28 images), 60-way training episodes with 5 queries
      per class, 5- and 20-way testing; Adam ``meta_lr=1e-3`` halved every
      2,000 episodes (a step schedule: override ``configure_optimizers``).
      5-way 98.8% (1-shot) and 99.7% (5-shot).
    * miniImageNet: the same Conv4 on 84x84 images (1600-d), 30-way 1-shot and
      20-way 5-shot training with 15 queries per class; 49.4% and 68.2% 5-way.

    The support and query sets of all tasks of a meta-batch are embedded in one
    backbone call, so BatchNorm in training uses their joint statistics.

    Args:
        backbone: an embedding network, ``[N, *item_shape] -> [N, D]`` (no head).
        distance: ``"euclidean"`` (squared) or ``"cosine"``.
        temperature: the logits are divided by it (the initial value when learned).
        learn_temperature: learn the temperature.
        **kwargs: the outer-loop options of :class:`MetaLearner` (``meta_lr``,
            ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    adapts_with_gradients = False

    def __init__(
        self,
        backbone: nn.Module,
        distance: Distance = "euclidean",
        temperature: float = 1.0,
        learn_temperature: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance={distance!r}: use 'euclidean' or 'cosine'")
        self.temperature = Temperature(temperature, learn_temperature)

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Query logits ``[*, queries, ways]`` of one episode, or of a meta-batch with a leading task dimension."""
        one_hot = class_one_hot(support_y, support_x.dtype)
        support, query = embed_episode(self.backbone, support_x, query_x, support_y.dim())
        return self.logits(query, prototypes(support, one_hot))

    def logits(self, query: Tensor, prototypes: Tensor) -> Tensor:
        """``[*, queries, D]`` query embeddings and ``[*, ways, D]`` prototypes -> ``[*, queries, ways]`` logits."""
        if self.hparams.distance == "cosine":
            scores = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(-1, -2)
        else:
            # The difference, not |q|^2 - 2 q.p + |p|^2, which cancels badly in low precision.
            scores = -(query.unsqueeze(-2) - prototypes.unsqueeze(-3)).pow(2).sum(-1)
        return self.temperature(scores)

    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """Mean cross-entropy of the query logits over the tasks of ``batch``."""
        logits = self(batch.support_x, batch.support_y, batch.query_x)
        return self.task_loss(logits.flatten(0, 1), batch.query_y.flatten())

    @torch.no_grad()
    def adapt(self, support_x: Tensor, support_y: Tensor) -> MetricClassifier:
        """A task model holding the task's prototypes; call ``eval()`` first, as for any inference."""
        one_hot = class_one_hot(support_y, support_x.dtype)
        support = embed(self.backbone, support_x, support_y.dim())
        return MetricClassifier(self.backbone, self.logits, support_y.dim(), prototypes=prototypes(support, one_hot))


def prototypes(support: Tensor, one_hot: Tensor) -> Tensor:
    """Mean support embedding per class: ``[*, shots*ways, D]``, one-hot labels ``[*, shots*ways, ways]``
    -> ``[*, ways, D]``."""
    one_hot = one_hot.to(support.dtype)
    return (one_hot.transpose(-1, -2) @ support) / one_hot.sum(-2).unsqueeze(-1)
