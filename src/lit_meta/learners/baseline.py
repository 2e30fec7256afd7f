"""The fine-tuning baselines of Chen et al. (2019): Baseline and Baseline++.

Chen, Liu, Kira, Wang & Huang (2019), "A Closer Look at Few-shot Classification", ICLR,
arXiv:1904.04232, Section 3.1 (Baseline) and 3.2 (Baseline++). Not meta-learning: a
feature extractor and a classifier over all meta-training classes are trained by plain
supervised learning; a new task is then learned by fitting a new classifier on the frozen
features of its support set (:mod:`lit_meta.learners.finetuning`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.datasets.base import ClassIndexedDataset
from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import EpisodeConfigError
from lit_meta.functional.params import evaluation_mode
from lit_meta.learners.base import ClassScores, MetaLearner
from lit_meta.learners.classification import Temperature, class_one_hot
from lit_meta.learners.embedding import check_embedding_dim, embed
from lit_meta.learners.finetuning import FineTunedClassifier, HeadFitting, fit_heads


def _uniform_weight(
    num_classes: int, in_features: int, generator: torch.Generator | None, tasks: int | None
) -> nn.Parameter:
    """``[num_classes, in_features]`` drawn from U(-1/sqrt(in), 1/sqrt(in)), ``nn.Linear``'s initialisation;
    with ``tasks``, that one draw repeated ``[tasks, num_classes, in_features]``."""
    bound = 1.0 / math.sqrt(in_features)
    weight = torch.empty(num_classes, in_features).uniform_(-bound, bound, generator=generator)
    return nn.Parameter(weight if tasks is None else weight.expand(tasks, -1, -1).clone())


class LinearHead(nn.Module):
    """The Baseline's classifier: ``features @ W.T + b`` (Chen et al., 2019, Section 3.1).

    The weights are initialised like ``nn.Linear``'s, from ``generator`` when given; the
    bias starts at zero, as in the authors' pre-training. With ``tasks``, the head is a
    stack of that many independent classifiers (``W`` is ``[tasks, num_classes, D]``) that
    scores features ``[tasks, examples, D]``, each task's with its own; all start from one
    draw of the weights, as separate heads drawn from equally seeded generators would.

    Args:
        in_features: feature size ``D``.
        num_classes: classes scored.
        generator: draws the initial weights (default: the global random state).
        tasks: the number of stacked classifiers; ``None`` for one, unstacked.
    """

    def __init__(
        self, in_features: int, num_classes: int, generator: torch.Generator | None = None, tasks: int | None = None
    ) -> None:
        super().__init__()
        self.weight = _uniform_weight(num_classes, in_features, generator, tasks)
        self.bias = nn.Parameter(torch.zeros(self.weight.shape[:-1]))

    def forward(self, features: Tensor) -> Tensor:
        return features @ self.weight.mT + self.bias.unsqueeze(-2)


class CosineHead(nn.Module):
    """The Baseline++ classifier: ``scale * cos(features, w_c)`` for every class vector ``w_c``
    (Chen et al., 2019, Section 3.2).

    The features and the class vectors are L2-normalised, so the scores are cosine
    similarities, multiplied by a positive scale, learned with the class vectors or fixed
    (kept as the log of its inverse, a :class:`~lit_meta.learners.classification.Temperature`).
    With ``tasks``, a stack of classifiers as :class:`LinearHead`'s, sharing the fixed scale.

    Args:
        in_features: feature size ``D``.
        num_classes: classes scored.
        scale: the scale (the initial one when learned).
        learn_scale: learn the scale.
        generator: draws the initial class vectors (default: the global random state).
        tasks: the number of stacked classifiers; ``None`` for one, unstacked.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        scale: float = 10.0,
        learn_scale: bool = True,
        generator: torch.Generator | None = None,
        tasks: int | None = None,
    ) -> None:
        super().__init__()
        if learn_scale and tasks is not None:
            raise ValueError(
                f"learn_scale=True with tasks={tasks}: the scale is one scalar, which the stacked tasks' fits would "
                "share; stack heads with a fixed scale (learn_scale=False)"
            )
        self.weight = _uniform_weight(num_classes, in_features, generator, tasks)
        self.temperature = Temperature(1.0 / scale, learnable=learn_scale)

    @property
    def scale(self) -> Tensor:
        return 1.0 / self.temperature.value

    def forward(self, features: Tensor) -> Tensor:
        return self.temperature(F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).mT)


