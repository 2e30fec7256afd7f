"""The sequence (model-based) family: an episode read as an ordered sequence, the state reset per episode.

:class:`SequenceMetaLearner` is the base of MANN (Santoro et al., 2016) and SNAIL (Mishra et
al., 2018). The backbone embeds every item; each support item becomes one step of a
sequence, its embedding joined with a label channel (:mod:`lit_meta.data.sequence`), in the
episode's support order; each query is one more step after the support, read on its own: a
query never sees another query. A subclass says how it reads the support sequence
(:meth:`~SequenceMetaLearner.read_support`, returning its outputs at every support step and
the state the queries continue from) and how a query step continues from that state
(:meth:`~SequenceMetaLearner.read_queries`). Nothing carries over from one episode to the
next: the sequence model starts every episode, and every task of a meta-batch, from the
same initial state.

Learners with :attr:`~SequenceMetaLearner.scores_support` (MANN) predict each support
label before seeing it; they train on those predictions too and report accuracy by
presentation of a class (``{stage}/acc_instance_1``, ``_2``, ... as in Santoro et al.,
2016, Table 1). They need the support in random order
(:class:`~lit_meta.data.datamodule.EpisodicDataModule` ``(support_order="random")``), which
their ``setup`` checks.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.data.sequence import LabelInput, label_channels, presentation_numbers
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners.base import ClassScores, MetaLearner
from lit_meta.learners.embedding import check_embedding_dim, embed, embed_episode
from lit_meta.metrics import EpisodeMeanCI

INSTANCES: tuple[int, ...] = (1, 2, 3, 4, 5, 10)
"""The presentations whose accuracy Santoro et al. (2016), Table 1, report."""


class SequenceClassifier:
    """The task model of a sequence learner: the support read once, each query a step after it.

    Args:
        learner: the learner (its backbone embeds the queries, its :meth:`~SequenceMetaLearner.read_queries`
            scores them).
        state: the state after the support sequence, from :meth:`~SequenceMetaLearner.read_support`.
        query_labels: the label channel of a query step, ``[tasks, 1, ways]``.
        single_task: the support was one episode (queries ``[queries, *item_shape]``), not a batch of them.
    """

    def __init__(
        self, learner: SequenceMetaLearner, state: dict[str, Tensor], query_labels: Tensor, single_task: bool
    ) -> None:
        self.learner = learner
        self.state = state
        self.query_labels = query_labels
        self.single_task = single_task

    def __call__(self, query_x: Tensor) -> Tensor:
        if self.single_task:
            query_x = query_x.unsqueeze(0)
        query = self.learner.embed_items(query_x)
        outputs = self.learner.read_queries(self.learner.query_steps(query, self.query_labels), **self.state)
        return outputs.squeeze(0) if self.single_task else outputs


class SequenceMetaLearner(MetaLearner):
    """Base of the learners that read an episode as a sequence of (item, label) steps.

    A subclass implements :meth:`read_support` and :meth:`read_queries`, and states its
    traits :attr:`label_input` and :attr:`scores_support`. The base embeds the items with
    the backbone (support and queries in one call, so BatchNorm in training uses their joint
    statistics), flattens each embedding to a vector and joins it with its label channel;
    :meth:`meta_loss` is the cross-entropy of the query outputs (and of the support outputs,
    with :attr:`scores_support`) over all tasks; :meth:`adapt` reads the support once.

    The label channel and the outputs are sized by ``ways``, so the learner labels exactly
    ``ways`` classes; the Trainer's ``setup`` checks every split against it.

    Args:
        backbone: the embedding network, any ``nn.Module`` (``nn.Flatten()`` feeds the raw
            pixels, as MANN does); its output is flattened to one vector per item.
        ways: the number of classes of every episode: the size of the one-hot label channel
            and of the outputs.
        **kwargs: the arguments of :class:`~lit_meta.learners.base.MetaLearner`.
    """

    family_base: ClassVar[bool] = True
    evaluation_needs_autograd: ClassVar[bool] = False
    class_scores: ClassVar[ClassScores] = "learner"
    label_input: ClassVar[LabelInput] = "masked"
    """How labels enter the sequence: ``"offset"`` (each step carries the previous step's label) or
    ``"masked"`` (each support step its own, a query step none); see :mod:`lit_meta.data.sequence`."""
    scores_support: ClassVar[bool] = False
    """Whether the outputs at the support steps are predictions of their labels, trained on and scored
    by presentation (only meaningful with ``label_input = "offset"``)."""

    def __init__(self, backbone: nn.Module, ways: int = 5, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        if ways < 2:
            raise ValueError(f"ways={ways}: a sequence learner labels at least 2 classes")
        self.ways = ways
        self.embedding_dim: int | None = None
        """Features per item out of the backbone, when the subclass's network is sized for them (checked)."""
        if self.scores_support:
            for stage in ("val", "test"):
                self.metrics[stage].update({f"acc_instance_{k}": EpisodeMeanCI() for k in INSTANCES})

    # -- hooks for subclasses ----------------------------------------------------------------
    @abstractmethod
    def read_support(self, sequence: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Reads the support sequence of every task from the initial state.

        Args:
            sequence: ``[tasks, steps, features + ways]``, each step an item's embedding and its label channel.

        Returns:
            The outputs at every step, ``[tasks, steps, ways]``, and the state the queries continue from.
        """

    @abstractmethod
    def read_queries(self, queries: Tensor, **state: Tensor) -> Tensor:
        """Class scores ``[tasks, queries, ways]`` of query steps ``[tasks, queries, features + ways]``.

        Each query is the step right after the support sequence whose ``state``
        :meth:`read_support` returned; queries never see one another.
        """

    # -- the sequence ------------------------------------------------------------------------
    def head_size(self) -> int:
        return self.ways

    def head_origin(self) -> str:
        return f"its label channel and output layer are sized by ways={self.ways}"

    def head_fix(self, ways: int) -> str:
        return f"set the learner's ways to {ways} or the datamodule's ways to {self.ways}"

    def embed_items(self, x: Tensor) -> Tensor:
        """``[tasks, items, *item_shape] -> [tasks, items, features]``: the backbone's flattened embeddings.

        Raises:
            EpisodeConfigError: the backbone gives another number of features than :attr:`embedding_dim`.
        """
        return self._checked(embed(self.backbone, x, 2).flatten(2))

    def _checked(self, embeddings: Tensor) -> Tensor:
        if self.embedding_dim is None:
            return embeddings
        return check_embedding_dim(embeddings, self.embedding_dim, type(self).__name__, batch_dims=2)

    def query_steps(self, query: Tensor, query_labels: Tensor) -> Tensor:
        """Query embeddings ``[tasks, queries, features]`` joined with the label channel of a query step."""
        return torch.cat([query, query_labels.expand(*query.shape[:-1], self.ways)], dim=-1)

    def _check_labels(self, support_y: Tensor) -> None:
        self.require_class_labels(support_y)
        if support_y.numel() and (int(support_y.min()) < 0 or int(support_y.max()) >= self.ways):
            raise EpisodeConfigError(
                f"support labels {int(support_y.min())} .. {int(support_y.max())} do not fit "
                f"{type(self).__name__}(ways={self.ways}); labels must lie in 0 .. {self.ways - 1}"
            )

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """Outputs at the support steps and at the query steps, of one episode or of a meta-batch.

        Returns:
            ``([*, shots*ways, ways], [*, queries, ways])``, ``*`` the task dimension of a meta-batch.
        """
        self._check_labels(support_y)
        single_task = support_y.dim() == 1
        if single_task:
            support_x, support_y, query_x = support_x.unsqueeze(0), support_y.unsqueeze(0), query_x.unsqueeze(0)
        support, query = embed_episode(self.backbone, support_x, query_x, 2)
        support, query = self._checked(support.flatten(2)), self._checked(query.flatten(2))
        support_labels, query_labels = label_channels(support_y, self.ways, self.label_input, support.dtype)
        support_outputs, state = self.read_support(torch.cat([support, support_labels], dim=-1))
        query_outputs = self.read_queries(self.query_steps(query, query_labels), **state)
        if single_task:
            return support_outputs.squeeze(0), query_outputs.squeeze(0)
        return support_outputs, query_outputs

    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """Mean :meth:`~MetaLearner.task_loss` of the query outputs (and of the support outputs with
        :attr:`scores_support`) over the tasks of ``batch``."""
        return self._loss(batch, *self(batch.support_x, batch.support_y, batch.query_x))

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> Tensor:
        """The meta-loss, logged with the query accuracy and, with :attr:`scores_support`, the accuracy
        at each presentation (``train/acc_instance_k``: Santoro et al., 2016, Figure 2, plot these
        training curves), all of this meta-batch."""
        support_outputs, query_outputs = self(batch.support_x, batch.support_y, batch.query_x)
        loss = self._loss(batch, support_outputs, query_outputs)
        tasks = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=tasks)
        with torch.no_grad():
            self.log("train/acc", (query_outputs.argmax(-1) == batch.query_y).float().mean(), batch_size=tasks)
            if self.scores_support:
                for k, accuracy in presentation_accuracies(support_outputs, batch.support_y).items():
                    self.log(f"train/acc_instance_{k}", accuracy.mean(), batch_size=tasks)
        return loss

    def _loss(self, batch: EpisodeBatch, support_outputs: Tensor, query_outputs: Tensor) -> Tensor:
        if not self.scores_support:
            return self.task_loss(query_outputs.flatten(0, 1), batch.query_y.flatten())
        outputs = torch.cat([support_outputs, query_outputs], dim=1)
        return self.task_loss(outputs.flatten(0, 1), torch.cat([batch.support_y, batch.query_y], dim=1).flatten())

    @torch.no_grad()
    def adapt(self, support_x: Tensor, support_y: Tensor) -> SequenceClassifier:
        """A task model holding the state after the support sequence; call ``eval()`` first, as for any inference.

        The support is read in the order given. A learner trained on randomly ordered
        support sets (``support_order="random"``) expects the same here.
        """
        self._check_labels(support_y)
        single_task = support_y.dim() == 1
        if single_task:
            support_x, support_y = support_x.unsqueeze(0), support_y.unsqueeze(0)
        support = self.embed_items(support_x)
        support_labels, query_labels = label_channels(support_y, self.ways, self.label_input, support.dtype)
        _, state = self.read_support(torch.cat([support, support_labels], dim=-1))
        return SequenceClassifier(self, state, query_labels, single_task)

    # -- Lightning ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """The base's checks, and, for learners that score the support, a randomly ordered support."""
        super().setup(stage)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        order = getattr(datamodule, "hparams", {}).get("support_order") if datamodule is not None else None
        if self.scores_support and order is not None and order != "random":
            raise EpisodeConfigError(
                f"{type(self).__name__} predicts every support label before it sees it, but the datamodule serves "
                f"the support with support_order={order!r}, where the position of an item gives its label away; "
                "set the datamodule's support_order='random'"
            )

    def _evaluate(self, batch: EpisodeBatch, stage: str) -> None:  # type: ignore[override]
        """Scores all tasks of ``batch`` at once: the query loss and accuracy per episode and, with
        :attr:`scores_support`, the accuracy at each presentation of :data:`INSTANCES`."""
        support_outputs, query_outputs = self(batch.support_x, batch.support_y, batch.query_x)
        metrics: Mapping[str, EpisodeMeanCI] = self.metrics[stage]  # type: ignore[assignment]
        tasks = len(batch)
        losses = F.cross_entropy(query_outputs.float().flatten(0, 1), batch.query_y.flatten(), reduction="none")
        metrics["loss"].update(losses.view(tasks, -1).mean(1))
        metrics["acc"].update((query_outputs.argmax(-1) == batch.query_y).float().mean(1))
        if self.scores_support:
            for k, accuracy in presentation_accuracies(support_outputs, batch.support_y).items():
                metrics[f"acc_instance_{k}"].update(accuracy)


def presentation_accuracies(support_outputs: Tensor, support_y: Tensor) -> dict[int, Tensor]:
    """Per-episode accuracy at each presentation of :data:`INSTANCES` that the episodes hold.

    Args:
        support_outputs: ``[tasks, steps, ways]`` predictions made at each support step before its label.
        support_y: ``[tasks, steps]`` the labels.

    Returns:
        ``{k: [episodes]}``, the accuracy over the ``k``-th presentations of all classes of each
        episode that presents a class ``k`` times.
    """
    correct = (support_outputs.argmax(-1) == support_y).float()
    presentation = presentation_numbers(support_y)
    accuracies = {}
    for k in INSTANCES:
        at_k = presentation == k
        episodes = at_k.any(1)
        if episodes.any():
            accuracies[k] = ((correct * at_k).sum(1) / at_k.sum(1).clamp(min=1))[episodes]
    return accuracies
