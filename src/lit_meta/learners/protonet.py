"""Prototypical Networks."""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.learners.classification import Temperature
from lit_meta.learners.metric import MetricMetaLearner

Distance = Literal["euclidean", "cosine"]


class ProtoNet(MetricMetaLearner):
    """Prototypical Networks (Snell, Swersky & Zemel, 2017, NeurIPS, arXiv:1703.05175).

    The prototype of a class is the mean embedding of its support examples; a
    query's logit for a class is minus its squared Euclidean distance to the
    prototype (``distance="euclidean"``, which the paper found better than cosine), or
    the cosine similarity (``distance="cosine"``), divided by ``temperature``.
    Training minimises the cross-entropy of the query logits. Adapting to a
    task computes the prototypes once (a :class:`~lit_meta.learners.metric.MetricClassifier`).

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

    def summarize_support(self, support: Tensor, one_hot: Tensor) -> dict[str, Tensor]:
        """The prototypes ``[*, ways, D]``: the mean support embedding of each class."""
        return {"prototypes": prototypes(support, one_hot)}

    def compare(self, query: Tensor, prototypes: Tensor) -> Tensor:  # type: ignore[override]
        """``[*, queries, D]`` query embeddings and ``[*, ways, D]`` prototypes -> ``[*, queries, ways]`` logits."""
        if self.hparams.distance == "cosine":
            scores = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(-1, -2)
        else:
            # The difference, not |q|^2 - 2 q.p + |p|^2, which cancels badly in low precision.
            scores = -(query.unsqueeze(-2) - prototypes.unsqueeze(-3)).pow(2).sum(-1)
        return self.temperature(scores)


def prototypes(support: Tensor, one_hot: Tensor) -> Tensor:
    """Mean support embedding per class: ``[*, shots*ways, D]``, one-hot labels ``[*, shots*ways, ways]``
    -> ``[*, ways, D]``."""
    one_hot = one_hot.to(support.dtype)
    return (one_hot.transpose(-1, -2) @ support) / one_hot.sum(-2).unsqueeze(-1)