class Baseline(MetaLearner):
    """Baseline (Chen, Liu, Kira, Wang & Huang, 2019, "A Closer Look at Few-shot Classification", ICLR,
    arXiv:1904.04232, Section 3.1): a network pre-trained to classify the meta-training classes,
    then a new linear classifier fitted on its frozen features for each new task.

    Pre-training (:meth:`meta_loss`): the backbone's features feed a linear head over all
    ``num_classes`` meta-training classes, and both are trained by the cross-entropy of
    every item of the training episodes (support and query alike) labelled with its
    original class (``Episode.classes[label]``, numbered by sorting the train split's class
    ids). Deviation: the paper draws plain random mini-batches of images (16 per step,
    Section 4.1); here a step is a meta-batch of episodes, so each holds a few classes
    with equally many images each. With ``train_ways=8, train_shots=1, train_queries=1``
    and ``meta_batch_size=1`` a step is 16 images, as in the paper.

    Adaptation (:meth:`adapt`): the backbone is frozen, in evaluation mode (BatchNorm on its
    running statistics, as the authors' ``save_features.py`` extracts features); the
    support features are computed once, without gradients, and a new head is trained on
    them from scratch by :func:`~lit_meta.learners.finetuning.fit_heads` with the authors'
    settings: 100 passes in mini-batches of 4, SGD with rate 0.01, momentum 0.9, dampening
    0.9 and weight decay 1e-3. The fit draws its initial weights and batch orders from a
    generator seeded with ``finetune_seed`` (or the one passed), never from the global random
    state, so evaluation is reproducible. The learner itself is never changed. :meth:`adapt`
    takes one task (not a meta-batch of them) and no ``steps`` (:meth:`adaptation_steps` is
    ``None``): the fit is set by the ``finetune_*`` arguments. Validation, test and
    prediction (:meth:`evaluate_outputs`) fit the heads of all the tasks of a meta-batch at
    once, stacked, with the same results as :meth:`adapt` of each task alone (to float
    rounding): hundreds of tiny SGD steps per meta-batch instead of per task.

    Setups (Section 4.1 and the authors' ``train.py``): Adam at 1e-3, batches of 16 images;
    400 epochs on miniImageNet, 5 on Omniglot (4,112 classes: 1,028 characters x 4
    rotations). The pre-trained backbone can also start another learner's meta-training
    (``backbone_checkpoint`` of :class:`~lit_meta.learners.base.MetaLearner`).

    Paper results (5-way, Conv4, miniImageNet, 600 test episodes; Section 4.3, Figure 3, and the
    authors' ``record/few_shot_exp_figures.xlsx``): 42.11% 1-shot, 62.53% 5-shot.

    Args:
        backbone: the feature extractor, ``[N, *item_shape] -> [N, D]`` (no head:
            ``Conv4(out_features=None)``); its output is flattened to one vector per item.
        embedding_dim: ``D``, the size of the features (checked at every call).
        num_classes: classes of the pre-training head; ``None`` reads the number of
            meta-training classes from the datamodule's train split at ``setup("fit")``
            (then kept in the hyperparameters, so checkpoints rebuild the head).
        finetune_epochs: passes over the support set when fitting a new head.
        finetune_batch_size: support examples per step of the fit.
        finetune_lr: SGD learning rate of the fit.
        finetune_momentum: SGD momentum of the fit.
        finetune_dampening: SGD dampening of the fit.
        finetune_weight_decay: SGD weight decay of the fit.
        finetune_seed: seeds the generator of every fit that is not passed one.
        **kwargs: the options of :class:`~lit_meta.learners.base.MetaLearner` (``meta_lr``,
            ``meta_optimizer``, ``weight_decay``, ``backbone_checkpoint``, ...); the paper
            pre-trains with Adam at 1e-3, the default.
    """

    evaluation_needs_autograd: ClassVar[bool] = True
    class_scores: ClassVar[ClassScores] = "learner"

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int,
        num_classes: int | None = None,
        finetune_epochs: int = 100,
        finetune_batch_size: int = 4,
        finetune_lr: float = 0.01,
        finetune_momentum: float = 0.9,
        finetune_dampening: float = 0.9,
        finetune_weight_decay: float = 1e-3,
        finetune_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if embedding_dim < 1 or (num_classes is not None and num_classes < 2):
            raise ValueError(
                f"embedding_dim={embedding_dim}, num_classes={num_classes}: use a feature size >= 1 and at least "
                "2 pre-training classes (or num_classes=None to read them from the train split)"
            )
        fitting = HeadFitting(
            finetune_epochs,
            finetune_batch_size,
            finetune_lr,
            finetune_momentum,
            finetune_dampening,
            finetune_weight_decay,
        )
        super().__init__(backbone, **kwargs)
        self.head_fitting = fitting
        self.classifier: nn.Module | None = None if num_classes is None else self.new_head(num_classes)
        self._train_class_ids: Tensor | None = None  # sorted; row i of the classifier is class id i

    def new_head(self, num_classes: int) -> nn.Module:
        """The pre-training classifier over ``num_classes`` classes of the features."""
        return LinearHead(self.hparams.embedding_dim, num_classes)

    def task_head(self, ways: int, generator: torch.Generator, tasks: int | None = None) -> nn.Module:
        """A new classifier for a task of ``ways`` classes, its weights drawn from ``generator``; with ``tasks``,
        a stack of that many (one per task of a meta-batch), all starting from one draw."""
        return LinearHead(self.hparams.embedding_dim, ways, generator, tasks)

    # -- features -----------------------------------------------------------------------------
    def extract_features(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        """``[*lead, *item_shape] -> [*lead, embedding_dim]``: the backbone's flattened output, ``lead`` the
        ``batch_dims`` leading dimensions (``[N]``, or ``[tasks, N]`` for a meta-batch).

        Raises:
            EpisodeConfigError: the backbone gives another number of features than ``embedding_dim``.
        """
        features = embed(self.backbone, x, batch_dims).flatten(batch_dims)
        return check_embedding_dim(features, self.hparams.embedding_dim, type(self).__name__, batch_dims)

    def frozen_features(self, x: Tensor, batch_dims: int = 1) -> Tensor:
        """Features as adaptation uses them: backbone in evaluation mode, no gradients, float32."""
        with torch.no_grad(), evaluation_mode(self.backbone):
            return self.extract_features(x, batch_dims).float()

    # -- pre-training -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """At fit, reads the meta-training classes from the datamodule's train split and builds (or checks)
        the classifier over them, before the optimiser is configured and a checkpoint restored."""
        super().setup(stage)
        if stage != "fit":
            return
        datamodule = self.trainer.datamodule
        split = getattr(datamodule, "splits", {}).get("train")
        if not isinstance(split, ClassIndexedDataset):
            raise EpisodeConfigError(
                f"{type(self).__name__} pre-trains a classifier over the meta-training classes, which it reads from "
                f"the train split of an EpisodicDataModule of a classification dataset; got {datamodule!r}: fit it "
                "with EpisodicDataModule(<an image dataset>)"
            )
        class_ids = np.unique(split.class_ids)
        num_classes = self.hparams.num_classes
        if self.classifier is None:
            self.classifier = self.new_head(len(class_ids)).to(self.device)
            self.hparams["num_classes"] = len(class_ids)
        elif num_classes != len(class_ids):
            raise EpisodeConfigError(
                f"num_classes={num_classes} but the train split of {datamodule.dataset!r} has {len(class_ids)} "
                f"classes; set num_classes={len(class_ids)}, or null to read it from the data"
            )
        self._train_class_ids = torch.from_numpy(class_ids)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Builds the classifier recorded in the checkpoint if this learner has none yet (made with
        ``num_classes=None``, as by ``lit-meta test --config``), so its weights load; then the base checks
        the checkpoint against this learner."""
        num_classes = checkpoint.get("hyper_parameters", {}).get("num_classes")
        if self.classifier is None and num_classes is not None:
            self.classifier = self.new_head(num_classes).to(self.device)
            self.hparams["num_classes"] = num_classes
        super().on_load_checkpoint(checkpoint)

    def class_indices(self, class_ids: Tensor) -> Tensor:
        """Rows of the classifier of original class ids.

        Raises:
            EpisodeConfigError: the learner was not set up on a train split, or an id is not one of its classes.
        """
        known = self._train_class_ids
        if known is None or self.classifier is None:
            raise EpisodeConfigError(
                f"{type(self).__name__} has not read its meta-training classes: train it with a Trainer and an "
                "EpisodicDataModule, whose train split they come from"
            )
        known = known.to(class_ids.device)
        rows = torch.searchsorted(known, class_ids).clamp_(max=len(known) - 1)
        if not torch.equal(known[rows], class_ids):
            raise EpisodeConfigError(
                f"a training episode holds class ids {sorted(set(class_ids.tolist()) - set(known.tolist()))} that "
                "are not in the train split the learner was set up with; train on the datamodule it was set up with"
            )
        return rows

    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """Cross-entropy of the classifier over all meta-training classes on every item of ``batch``."""
        self.require_class_labels(batch.support_y)
        items = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        class_ids = torch.cat(
            [batch.classes.gather(1, batch.support_y).flatten(), batch.classes.gather(1, batch.query_y).flatten()]
        )
        targets = self.class_indices(class_ids)
        return self.task_loss(self.classifier(self.extract_features(items)), targets)

    # -- adaptation ---------------------------------------------------------------------------
    def adapt(
        self, support_x: Tensor, support_y: Tensor, generator: torch.Generator | None = None
    ) -> FineTunedClassifier:
        """A new head fitted on the frozen features of one task's support set (``[shots*ways, *item_shape]``,
        labels ``0 .. ways-1``); the learner is not changed.

        Args:
            support_x: the support items.
            support_y: their labels.
            generator: a CPU generator for the head's initial weights and the batch orders; default: one
                seeded with ``finetune_seed``.

        Raises:
            EpisodeConfigError: float targets, or the labels of several tasks.
        """
        self.require_class_labels(support_y)
        if support_y.dim() != 1:
            raise EpisodeConfigError(
                f"{type(self).__name__}.adapt takes one task's support labels [shots*ways], got shape "
                f"{tuple(support_y.shape)}; adapt each task on its own, or score a meta-batch with evaluate_outputs"
            )
        return FineTunedClassifier(self.frozen_features, self.fit_task_heads(support_x, support_y, generator))

    def evaluate_outputs(self, batch: EpisodeBatch) -> Tensor:
        """The query logits ``[tasks, queries, ways]`` of every task of ``batch``, its head fitted on its own
        support set: all the heads at once, stacked, each as :meth:`adapt` fits it alone (same initial
        weights and batch orders, from a generator seeded with ``finetune_seed``)."""
        heads = self.fit_task_heads(batch.support_x, batch.support_y)
        with torch.no_grad():
            return heads(self.frozen_features(batch.query_x, batch_dims=2))

    def fit_task_heads(
        self, support_x: Tensor, support_y: Tensor, generator: torch.Generator | None = None
    ) -> nn.Module:
        """A new head fitted on the frozen support features of one task (``[shots*ways, *item_shape]``, labels
        ``[shots*ways]``), or a stack of heads, one per task of a meta-batch (a leading ``tasks`` dimension).

        Args:
            support_x: the support items.
            support_y: their labels ``0 .. ways-1``.
            generator: a CPU generator for the initial weights and the batch orders; default: one seeded
                with ``finetune_seed``.
        """
        self.require_class_labels(support_y)
        ways = class_one_hot(support_y, torch.float32).shape[-1]
        tasks = len(support_y) if support_y.dim() == 2 else None
        if generator is None:
            generator = torch.Generator().manual_seed(self.hparams.finetune_seed)
        with self.adaptation_context():  # the heads are trained even under no_grad or inference mode
            features = self.frozen_features(support_x, batch_dims=support_y.dim())
            heads = self.task_head(ways, generator, tasks).to(features.device)
            fit_heads(heads, features, support_y, self.head_fitting, generator)
        return heads


class BaselinePlusPlus(Baseline):
    """Baseline++ (Chen, Liu, Kira, Wang & Huang, 2019, "A Closer Look at Few-shot Classification", ICLR,
    arXiv:1904.04232, Section 3.2): :class:`Baseline` with a cosine-similarity classifier.

    Both the pre-training head and the head fitted for each new task score a class by the
    cosine similarity of the L2-normalised features with the class's normalised weight
    vector, times a scale (:class:`CosineHead`), which reduces intra-class variation.
    Everything else is :class:`Baseline`'s.

    The scale is one scalar, learned in pre-training from ``scale`` on; a task's head fits new
    class vectors and keeps the scale fixed at the pre-trained value (``scale`` before any
    pre-training). Deviation: the authors' code (``distLinear`` in ``backbone.py``) fixes the
    scale, to 10 for more than 200 classes (Omniglot pre-training) and 2 otherwise (5-way
    fine-tuning), and weight-normalises each class vector with a learned norm of its own, a
    learned scale per class, in pre-training and fine-tuning alike. A scale learned during
    the 200-700 small SGD steps of a task's fit shrinks while the first predictions are wrong
    and then slows the fit: it missed a support set of three well-separated classes for some
    seeds, which a fixed scale never did.

    Paper results (5-way, Conv4, miniImageNet, 600 test episodes): 48.24% 1-shot, 66.43% 5-shot.

    Args:
        backbone: the feature extractor (no head).
        embedding_dim: the size of its features.
        scale: the initial scale of the cosine similarities (learned).
        **kwargs: the options of :class:`Baseline`.
    """

    def __init__(self, backbone: nn.Module, embedding_dim: int, scale: float = 10.0, **kwargs: Any) -> None:
        if scale <= 0:
            raise ValueError(f"scale={scale}: the cosine similarities are multiplied by it, so it must be positive")
        super().__init__(backbone, embedding_dim, **kwargs)

    def new_head(self, num_classes: int) -> nn.Module:
        return CosineHead(self.hparams.embedding_dim, num_classes, self.hparams.scale)

    def task_head(self, ways: int, generator: torch.Generator, tasks: int | None = None) -> nn.Module:
        scale = self.hparams.scale if self.classifier is None else float(self.classifier.scale.detach())
        return CosineHead(self.hparams.embedding_dim, ways, scale, learn_scale=False, generator=generator, tasks=tasks)
