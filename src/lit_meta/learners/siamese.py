"""Siamese Networks: one-shot classification by a learned same/different verifier."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners.classification import class_one_hot
from lit_meta.learners.metric import MetricMetaLearner


class SiameseNet(MetricMetaLearner):
    """Siamese Neural Networks (Koch, Zemel & Salakhutdinov, 2015, "Siamese Neural Networks for One-shot
    Image Recognition", ICML Deep Learning Workshop).

    Two examples go through the same embedding network; a linear layer on the
    component-wise L1 distance of their embeddings gives the logit that they
    belong to the same class: ``s(a, b) = w . |f(a) - f(b)| + b``, symmetric in
    ``a`` and ``b``; ``sigmoid(s)`` is the probability of "same".

    Training is verification: every pair of distinct examples of an episode
    (support and query together) is labelled same or different class, and
    the loss is the binary cross-entropy of their logits with the two kinds of
    pairs weighted equally: ``(mean over same pairs + mean over different
    pairs) / 2``. That is the expected loss of balanced pair sampling, without
    sampling noise; an episode of N ways and M examples per class has
    ``N * M(M-1)/2`` same and ``N(N-1)/2 * M^2`` different pairs.

    Classification (validation, test, predict, :meth:`adapt`) compares a query
    with every support example; its logit for a class is the mean pair logit
    over the class's support examples (1-shot: the logit of the one example,
    so the argmax is the paper's nearest-by-verification rule). As each class
    logit is an independent same/different logit, :meth:`task_loss` is the
    binary cross-entropy of the class logits against the one-hot labels (the
    logged ``val/loss``), and accuracy takes the class of highest logit.

    Paper setup: Omniglot 105x105 images, four conv layers
    (64 10x10, 128 7x7, 128 4x4, 256 4x4 filters, ReLU, max-pooling between)
    and a 4096-unit sigmoid layer as the embedding, trained on pairs with
    affine distortions by SGD with momentum and layer-wise L2 regularisation;
    92% 20-way 1-shot accuracy within Omniglot's evaluation alphabets. Here any
    embedding network (e.g. ``Conv4(out_features=None)``, or the paper's,
    :class:`~lit_meta.backbones.KochSiameseNet`) and the outer optimiser of
    :class:`MetaLearner` are used, on episodes; the paper's distortions are
    :class:`~lit_meta.data.AffineDistortion`, the datamodule's ``augmentation``
    (``configs/siamese/omniglot_koch_*.yaml`` put the three together).

    Args:
        backbone: an embedding network, ``[N, *item_shape] -> [N, D]`` (no head).
        embedding_dim: D; defaults to ``backbone.embedding_dim``.
        **kwargs: the outer-loop options of :class:`MetaLearner` (``meta_lr``,
            ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        dim = embedding_dim or getattr(backbone, "embedding_dim", None)
        if dim is None:
            raise ValueError("SiameseNet needs the embedding size: pass embedding_dim=... (the backbone has none)")
        self.head = nn.Linear(dim, 1)

    def pair_logits(self, a: Tensor, b: Tensor) -> Tensor:
        """Same-class logits ``w . |a - b| + bias`` of embeddings ``a`` and ``b`` (broadcast; last dim D)."""
        return self.head((a - b).abs()).squeeze(-1)

    def summarize_support(self, support: Tensor, one_hot: Tensor) -> dict[str, Tensor]:
        """The support embeddings and their labels: every query is compared with every support example."""
        return {"support": support, "one_hot": one_hot}

    def compare(self, query: Tensor, support: Tensor, one_hot: Tensor) -> Tensor:  # type: ignore[override]
        """Mean pair logit per class: ``[*, queries, D]``, ``[*, shots*ways, D]`` -> ``[*, queries, ways]``."""
        logits = self.pair_logits(query.unsqueeze(-2), support.unsqueeze(-3))
        one_hot = one_hot.to(logits.dtype)
        return (logits @ one_hot) / one_hot.sum(-2).unsqueeze(-2)

    def task_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Binary cross-entropy of each class logit against "the query is of this class"."""
        if targets.is_floating_point():
            return super().task_loss(outputs, targets)
        return F.binary_cross_entropy_with_logits(outputs, F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype))

    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """Balanced verification loss over all pairs of examples within each task of ``batch``."""
        class_one_hot(batch.support_y, batch.support_x.dtype)  # raises the boundary error for regression episodes
        support, query = self.embed_sets(batch.support_x, batch.query_x, batch_dims=2)
        embeddings = torch.cat([support, query], dim=1)
        labels = torch.cat([batch.support_y, batch.query_y], dim=1)
        logits = self.pair_logits(embeddings.unsqueeze(2), embeddings.unsqueeze(1))
        same = labels.unsqueeze(2) == labels.unsqueeze(1)
        losses = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype), reduction="none")
        # Each unordered pair once: i < j.
        distinct = torch.ones_like(same).triu(diagonal=1)
        kinds = [same & distinct, ~same & distinct]
        means = [(losses * kind).sum() / kind.sum().clamp(min=1) for kind in kinds]
        return (means[0] + means[1]) / 2
