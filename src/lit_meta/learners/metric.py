"""The metric-based family: embed an episode, summarise the support set, compare queries with it.

:class:`MetricMetaLearner` is the base of Prototypical, Matching, Relation and Siamese
networks. A subclass says what it keeps of an embedded support set
(:meth:`~MetricMetaLearner.summarize_support`: prototypes, support embeddings, class
feature maps) and how a query is scored against that summary
(:meth:`~MetricMetaLearner.compare`); the base runs episodes and meta-batches through
them, trains on the query loss, and adapts to a new task by computing the summary once
(a :class:`MetricClassifier`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners.base import ClassScores, MetaLearner
from lit_meta.learners.classification import class_one_hot
from lit_meta.learners.embedding import embed, embed_episode


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


class MetricMetaLearner(MetaLearner):
    """Base of the learners that classify a query by comparing its embedding with the support set's.

    A subclass implements :meth:`summarize_support` and :meth:`compare`. Support and
    query sets (of one episode, or of every task of a meta-batch) are embedded in one
    backbone call, so BatchNorm in training uses their joint statistics
    (:meth:`embed_sets`, the hook to override for another rule).
    :meth:`meta_loss` is :meth:`~MetaLearner.task_loss` of the query outputs over
    all tasks; :meth:`adapt` embeds the support set once, without gradients.

    Evaluation needs no autograd, and the class scores are the learner's comparison,
    so the backbone is an embedding network of any output size.
    """

    family_base: ClassVar[bool] = True
    evaluation_needs_autograd: ClassVar[bool] = False
    class_scores: ClassVar[ClassScores] = "learner"

    @abstractmethod
    def summarize_support(self, support: Tensor, one_hot: Tensor) -> dict[str, Tensor]:
        """What the learner keeps of a support set, by the names :meth:`compare` takes.

        Args:
            support: support embeddings ``[*, shots*ways, *embedding_shape]``.
            one_hot: their labels, ``[*, shots*ways, ways]``.
        """

    @abstractmethod
    def compare(self, query: Tensor, **summary: Tensor) -> Tensor:
        """Outputs ``[*, queries, ways]`` of query embeddings ``[*, queries, *embedding_shape]`` given the summary."""

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Query outputs ``[*, queries, ways]`` of one episode, or of a meta-batch with a leading task dimension."""
        one_hot = class_one_hot(support_y, support_x.dtype)
        support, query = self.embed_sets(support_x, query_x, support_y.dim())
        return self.compare(query, **self.summarize_support(support, one_hot))

    def embed_sets(self, support_x: Tensor, query_x: Tensor, batch_dims: int) -> tuple[Tensor, Tensor]:
        """Support and query embeddings for :meth:`forward` (training): one backbone call for both.

        Args:
            support_x: support items ``[*, shots*ways, *item_shape]``.
            query_x: query items ``[*, queries, *item_shape]``.
            batch_dims: leading dimensions of the items (1 for one task, 2 for a meta-batch).
        """
        return embed_episode(self.backbone, support_x, query_x, batch_dims)

    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """Mean :meth:`~MetaLearner.task_loss` of the query outputs over the tasks of ``batch``."""
        outputs = self(batch.support_x, batch.support_y, batch.query_x)
        return self.task_loss(outputs.flatten(0, 1), batch.query_y.flatten())

    @torch.no_grad()
    def adapt(self, support_x: Tensor, support_y: Tensor) -> MetricClassifier:
        """A task model holding the summary of the support set; call ``eval()`` first, as for any inference."""
        one_hot = class_one_hot(support_y, support_x.dtype)
        support = embed(self.backbone, support_x, support_y.dim())
        summary = self.summarize_support(support, one_hot)
        return MetricClassifier(self.backbone, self.compare, support_y.dim(), **summary)
