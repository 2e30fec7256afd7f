"""Fitting a new classifier head on the frozen features of a support set.

The evaluation of the fine-tuning baselines of Chen, Liu, Kira, Wang & Huang (2019, "A
Closer Look at Few-shot Classification", ICLR, arXiv:1904.04232, Section 3.1 "fine-tuning
stage"): the feature extractor stays fixed, the support features are computed once, and a
new classifier is trained on them from scratch by minimising the cross-entropy; a query is
then labelled by ``head(features(query))``. :func:`fit_heads` is that training loop, for one
task or for all the tasks of a meta-batch at once, with the authors' settings as
:class:`HeadFitting`'s defaults, and :class:`FineTunedClassifier` the resulting task model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadFitting:
    """How a new head is fitted on a support set: SGD on mini-batches drawn without replacement.

    The defaults are those of the authors' code (``methods/baselinefinetune.py`` of
    wyharveychen/CloserLookFewShot), which the paper summarises as "100 iterations with a
    batch size of 4" (Section 4.1): 100 passes over the support set in a fresh random
    order, so 200 steps for 5-way 1-shot and 700 for 5-way 5-shot.

    Attributes:
        epochs: passes over the support set.
        batch_size: support examples per step (the last step of a pass takes the rest).
        lr: SGD learning rate.
        momentum: SGD momentum.
        dampening: SGD dampening of the momentum.
        weight_decay: SGD weight decay (L2) of the head's parameters.
    """

    epochs: int = 100
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"finetune_epochs={self.epochs}, finetune_batch_size={self.batch_size}, finetune_lr={self.lr}: "
                "fitting a head takes at least one pass of batches of at least one example at a positive rate"
            )
        if self.momentum < 0 or not 0 <= self.dampening <= 1 or self.weight_decay < 0:
            raise ValueError(
                f"finetune_momentum={self.momentum}, finetune_dampening={self.dampening}, "
                f"finetune_weight_decay={self.weight_decay}: use momentum >= 0, dampening in [0, 1], "
                "weight decay >= 0"
            )


def fit_heads(
    heads: nn.Module, features: Tensor, labels: Tensor, fitting: HeadFitting, generator: torch.Generator
) -> None:
    """Trains ``heads`` in place on ``(features, labels)`` by mini-batch SGD on the cross-entropy.

    One task, or a stack of tasks fitted at once: with leading task dimensions, ``heads``
    holds one classifier per task (its parameters stacked, as :class:`~lit_meta.learners.baseline.LinearHead`
    with ``tasks``) and the loss is the sum over the tasks of each task's mean
    cross-entropy, so each task's slice of the gradient is that of its own loss; SGD's
    update (weight decay and momentum included) is elementwise, so every task's head
    follows the steps of a fit of that task alone. All tasks take their batches in the
    same order, which is what separate fits from equally seeded generators draw.

    The order of each pass is drawn from ``generator`` (a CPU generator), never from the
    global random state, so the fit is a function of its inputs. Autograd is enabled
    here, so the heads are fitted even when called under ``torch.no_grad``; ``features``
    must not require gradients (nothing flows back into the network that made them).

    Args:
        heads: the classifier(s), ``[*tasks, examples, D] -> [*tasks, examples, ways]``, on the features' device.
        features: ``[*tasks, examples, D]`` support features.
        labels: ``[*tasks, examples]`` labels ``0 .. ways-1``.
        fitting: the optimisation settings.
        generator: draws the order of the examples in every pass.
    """
    optimizer = torch.optim.SGD(
        heads.parameters(),
        lr=fitting.lr,
        momentum=fitting.momentum,
        dampening=fitting.dampening,
        weight_decay=fitting.weight_decay,
    )
    examples = labels.shape[-1]
    # All passes' orders at once: one host-to-device copy instead of one per pass.
    orders = torch.stack([torch.randperm(examples, generator=generator) for _ in range(fitting.epochs)])
    with torch.enable_grad():
        for order in orders.to(features.device):
            for batch in order.split(fitting.batch_size):
                optimizer.zero_grad(set_to_none=True)
                logits, targets = heads(features[..., batch, :]), labels[..., batch]
                losses = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none")
                losses.view(targets.shape).mean(-1).sum().backward()
                optimizer.step()


class FineTunedClassifier:
    """The task model of a fine-tuning baseline: ``head(features(x))`` without gradients.

    Args:
        features: items -> ``[items, D]`` features of the frozen network (the learner's).
        head: the classifier fitted on the support features.
    """

    def __init__(self, features: Callable[[Tensor], Tensor], head: nn.Module) -> None:
        self.features = features
        self.head = head

    def __call__(self, query_x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.head(self.features(query_x))
